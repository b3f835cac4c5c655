"""Each rule kind: anti_affinity, affinity, vm_host must / must_not (hard, repaired with reason
rule:<name>, never broken by balancing) and should / should_not (soft, penalised)."""

from __future__ import annotations

from balancer.model import HostState
from balancer.plan import MoveReason
from policies.model import RuleMode
from tests.factories import make_host, make_snapshot, make_vm
from tests.optimizer.helpers import aff, anti, plan_ok, policy, vm_host


def _hosts(n: int = 3) -> list:
    return [make_host(f"h{i + 1}") for i in range(n)]


def test_anti_affinity_violation_is_repaired() -> None:
    vms = [make_vm(f"web{i}", "h1") for i in range(3)]
    plan, end = plan_ok(
        make_snapshot(_hosts(), vms),
        policy(1, rules=(anti("spread", *[f"web{i}" for i in range(3)]),)),
    )
    assert len({end.vm(f"web{i}").host for i in range(3)}) == 3
    assert {m.reason_label for m in plan.moves} == {"rule:spread"}
    assert len(plan.moves) == 2


def test_affinity_violation_is_repaired_and_group_moves_together() -> None:
    vms = [make_vm("app", "h1"), make_vm("db", "h2")]
    plan, end = plan_ok(make_snapshot(_hosts(), vms), policy(1, rules=(aff("pair", "app", "db"),)))
    assert end.vm("app").host == end.vm("db").host
    assert [m.reason_label for m in plan.moves] == ["rule:pair"]


def test_affinity_group_evacuates_in_one_step() -> None:
    hosts = [make_host("h1", state=HostState.MAINTENANCE), make_host("h2"), make_host("h3")]
    vms = [make_vm("app", "h1"), make_vm("db", "h1"), make_vm("x", "h2")]
    plan, end = plan_ok(make_snapshot(hosts, vms), policy(1, rules=(aff("pair", "app", "db"),)))
    assert end.vm("app").host == end.vm("db").host != "h1"
    assert len({m.step for m in plan.moves}) == 1


def test_vm_host_must_is_repaired() -> None:
    vms = [make_vm("lic", "h1")]
    plan, end = plan_ok(
        make_snapshot(_hosts(), vms),
        policy(1, rules=(vm_host("licensed", ("lic",), ("h3",), RuleMode.MUST),)),
    )
    assert end.vm("lic").host == "h3"
    assert plan.moves[0].reason is MoveReason.RULE and plan.moves[0].rule == "licensed"


def test_vm_host_must_not_is_repaired() -> None:
    vms = [make_vm("x", "h1")]
    _, end = plan_ok(
        make_snapshot(_hosts(2), vms),
        policy(1, rules=(vm_host("not-h1", ("x",), ("h1",), RuleMode.MUST_NOT),)),
    )
    assert end.vm("x").host == "h2"


def test_balancing_never_breaks_hard_rules() -> None:
    hosts = _hosts(3)
    vms = [make_vm(f"hot{i}", "h1", cpu_used_cores=5.0) for i in range(6)]
    rules = (
        vm_host("stay", ("hot0", "hot1"), ("h1",), RuleMode.MUST),
        vm_host("never-h3", ("hot2", "hot3"), ("h3",), RuleMode.MUST_NOT),
        anti("apart", "hot4", "hot5", "hot2"),
    )
    plan, end = plan_ok(make_snapshot(hosts, vms), policy(5, rules=rules))
    assert plan.moves
    assert end.vm("hot0").host == end.vm("hot1").host == "h1"
    assert "h3" not in {end.vm("hot2").host, end.vm("hot3").host}
    assert len({end.vm(v).host for v in ("hot4", "hot5", "hot2")}) == 3


def test_soft_rule_is_followed_when_it_costs_nothing_hard() -> None:
    vms = [make_vm("x", "h1"), make_vm("y", "h2"), make_vm("z", "h3")]
    plan, end = plan_ok(
        make_snapshot(_hosts(), vms),
        policy(3, rules=(vm_host("prefer-h2", ("x",), ("h2",), RuleMode.SHOULD),)),
    )
    assert end.vm("x").host == "h2"
    assert plan.moves[0].reason_label == "rule:prefer-h2"


def test_soft_rule_gives_way_to_capacity() -> None:
    hosts = [make_host("h1"), make_host("h2", memory_mib=8192)]
    vms = [make_vm("x", "h1", memory_mib=16384)]
    plan, end = plan_ok(
        make_snapshot(hosts, vms),
        policy(3, rules=(vm_host("prefer-h2", ("x",), ("h2",), RuleMode.SHOULD),)),
    )
    assert end.vm("x").host == "h1"
    assert not plan.moves


def test_should_not_moves_away_at_threshold_2_and_up_only() -> None:
    vms = [make_vm("x", "h1"), make_vm("y", "h2")]
    rules = (vm_host("avoid-h1", ("x",), ("h1",), RuleMode.SHOULD_NOT),)
    snap = make_snapshot(_hosts(2), vms)
    plan1, _ = plan_ok(snap, policy(1, rules=rules))
    assert not plan1.moves
    _plan3, end3 = plan_ok(snap, policy(3, rules=rules))
    assert end3.vm("x").host == "h2"
