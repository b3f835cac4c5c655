"""Spike vs sustained at the decision: the service's demand source on the simulated cluster, fed
to the real planner (make_plan with the shipped default policy)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from balancer.planner import make_plan
from balancer.sim.clock import ManualClock
from balancer.sim.cluster import SimulatedCluster
from collectors.agent import host_sample_doc
from collectors.samples import HostSample
from collectors.source import WindowDemandSource
from policies.loader import load_policy
from tests.collectors.helpers import T0, settings
from tests.factories import make_host, make_snapshot, make_vm

ROOT = Path(__file__).resolve().parents[2]
BASE_CORES = 1.0
HOT_CORES = 7.0


@pytest.fixture
def setup() -> tuple[SimulatedCluster, ManualClock, WindowDemandSource]:
    hosts = [make_host(f"h{i}", cpu_cores=16, memory_mib=65536) for i in (1, 2)]
    vms = [
        make_vm(name, host, vcpus=8, memory_mib=4096, cpu_used_cores=BASE_CORES)
        for name, host in (("a", "h1"), ("b", "h1"), ("c", "h2"), ("d", "h2"))
    ]
    clock = ManualClock(T0)
    return (
        SimulatedCluster(make_snapshot(hosts, vms), clock=clock),
        clock,
        WindowDemandSource(settings()),
    )


def run(
    sim: SimulatedCluster, clock: ManualClock, source: WindowDemandSource, seconds: int
) -> None:
    """The service's collect loop: every 20 s, observe the port's snapshot."""
    for _ in range(seconds // 20):
        source.observe(sim.snapshot(), clock.now())
        clock.advance(20)


def moves(sim: SimulatedCluster, clock: ManualClock, source: WindowDemandSource) -> int:
    snap, stale = source.observe(sim.snapshot(), clock.now())
    assert stale is None
    policy = load_policy([ROOT / "config/policies/default.yaml"])
    return len(make_plan(snap, policy, time_limit_s=5, seed=1).moves)


def test_one_minute_spike_causes_no_move(setup) -> None:  # type: ignore[no-untyped-def]
    sim, clock, source = setup
    run(sim, clock, source, 3600)
    assert moves(sim, clock, source) == 0
    sim.set_cpu_usage({"a": HOT_CORES, "b": HOT_CORES})  # h1 at 14 of 16 cores ...
    run(sim, clock, source, 60)  # ... for one minute
    sim.set_cpu_usage({"a": BASE_CORES, "b": BASE_CORES})
    run(sim, clock, source, 40)
    # what a decision on the raw snapshot during the spike would have done: move
    raw_during_spike = sim.snapshot().with_vms(
        replace(v, cpu_used_cores=HOT_CORES) if v.host == "h1" else v for v in sim.snapshot().vms
    )
    policy = load_policy([ROOT / "config/policies/default.yaml"])
    assert make_plan(raw_during_spike, policy, time_limit_s=5, seed=1).moves
    assert moves(sim, clock, source) == 0


def test_sustained_rise_causes_a_move(setup) -> None:  # type: ignore[no-untyped-def]
    sim, clock, source = setup
    run(sim, clock, source, 3600)
    sim.set_cpu_usage({"a": HOT_CORES, "b": HOT_CORES})
    run(sim, clock, source, 600)  # ten minutes
    assert moves(sim, clock, source) >= 1


def test_unreachable_host_goes_stale_without_pausing_balancing(setup) -> None:  # type: ignore[no-untyped-def]
    sim, clock, source = setup
    run(sim, clock, source, 100)
    sim.set_reachable("h2", False)
    run(sim, clock, source, 200)
    _, stale = source.observe(sim.snapshot(), clock.now())
    # the host's state (unreachable) governs it; its stale figures are listed, not blocking
    assert stale is None
    assert source.last_view is not None
    assert {s.name for s in source.last_view.freshness.stale} == {"h2", "c", "d"}


def test_agent_documents_feed_the_window_and_win_over_the_port(setup) -> None:  # type: ignore[no-untyped-def]
    sim, clock, source = setup
    for _ in range(30):  # an agent on h1 reports every 20 s, the service collects every 20 s
        doc = host_sample_doc(
            HostSample(
                host="h1",
                time=clock.now(),
                cpu_cores=16,
                cpu_used_cores=2 * BASE_CORES + 1.5,
                memory_mib=65536,
                memory_used_mib=9000,
            )
        )
        source.observe(sim.snapshot(), clock.now())
        assert source.ingest_host(doc).host == "h1"
        clock.advance(20)
    snap, stale = source.observe(sim.snapshot(), clock.now())
    assert stale is None
    # the agent's total (3.5 cores) beyond the VMs (2 x 1 core) is the host's own use, and the
    # port's host figures (no own use in the simulation) do not overwrite it
    assert snap.host("h1").overhead_cpu_cores == pytest.approx(1.5, abs=0.01)
    assert snap.host("h2").overhead_cpu_cores == pytest.approx(0.0, abs=0.01)
    assert snap.loads()["h1"].cpu_demand_cores == pytest.approx(3.5, abs=0.01)
