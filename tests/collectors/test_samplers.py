"""Port sampler (on the simulated cluster), host agent sampler and PSI parsing."""

from __future__ import annotations

from pathlib import Path

import pytest

from balancer.model import HostState
from balancer.sim.clock import ManualClock
from balancer.sim.cluster import SimulatedCluster
from collectors.hostagent import HostAgentSampler, parse_psi, read_psi
from collectors.sampler import PortSampler, Sampler, batch_from_snapshot
from collectors.window import Window, demand_view
from tests.collectors.helpers import T0, at, settings
from tests.factories import make_host, make_snapshot, make_vm


def cluster() -> tuple[SimulatedCluster, ManualClock]:
    snap = make_snapshot(
        [make_host("h1", overhead_cpu_cores=0.5, overhead_memory_mib=2048), make_host("h2")],
        [
            make_vm("busy", "h1", vcpus=2, cpu_used_cores=1.0, memory_used_mib=3000),
            make_vm("idle", "h1", vcpus=2, cpu_used_cores=0.02, memory_used_mib=500),
            make_vm("other", "h2", vcpus=4, cpu_used_cores=2.0),
        ],
    )
    clock = ManualClock(T0)
    return SimulatedCluster(snap, clock=clock), clock


def test_port_sampler_busy_idle_and_host_load() -> None:
    sim, clock = cluster()
    sampler: Sampler = PortSampler(sim)
    w = Window(settings())
    for _ in range(30):
        w.ingest(sampler.sample(clock.now()))
        clock.advance(20)
    view = demand_view(w, sim.snapshot(), clock.now())
    snap = view.snapshot
    assert snap.vm("busy").cpu_used_cores == pytest.approx(1.0, abs=0.01)
    assert snap.vm("idle").cpu_used_cores == pytest.approx(0.0, abs=0.05)
    h1 = snap.host("h1")
    assert h1.overhead_cpu_cores == pytest.approx(0.5, abs=0.01)
    assert h1.overhead_memory_mib == 2048
    assert snap.loads()["h1"].cpu_demand_cores == pytest.approx(1.0 + 0.02 + 0.5, abs=0.02)
    assert view.freshness.balancing_allowed


def test_spike_vs_sustained_on_the_simulated_cluster() -> None:
    sim, clock = cluster()
    sampler = PortSampler(sim)
    w = Window(settings())

    def run(seconds: int) -> None:
        for _ in range(seconds // 20):
            w.ingest(sampler.sample(clock.now()))
            clock.advance(20)

    run(3600)
    base = demand_view(w, sim.snapshot(), clock.now()).snapshot.loads()["h2"].cpu_demand_cores
    sim.set_vm_cpu("other", 4.0)  # a 1-minute spike to all 4 vCPUs
    run(60)
    sim.set_vm_cpu("other", 2.0)
    run(60)
    spiked = demand_view(w, sim.snapshot(), clock.now()).snapshot.loads()["h2"].cpu_demand_cores
    assert spiked == pytest.approx(base, abs=0.07 * 2.0 + 0.01)
    sim.set_vm_cpu("other", 4.0)  # sustained
    run(600)
    risen = demand_view(w, sim.snapshot(), clock.now()).snapshot.loads()["h2"].cpu_demand_cores
    assert risen == pytest.approx(4.0, abs=0.01)


def test_unreachable_hosts_give_no_samples_and_go_stale() -> None:
    sim, clock = cluster()
    w = Window(settings(stale_after_s=60))
    sampler = PortSampler(sim)
    w.ingest(sampler.sample(clock.now()))
    sim.set_reachable("h2", False)
    batch = sampler.sample(clock.now())
    assert {h.host for h in batch.hosts} == {"h1"}
    assert {v.vm for v in batch.vms} == {"busy", "idle"}
    clock.advance(120)
    w.ingest(sampler.sample(clock.now()))
    view = demand_view(w, sim.snapshot(), clock.now())
    stale = {s.name: s for s in view.freshness.stale}
    assert set(stale) == {"h2", "other"}
    # an unreachable host's state governs it; its staleness does not pause balancing
    assert view.snapshot.host("h2").state is HostState.UNREACHABLE
    assert view.freshness.balancing_allowed


def test_batch_from_snapshot_totals() -> None:
    snap = make_snapshot(
        [make_host("h1", overhead_cpu_cores=1.0, overhead_memory_mib=100)],
        [make_vm("a", "h1", cpu_used_cores=2.0, memory_used_mib=1000)],
    )
    b = batch_from_snapshot(snap, at(0))
    assert b.hosts[0].cpu_used_cores == 3.0
    assert b.hosts[0].memory_used_mib == 1100


PSI_TEXT = """some avg10=1.92 avg60=4.67 avg300=2.08 total=8938301
full avg10=0.00 avg60=0.10 avg300=0.00 total=12
"""


def test_parse_psi() -> None:
    res = parse_psi(PSI_TEXT)
    assert res is not None
    assert res.some.avg10 == 1.92
    assert res.some.total_us == 8938301
    assert res.full is not None and res.full.avg60 == 0.10
    assert parse_psi("some avg10=1.0 avg60=2.0 avg300=3.0 total=4\n").full is None  # type: ignore[union-attr]
    assert parse_psi("") is None


def test_read_psi_from_a_directory(tmp_path: Path) -> None:
    assert read_psi(tmp_path) is None  # no PSI: null, not an error
    (tmp_path / "cpu").write_text(PSI_TEXT)
    psi = read_psi(tmp_path)
    assert psi is not None and psi.cpu is not None and psi.memory is None
    assert psi.fields()["psi_cpu_some_avg60"] == 4.67


def test_host_agent_sample_shape() -> None:
    s = HostAgentSampler(at(0), host="testhost")
    sum(i * i for i in range(200_000))  # some CPU between the two readings
    batch = s.sample(at(1))
    (h,) = batch.hosts
    assert h.host == "testhost"
    assert h.cpu_cores >= 1
    assert 0.0 <= h.cpu_used_cores <= h.cpu_cores
    assert 0 < h.memory_used_mib <= h.memory_mib
    assert h.net_rx_bps is not None and h.net_rx_bps >= 0
    assert h.net_tx_bps is not None and h.net_tx_bps >= 0
