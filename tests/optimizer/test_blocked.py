"""Each blocked reason: a VM that should move but cannot says why (typed)."""

from __future__ import annotations

from balancer.model import HostState
from balancer.plan import BlockedReason
from policies.model import Limits, RuleMode, Selector
from tests.factories import make_host, make_snapshot, make_vm
from tests.optimizer.helpers import anti, plan_ok, policy, vm_host


def _blocked(plan) -> dict[str, BlockedReason]:  # type: ignore[no-untyped-def]
    return {b.vm: b.reason for b in plan.blocked}


def _maint(*others: object) -> list:
    return [make_host("h1", state=HostState.MAINTENANCE), *others]


def test_cpu_incompatible() -> None:
    hosts = _maint(make_host("h2", cpu_features={"sse4_2"}))
    vms = [make_vm("new", "h1", cpu_features={"avx512f"})]
    plan, _ = plan_ok(make_snapshot(hosts, vms), policy(1))
    assert _blocked(plan) == {"new": BlockedReason.CPU_INCOMPATIBLE}


def test_rule_vm_host_pins_to_maintenance_host() -> None:
    hosts = _maint(make_host("h2"))
    vms = [make_vm("pinned", "h1")]
    rules = (vm_host("pin", ("pinned",), ("h1",), RuleMode.MUST),)
    plan, _ = plan_ok(make_snapshot(hosts, vms), policy(1, rules=rules))
    (b,) = plan.blocked
    assert (b.vm, b.reason, b.rule) == ("pinned", BlockedReason.RULE, "pin")


def test_rule_anti_affinity_leaves_no_host() -> None:
    hosts = _maint(make_host("h2"))
    vms = [make_vm("a", "h1"), make_vm("b", "h2")]
    plan, _ = plan_ok(make_snapshot(hosts, vms), policy(1, rules=(anti("apart", "a", "b"),)))
    (b,) = plan.blocked
    assert (b.vm, b.reason, b.rule) == ("a", BlockedReason.RULE, "apart")


def test_capacity() -> None:
    hosts = _maint(make_host("h2", memory_mib=8192))
    vms = [make_vm("big", "h1", memory_mib=16384)]
    plan, _ = plan_ok(make_snapshot(hosts, vms), policy(1))
    assert _blocked(plan) == {"big": BlockedReason.CAPACITY}


def test_capacity_says_what_the_vm_needs_and_the_most_room_left() -> None:
    # cpu binds: 2 cores needed; h2 has 0.7 free, h3 1.3 free (4 cores, 10 % headroom)
    hosts = _maint(make_host("h2", cpu_cores=4), make_host("h3", cpu_cores=4))
    vms = [
        make_vm("hot", "h1", cpu_used_cores=2.0),
        make_vm("x", "h2", cpu_used_cores=2.9),
        make_vm("y", "h3", cpu_used_cores=2.3),
    ]
    plan, _ = plan_ok(make_snapshot(hosts, vms), policy(1))
    (b,) = plan.blocked
    assert (b.vm, b.reason) == ("hot", BlockedReason.CAPACITY)
    assert b.detail == (
        "no compatible host has room (with headroom): it needs 2.00 cores and "
        f"{vms[0].memory_mib} MiB; the most room is on h3: 1.30 cores and "
        f"{int(131072 * 0.95) - vms[2].memory_mib} MiB free"
    )


def test_excluded_on_maintenance_host_is_reported_not_moved() -> None:
    hosts = _maint(make_host("h2"))
    vms = [make_vm("keep", "h1", labels={"team": "dba"}), make_vm("go", "h1")]
    pol = policy(1, exclude=(Selector(labels={"team": "dba"}),))
    plan, end = plan_ok(make_snapshot(hosts, vms), pol)
    assert end.vm("keep").host == "h1" and end.vm("go").host == "h2"
    assert _blocked(plan) == {"keep": BlockedReason.EXCLUDED}


def test_excluded_vm_never_moves_for_balance() -> None:
    hosts = [make_host("h1"), make_host("h2")]
    vms = [make_vm(f"x{i}", "h1", cpu_used_cores=6.0) for i in range(4)]
    pol = policy(5, exclude=(Selector(names=frozenset({f"x{i}" for i in range(4)})),))
    plan, _ = plan_ok(make_snapshot(hosts, vms), pol)
    assert not plan.moves


def test_cooldown() -> None:
    hosts = [make_host("h1"), make_host("h2")]
    vms = [make_vm("hot", "h1", cpu_used_cores=12.0), make_vm("warm", "h1", cpu_used_cores=8.0)]
    snap = make_snapshot(hosts, vms)
    free, _ = plan_ok(snap, policy(5))
    assert free.moves
    held = frozenset(m.vm for m in free.moves)
    plan, _ = plan_ok(snap, policy(5), held=held)
    assert not {m.vm for m in plan.moves} & held
    assert set(_blocked(plan).values()) == {BlockedReason.COOLDOWN}


def test_unreachable() -> None:
    hosts = [make_host("h1", state=HostState.UNREACHABLE), make_host("h2")]
    vms = [make_vm("a", "h1"), make_vm("b", "h2")]
    rules = (vm_host("must-h2", ("a",), ("h2",), RuleMode.MUST),)
    plan, _ = plan_ok(make_snapshot(hosts, vms), policy(1, rules=rules))
    assert _blocked(plan) == {"a": BlockedReason.UNREACHABLE}
    assert not plan.moves


def test_move_budget_mandatory_first() -> None:
    hosts = _maint(make_host("h2"), make_host("h3"))
    vms = [make_vm(f"m{i}", "h1") for i in range(3)] + [
        make_vm(f"hot{i}", "h2", cpu_used_cores=7.0) for i in range(4)
    ]
    pol = policy(5, limits=Limits(moves_per_cycle=2, concurrent_per_host=2, concurrent_total=8))
    plan, _ = plan_ok(make_snapshot(hosts, vms), pol)
    assert len(plan.moves) == 2
    assert all(m.reason.mandatory for m in plan.moves)
    assert list(_blocked(plan).values()) == [BlockedReason.MOVE_BUDGET]


def test_no_target() -> None:
    hosts = _maint(make_host("h2", state=HostState.QUARANTINED))
    vms = [make_vm("a", "h1")]
    plan, _ = plan_ok(make_snapshot(hosts, vms), policy(1))
    assert _blocked(plan) == {"a": BlockedReason.NO_TARGET}
