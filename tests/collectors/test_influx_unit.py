"""InfluxDB export without a server: line protocol, the spool (outage, order, restart, limits,
refused data), token handling, Flux query building and parsing of recorded result tables."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from influxdb_client.client.flux_csv_parser import FluxCsvParser, FluxSerializationMode

from balancer.errors import SettingsError
from balancer.port import JobState, MigrationProgress
from collectors.influx import (
    FlushLoop,
    InfluxExporter,
    WriteFailed,
    batch_lines,
    flux_string,
    history_query,
    line,
    migration_line,
    parse_history,
    rebuild_window,
)
from collectors.samples import HostSample, MigrationEvent, Psi, PsiLine, PsiResource, SampleBatch
from collectors.settings import CollectorSettings, InfluxSettings
from collectors.window import Window, demand_view
from tests.collectors.helpers import at, vm_batch
from tests.factories import make_host, make_snapshot, make_vm

DATA = Path(__file__).parent / "data"


class FakeWriter:
    """Records what was written; ``down`` makes writes fail like a stopped server."""

    def __init__(self) -> None:
        self.down = False
        self.refuse: int | None = None
        self.written: list[str] = []
        self.calls = 0

    def write(self, lines: Sequence[str]) -> None:
        self.calls += 1
        if self.down:
            raise WriteFailed("NewConnectionError", retryable=True)
        if self.refuse is not None:
            raise WriteFailed(
                f"HTTP {self.refuse} Bad Request", retryable=False, status=self.refuse
            )
        self.written.extend(lines)

    def close(self) -> None:
        pass


class Clock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def influx_settings(tmp_path: Path, **kw: Any) -> InfluxSettings:
    return InfluxSettings(
        url="http://127.0.0.1:9",
        org="o",
        bucket="b",
        cluster="lab",
        spool_dir=tmp_path / "spool",
        token_env="TEST_INFLUX_TOKEN",
        **kw,
    )


def test_line_protocol_escapes_and_orders_tags() -> None:
    got = line("vm", {"vm": "a b,c=d", "cluster": "x"}, {"cpu used": 1, "n": float("nan")}, at(0))
    assert got == f"vm,cluster=x,vm=a\\ b\\,c\\=d cpu\\ used=1.0 {int(at(0).timestamp() * 1000)}"
    with pytest.raises(ValueError):
        line("vm", {}, {"x": float("inf")}, at(0))


def test_host_vm_and_migration_points() -> None:
    psi = Psi(cpu=PsiResource(some=PsiLine(avg10=1.0, avg60=2.0, avg300=3.0, total_us=4)))
    batch = SampleBatch(
        time=at(0),
        hosts=(
            HostSample(
                host="h1",
                time=at(0),
                cpu_cores=8,
                cpu_used_cores=1.5,
                memory_mib=100,
                memory_used_mib=50,
                psi=psi,
                net_rx_bps=10.0,
                net_tx_bps=None,
            ),
        ),
        vms=vm_batch(at(0), {"v1": 0.5}).vms,
    )
    vm, host = batch_lines(batch, "lab")
    assert vm.startswith("vm,cluster=lab,host=h1,vm=v1 cpu_used_cores=0.5,memory_used_mib=1024.0")
    assert host.startswith("host,cluster=lab,host=h1 cpu_cores=8.0,cpu_used_cores=1.5,")
    assert "psi_cpu_some_avg60=2.0" in host and "net_rx_bps=10.0" in host
    assert "net_tx_bps" not in host
    progress = MigrationProgress(
        job_id="j1",
        vm="v1",
        source="h1",
        target="h2",
        state=JobState.SUCCEEDED,
        elapsed_s=12.5,
        data_total_mib=4096,
        downtime_ms=80,
    )
    ev = MigrationEvent.from_progress(progress, at(30), reason="cpu_imbalance")
    m = migration_line(ev, "lab")
    assert m.startswith(
        "migration,cluster=lab,job_id=j1,outcome=succeeded,reason=cpu_imbalance,"
        "source=h1,target=h2,vm=v1 elapsed_s=12.5,data_total_mib=4096.0,"
        "downtime_ms=80.0 "
    )


def test_outage_keeps_points_on_disk_and_sends_each_once(tmp_path: Path) -> None:
    writer, clock = FakeWriter(), Clock()
    s = influx_settings(tmp_path, batch_size=3, retry_min_s=1, retry_max_s=4)
    ex = InfluxExporter(s, writer=writer, monotonic=clock)
    ex.export_batch(vm_batch(at(0), {"a": 1.0, "b": 2.0}))
    assert ex.flush().sent_lines == 2
    writer.down = True
    for t in range(20, 200, 20):
        ex.export_batch(vm_batch(at(t), {"a": 1.0, "b": 2.0}))
        ex.flush()
        clock.t += 20
    assert ex.stats().pending_lines == 18
    assert ex.stats().last_error == "NewConnectionError"
    # the process restarts during the outage: the spool is on disk
    ex.close()
    ex = InfluxExporter(s, writer=writer, monotonic=clock)
    assert ex.stats().pending_lines == 18
    writer.down = False
    result = ex.flush(force=True)
    assert result.sent_lines == 18 and result.pending_lines == 0
    assert len(writer.written) == 20 == len(set(writer.written))
    times = [int(w.rsplit(" ", 1)[1]) for w in writer.written if ",vm=a " in w]
    assert times == sorted(times)  # oldest first
    assert ex.stats().sent_lines == 20  # lifetime counter, kept in the spool
    ex.close()


def test_backoff_doubles_and_is_capped(tmp_path: Path) -> None:
    writer, clock = FakeWriter(), Clock()
    ex = InfluxExporter(
        influx_settings(tmp_path, retry_min_s=1, retry_max_s=4), writer=writer, monotonic=clock
    )
    writer.down = True
    ex.export_batch(vm_batch(at(0), {"a": 1.0}))
    waits = []
    for _ in range(5):
        ex.flush(force=True)
        waits.append(ex._next_try - clock.t)
    assert waits == [1, 2, 4, 4, 4]
    calls = writer.calls
    assert ex.flush().backing_off and writer.calls == calls
    ex.close()


def test_refused_batches_go_to_the_dead_table(tmp_path: Path) -> None:
    writer = FakeWriter()
    ex = InfluxExporter(influx_settings(tmp_path), writer=writer)
    ex.export_batch(vm_batch(at(0), {"a": 1.0}))
    writer.refuse = 400
    ex.flush()
    writer.refuse = None
    ex.export_batch(vm_batch(at(20), {"a": 1.0}))
    ex.flush()
    st = ex.stats()
    assert (st.dead_lines, st.sent_lines, st.pending_lines) == (1, 1, 0)
    ex.close()


def test_spool_limit_drops_oldest_and_counts(tmp_path: Path) -> None:
    writer = FakeWriter()
    writer.down = True
    ex = InfluxExporter(influx_settings(tmp_path, spool_max_mib=1, batch_size=1000), writer=writer)
    for k in range(30):
        ex.export_batch(vm_batch(at(k * 20), {f"vm{i}": 1.0 for i in range(500)}))
    st = ex.stats()
    assert st.pending_bytes <= 1024 * 1024
    assert st.dropped_lines > 0
    assert st.pending_lines + st.dropped_lines == 30 * 500
    ex.close()


def test_flush_loop_stops_cleanly_and_flushes(tmp_path: Path) -> None:
    writer = FakeWriter()
    ex = InfluxExporter(influx_settings(tmp_path, flush_interval_s=0.05), writer=writer)
    loop = FlushLoop(ex).start()
    ex.export_batch(vm_batch(at(0), {"a": 1.0}))
    loop.stop(timeout_s=2)
    assert writer.written and ex.stats().pending_lines == 0
    ex.close()


def test_token_from_env_or_file_and_never_shown(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    s = influx_settings(tmp_path)
    monkeypatch.delenv("TEST_INFLUX_TOKEN", raising=False)
    with pytest.raises(SettingsError, match="TEST_INFLUX_TOKEN"):
        s.token()
    monkeypatch.setenv("TEST_INFLUX_TOKEN", "s3cret-env")
    assert s.token().get_secret_value() == "s3cret-env"
    f = tmp_path / "token"
    f.write_text("s3cret-file\n")
    s2 = influx_settings(tmp_path, token_file=f)
    assert s2.token().get_secret_value() == "s3cret-file"
    assert "s3cret" not in repr(s2.token()) and "s3cret" not in str(s2.token())
    # a failing real client (nothing listens on port 9) logs no token
    caplog.set_level(logging.DEBUG)
    ex = InfluxExporter(s2.model_copy(update={"timeout_s": 1.0}))
    ex.export_batch(vm_batch(at(0), {"a": 1.0}))
    result = ex.flush()
    assert result.error is not None and result.pending_lines == 1
    assert "s3cret" not in caplog.text and "s3cret" not in (result.error or "")
    ex.close()
    with pytest.raises(ValueError):
        InfluxSettings(url="http://x", org="o", bucket="b", token_env=None)


def test_history_query_is_built_with_escaped_literals(tmp_path: Path) -> None:
    s = influx_settings(tmp_path).model_copy(update={"bucket": 'b"x', "cluster": "c\\1"})
    q = history_query(s, start=at(0), stop=at(3600))
    assert q.splitlines()[0] == 'from(bucket: "b\\"x")'
    assert "range(start: 2026-11-27T12:00:00.000000Z, stop: 2026-11-27T13:00:00.000000Z)" in q
    assert 'r.cluster == "c\\\\1"' in q
    assert 'r._measurement == "vm" and (r._field == "cpu_used_cores"' in q
    assert 'pivot(rowKey: ["_time"], columnKey: ["_field"], valueColumn: "_value")' in q
    assert flux_string("${x}") == '"\\${x}"'


class _RecordedResponse:
    """Stands in for the HTTP response influxdb-client parses (already read)."""

    closed = True

    def __init__(self, data: bytes) -> None:
        self.data = data

    def close(self) -> None:
        pass


def recorded_records(mode: FluxSerializationMode) -> list[Any]:
    parser = FluxCsvParser(
        response=_RecordedResponse((DATA / "flux_history.csv").read_bytes()),
        serialization_mode=mode,
    )
    items = list(parser.generator())
    if mode is FluxSerializationMode.tables:
        return [r for table in parser.table_list() for r in table.records]
    return items


def test_parse_recorded_flux_tables() -> None:
    records = recorded_records(FluxSerializationMode.tables)
    batches = parse_history(r.values for r in records)
    assert [b.time.isoformat() for b in batches] == [
        "2026-11-27T11:00:00+00:00",
        "2026-11-27T11:00:20+00:00",
        "2026-11-27T11:00:40+00:00",
    ]
    first = batches[0]
    assert [h.host for h in first.hosts] == ["h1"]
    assert first.hosts[0].cpu_used_cores == 1.5 and first.hosts[0].memory_used_mib == 6144
    assert {v.vm: v.cpu_used_cores for v in first.vms} == {"busy": 1.0, "idle": 0.02}
    assert first.vms[0].vcpus == 2 and first.vms[0].memory_mib == 4096
    assert parse_history([{"_time": "bad"}, {"_measurement": "vm"}]) == []


def test_rebuild_window_from_recorded_history() -> None:
    class Query:
        def __init__(self) -> None:
            self.queries: list[str] = []

        def query_stream(self, query: str, org: Any = None, params: Any = None) -> Any:
            self.queries.append(query)
            return iter(recorded_records(FluxSerializationMode.stream))

    s = InfluxSettings(url="http://127.0.0.1:9", org="o", bucket="b", cluster="lab")
    w = Window(CollectorSettings())
    now = batches_end = at(-3600 + 40)  # 11:00:40
    q = Query()
    assert rebuild_window(w, q, s, now) == 9
    assert "range(start: 2026-11-27T10:00:40.000000Z" in q.queries[0]
    snap = make_snapshot([make_host("h1")], [make_vm("busy", "h1"), make_vm("idle", "h1")])
    view = demand_view(w, snap, batches_end + timedelta(seconds=5))
    assert view.snapshot.vm("busy").cpu_used_cores == pytest.approx(1.0)
    # overheads 0.48, 0.58, 0.68: p95 with linear interpolation = 0.67 (above the EWM)
    assert view.snapshot.host("h1").overhead_cpu_cores == pytest.approx(0.67, abs=1e-3)
    assert view.snapshot.host("h1").overhead_memory_mib == 6146 - 3500
    assert view.freshness.balancing_allowed


def test_missing_server_binary_fails_when_services_are_required(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from tests.collectors import vmserver

    monkeypatch.setattr(vmserver, "BINARY_CANDIDATES", ("/nonexistent/victoria-metrics",))
    monkeypatch.setenv("BALANCER_REQUIRE_SERVICES", "1")
    with pytest.raises(pytest.fail.Exception, match="not installed"):
        vmserver.find_binary()
    monkeypatch.setenv("BALANCER_REQUIRE_SERVICES", "0")
    with pytest.raises(pytest.skip.Exception):
        vmserver.find_binary()


def test_grafana_dashboard_matches_the_points_we_write() -> None:
    import json

    root = Path(__file__).resolve().parents[2]
    doc = json.loads((root / "config/grafana/balancer.json").read_text())
    queries = "\n".join(t["query"] for p in doc["panels"] for t in p["targets"])
    for measurement in ("host", "vm", "migration"):
        assert f'r._measurement == "{measurement}"' in queries
    for field in (
        "cpu_used_cores",
        "memory_used_mib",
        "psi_cpu_some_avg10",
        "net_rx_bps",
        "downtime_ms",
        "elapsed_s",
    ):
        assert f'"{field}"' in queries
    ids = [p["id"] for p in doc["panels"]]
    assert len(ids) == len(set(ids))
