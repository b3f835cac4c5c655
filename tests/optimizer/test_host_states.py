"""Each host state: maintenance / entering_maintenance are emptied, quarantined receives
nothing and is drained when capacity allows, unreachable neither sends nor receives."""

from __future__ import annotations

import pytest

from balancer.model import HostState
from balancer.plan import BlockedReason, MoveReason
from tests.factories import make_host, make_snapshot, make_vm
from tests.optimizer.helpers import plan_ok, policy


@pytest.mark.parametrize("state", [HostState.MAINTENANCE, HostState.ENTERING_MAINTENANCE])
@pytest.mark.parametrize("threshold", [1, 3])
def test_evacuation_is_mandatory(state: HostState, threshold: int) -> None:
    hosts = [make_host("h1", state=state), make_host("h2"), make_host("h3")]
    vms = [make_vm(f"vm{i}", "h1") for i in range(5)] + [make_vm("other", "h2")]
    plan, end = plan_ok(make_snapshot(hosts, vms), policy(threshold))
    assert not end.vms_on("h1")
    evac = [m for m in plan.moves if m.source == "h1"]
    assert len(evac) == 5
    assert all(m.reason is MoveReason.MAINTENANCE for m in evac)
    assert all(m.target != "h1" for m in plan.moves)


def test_quarantined_host_receives_nothing_and_is_drained() -> None:
    hosts = [
        make_host("h1", state=HostState.QUARANTINED),
        make_host("h2"),
        make_host("h3", cpu_cores=64),
    ]
    vms = [make_vm(f"vm{i}", "h1") for i in range(3)] + [
        make_vm(f"hot{i}", "h2", cpu_used_cores=6.0) for i in range(4)
    ]
    plan, end = plan_ok(make_snapshot(hosts, vms), policy(5))
    assert not end.vms_on("h1")
    assert all(m.target != "h1" for m in plan.moves)
    assert {m.reason for m in plan.moves if m.source == "h1"} == {MoveReason.QUARANTINE}


def test_quarantine_evacuation_only_when_capacity_allows() -> None:
    hosts = [
        make_host("h1", state=HostState.QUARANTINED, memory_mib=65536),
        make_host("h2", memory_mib=16384),
    ]
    vms = [make_vm("big", "h1", memory_mib=32768), make_vm("small", "h1", memory_mib=4096)]
    plan, end = plan_ok(make_snapshot(hosts, vms), policy(1))
    assert end.vm("small").host == "h2"
    assert end.vm("big").host == "h1"
    assert {b.vm: b.reason for b in plan.blocked} == {"big": BlockedReason.CAPACITY}


def test_unreachable_host_neither_sends_nor_receives() -> None:
    hosts = [
        make_host("h1", state=HostState.UNREACHABLE),
        make_host("h2"),
        make_host("h3"),
    ]
    vms = [make_vm(f"a{i}", "h1", cpu_used_cores=8.0) for i in range(3)] + [
        make_vm(f"b{i}", "h2", cpu_used_cores=4.0) for i in range(6)
    ]
    plan, _ = plan_ok(make_snapshot(hosts, vms), policy(5))
    assert plan.moves
    assert all("h1" not in (m.source, m.target) for m in plan.moves)
