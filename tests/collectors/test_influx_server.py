"""Writes through influxdb-client to a real victoria-metrics /api/v2/write, read back through its
own export API; the outage test stops and restarts the server on the same storage."""

from __future__ import annotations

import time
import uuid
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from balancer.errors import StorageError
from balancer.port import JobState, MigrationProgress
from balancer.sim.clock import ManualClock
from balancer.sim.cluster import SimulatedCluster
from collectors.influx import InfluxExporter, rebuild_window_from_influx
from collectors.sampler import PortSampler
from collectors.samples import MigrationEvent
from collectors.settings import CollectorSettings, InfluxSettings
from collectors.window import Window
from tests.collectors.vmserver import VictoriaMetrics
from tests.factories import make_host, make_snapshot, make_vm

pytestmark = pytest.mark.influx

VM_FIELDS = 4
HOST_FIELDS = 4


def settings(server: VictoriaMetrics, tmp_path: Path, cluster: str) -> InfluxSettings:
    token = tmp_path / "token"
    token.write_text("test-token\n")
    return InfluxSettings(
        url=server.url,
        org="test-org",
        bucket="test-bucket",
        cluster=cluster,
        token_file=token,
        spool_dir=tmp_path / "spool",
        batch_size=40,
        retry_min_s=0.05,
        retry_max_s=0.2,
        timeout_s=2,
    )


def sim(hosts: int = 3, vms: int = 24) -> tuple[SimulatedCluster, ManualClock]:
    snap = make_snapshot(
        [make_host(f"h{i}", overhead_cpu_cores=0.25) for i in range(hosts)],
        [make_vm(f"vm{j:02d}", f"h{j % hosts}", cpu_used_cores=0.1 * j) for j in range(vms)],
    )
    # recent times: victoria-metrics keeps only samples inside its retention period
    start = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=30)
    clock = ManualClock(start)
    return SimulatedCluster(snap, clock=clock), clock


def test_samples_and_migration_events_round_trip(
    victoria_metrics: VictoriaMetrics, tmp_path: Path
) -> None:
    cluster = f"t{uuid.uuid4().hex[:8]}"
    port, clock = sim()
    ex = InfluxExporter(settings(victoria_metrics, tmp_path, cluster))
    sampler = PortSampler(port)
    for _ in range(3):
        ex.export_batch(sampler.sample(clock.now()))
        clock.advance(20)
    ev = MigrationEvent.from_progress(
        MigrationProgress(
            job_id="j1",
            vm="vm01",
            source="h1",
            target="h2",
            state=JobState.SUCCEEDED,
            elapsed_s=9.5,
            data_total_mib=4096,
            downtime_ms=120.0,
        ),
        clock.now(),
        reason="cpu_imbalance",
    )
    ex.export_events([ev])
    result = ex.flush()
    assert result.error is None and result.pending_lines == 0
    expected = 3 * (24 * VM_FIELDS + 3 * HOST_FIELDS) + 3
    series = victoria_metrics.wait_for_points(f'{{cluster="{cluster}"}}', expected)
    by_name = {
        (s["metric"]["__name__"], s["metric"].get("vm") or s["metric"].get("host")): s
        for s in series
    }
    cpu = by_name[("vm_cpu_used_cores", "vm05")]
    assert cpu["values"] == [0.5, 0.5, 0.5]
    assert cpu["metric"]["host"] == "h2"
    host = by_name[("host_cpu_used_cores", "h0")]
    assert host["values"][0] == pytest.approx(0.25 + 0.1 * sum(range(0, 24, 3)))
    mig = by_name[("migration_downtime_ms", "vm01")]
    assert mig["metric"]["outcome"] == "succeeded" and mig["metric"]["reason"] == "cpu_imbalance"
    assert mig["values"] == [120.0]
    assert sum(len(s["values"]) for s in series) == expected
    ex.close()


def test_outage_every_sample_arrives_exactly_once(
    victoria_metrics: VictoriaMetrics, tmp_path: Path
) -> None:
    cluster = f"t{uuid.uuid4().hex[:8]}"
    port, clock = sim()
    s = settings(victoria_metrics, tmp_path, cluster)
    ex = InfluxExporter(s)
    sampler = PortSampler(port)
    cycles = 0

    def cycle() -> None:
        nonlocal cycles
        ex.export_batch(sampler.sample(clock.now()))
        ex.flush()
        clock.advance(20)
        cycles += 1

    for _ in range(4):
        cycle()
    assert ex.stats().pending_lines == 0
    victoria_metrics.stop()  # the server is down for a while
    for _ in range(6):
        cycle()
        time.sleep(0.06)  # past the backoff: every cycle really tries and fails
    down = ex.stats()
    assert down.pending_lines == 6 * (24 + 3) and down.last_error is not None
    # the balancer restarts too while the server is still down
    ex.close()
    ex = InfluxExporter(s)
    for _ in range(2):
        cycle()
    victoria_metrics.start()  # same storage directory
    deadline = time.monotonic() + 20
    while ex.stats().pending_lines and time.monotonic() < deadline:
        ex.flush(force=True)
        time.sleep(0.05)
    assert ex.stats().pending_lines == 0
    for _ in range(2):
        cycle()
    expected = cycles * (24 * VM_FIELDS + 3 * HOST_FIELDS)
    series = victoria_metrics.wait_for_points(f'{{cluster="{cluster}"}}', expected)
    # exactly once: every series has one point per cycle, no timestamp twice
    assert len(series) == 24 * VM_FIELDS + 3 * HOST_FIELDS
    for item in series:
        counts = Counter(item["timestamps"])
        assert len(counts) == cycles, item["metric"]
        assert max(counts.values()) == 1, item["metric"]
    assert sum(len(i["values"]) for i in series) == expected
    ex.close()


def test_history_read_against_a_server_without_flux_is_a_clear_error(
    victoria_metrics: VictoriaMetrics, tmp_path: Path
) -> None:
    # victoria-metrics does not speak Flux: the read path must fail with our error, naming the
    # server and never the token (the Flux path itself is tested on recorded result tables)
    s = settings(victoria_metrics, tmp_path, "nofux")
    with pytest.raises(StorageError, match="cannot read history") as info:
        rebuild_window_from_influx(Window(CollectorSettings()), s, datetime.now(UTC))
    assert victoria_metrics.url in str(info.value) and "test-token" not in str(info.value)


def test_agent_pushes_host_samples_to_influx(
    victoria_metrics: VictoriaMetrics, tmp_path: Path
) -> None:
    import threading

    from collectors.agent import InfluxTarget, run_agent
    from collectors.hostagent import HostAgentSampler

    cluster = f"t{uuid.uuid4().hex[:8]}"
    target = InfluxTarget(InfluxExporter(settings(victoria_metrics, tmp_path, cluster)))
    sampler = HostAgentSampler(datetime.now(UTC), host="hv-agent")
    n = run_agent(sampler, [target], interval_s=0.1, stop=threading.Event(), max_cycles=3)
    assert n == 3
    # Every sample was acknowledged by the server before run_agent returned (the spool is empty),
    # but victoria-metrics makes points of new series searchable up to about a second later. So
    # wait for each series itself: a total point count is not a condition, since a host with PSI
    # writes 6 + up to 18 fields a sample and one visible sample can already exceed 3 * 6.
    match = f'{{cluster="{cluster}",host="hv-agent"}}'
    for name in ("host_cpu_used_cores", "host_memory_used_mib", "host_net_rx_bps"):
        (series,) = victoria_metrics.wait_for_points(f'{{__name__="{name}",{match[1:]}', 3)
        assert len(series["values"]) == 3, (name, series)
        assert len(set(series["timestamps"])) == 3, (name, series)
