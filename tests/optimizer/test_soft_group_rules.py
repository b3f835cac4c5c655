"""Soft VM-VM rules (``mode: should`` on affinity / anti_affinity), end to end through
``make_plan``: honoured when the cluster has room, broken (and listed in the plan, never
infeasible) when capacity or the host count demands it; the ``soft_rules`` knob; the same
groups with ``must`` stay hard (infeasible where they were)."""

from __future__ import annotations

from dataclasses import replace

from hypothesis import HealthCheck, given, note, settings
from hypothesis import strategies as st

from balancer.model import HostState, Snapshot
from balancer.optimizer import validate_plan
from balancer.plan import BlockedReason, PlanStatus, SoftViolation
from balancer.plan_io import plan_from_dict, plan_to_dict
from balancer.planner import end_state, make_plan
from policies.model import Policy, Rule, RuleKind, RuleMode, Selector, SoftRules
from tests.factories import make_host, make_snapshot, make_vm
from tests.optimizer.helpers import TIME_LIMIT_S, plan_ok, policy
from tests.optimizer.test_properties import clusters


def group(name: str, kind: RuleKind, *vms: str, mode: RuleMode = RuleMode.SHOULD) -> Rule:
    return Rule(name=name, kind=kind, vms=Selector(names=frozenset(vms)), mode=mode)


def apart(*vms: str, mode: RuleMode = RuleMode.SHOULD) -> Rule:
    return group("web-apart", RuleKind.ANTI_AFFINITY, *vms, mode=mode)


def together(*vms: str, mode: RuleMode = RuleMode.SHOULD) -> Rule:
    return group("app-together", RuleKind.AFFINITY, *vms, mode=mode)


def broken(
    rule: str, kind: RuleKind, vms: tuple[str, ...], hosts: tuple[str, ...]
) -> SoftViolation:
    return SoftViolation(rule=rule, kind=kind, mode=RuleMode.SHOULD, vms=vms, hosts=hosts)


def _three_hosts_two_each(first: str, second: str, host_of_second: str = "h1") -> Snapshot:
    """Three equal hosts with two equal VMs each: a balanced cluster."""
    vms = [
        make_vm(first, "h1"),
        make_vm(second, host_of_second),
        make_vm("a", "h2" if host_of_second == "h1" else "h1"),
        make_vm("b", "h2"),
        make_vm("c", "h3"),
        make_vm("d", "h3"),
    ]
    return make_snapshot([make_host(f"h{i}") for i in (1, 2, 3)], vms)


# -- honoured when the cluster has room ----------------------------------------------------------
def test_soft_anti_affinity_is_repaired_when_there_is_room() -> None:
    snap = _three_hosts_two_each("web1", "web2")
    plan, end = plan_ok(snap, policy(3, rules=(apart("web1", "web2"),)))
    assert end.vm("web1").host != end.vm("web2").host
    assert plan.status is PlanStatus.MOVES
    assert plan.soft_violations == ()
    assert {m.rule for m in plan.moves if m.vm in ("web1", "web2")} == {"web-apart"}


def test_soft_affinity_is_repaired_when_there_is_room() -> None:
    snap = _three_hosts_two_each("app", "db", host_of_second="h2")
    plan, end = plan_ok(snap, policy(3, rules=(together("app", "db"),)))
    assert end.vm("app").host == end.vm("db").host
    assert plan.soft_violations == ()
    assert len([m for m in plan.moves if m.vm in ("app", "db")]) == 1  # one joins the other


def test_soft_affinity_repair_may_move_the_member_on_the_home_host() -> None:
    """app and db are one each on h1 and h2; h1 (the nominal home, lowest index) is too full
    for db, so the repair moves app to db instead. Threshold 2: no balancing phase."""
    hosts = [make_host(f"h{i}", memory_mib=16384) for i in (1, 2, 3)]
    vms = [
        make_vm("app", "h1", memory_mib=4096),
        make_vm("fill", "h1", memory_mib=8192),
        make_vm("db", "h2", memory_mib=4096),
        make_vm("z", "h3", memory_mib=8192),
    ]
    plan, end = plan_ok(make_snapshot(hosts, vms), policy(2, rules=(together("app", "db"),)))
    assert end.vm("app").host == end.vm("db").host == "h2"
    assert plan.soft_violations == ()


def test_soft_anti_affinity_guides_an_evacuation() -> None:
    """Balance alone would put both evacuated VMs on the empty h2 (y makes h3 a little
    warmer); the soft rule sends one to h3."""
    hosts = [make_host("h1", state=HostState.MAINTENANCE), make_host("h2"), make_host("h3")]
    vms = [
        make_vm("web1", "h1"),
        make_vm("web2", "h1"),
        make_vm("y", "h3", cpu_used_cores=1.5, memory_mib=6144),
    ]
    plan, end = plan_ok(make_snapshot(hosts, vms), policy(3, rules=(apart("web1", "web2"),)))
    assert {end.vm("web1").host, end.vm("web2").host} == {"h2", "h3"}
    assert plan.soft_violations == ()


def test_soft_group_members_move_on_their_own() -> None:
    """A should affinity group is not a planner unit: it is no reason to keep VMs still or to
    move them in one step, and a group larger than one step can move is not frozen."""
    hosts = [make_host("h1", state=HostState.MAINTENANCE), make_host("h2"), make_host("h3")]
    vms = [make_vm(f"app{i}", "h1") for i in range(4)]
    limits = replace(policy().limits, concurrent_per_host=1)
    pol = policy(3, rules=(together(*[f"app{i}" for i in range(4)]),), limits=limits)
    plan, end = plan_ok(make_snapshot(hosts, vms), pol)
    assert all(end.vm(f"app{i}").host != "h1" for i in range(4))
    assert not plan.blocked
    hard = replace(pol, rules=(together(*[f"app{i}" for i in range(4)], mode=RuleMode.MUST),))
    frozen, _ = plan_ok(make_snapshot(hosts, vms), hard)
    assert not frozen.moves and {b.rule for b in frozen.blocked} == {"app-together"}


# -- broken when capacity demands it: listed, not infeasible ------------------------------------
def test_soft_anti_affinity_larger_than_the_hosts_is_listed_not_infeasible() -> None:
    hosts = [make_host("h1"), make_host("h2")]
    vms = [make_vm(f"w{i}", "h1") for i in range(3)] + [make_vm(f"x{i}", "h2") for i in range(3)]
    snap = make_snapshot(hosts, vms)
    plan, end = plan_ok(snap, policy(3, rules=(apart("w0", "w1", "w2"),)))
    assert plan.status is not PlanStatus.INFEASIBLE
    on = {end.vm(f"w{i}").host for i in range(3)}
    assert on == {"h1", "h2"}  # spread as far as two hosts allow
    (soft,) = plan.soft_violations
    assert (soft.rule, soft.kind, soft.mode) == ("web-apart", "anti_affinity", "should")
    crowded = [h for h in ("h1", "h2") if sum(end.vm(f"w{i}").host == h for i in range(3)) == 2]
    assert soft.hosts == tuple(crowded)
    assert len(soft.vms) == 2 and all(end.vm(v).host == crowded[0] for v in soft.vms)
    hard = make_plan(
        snap,
        policy(3, rules=(apart("w0", "w1", "w2", mode=RuleMode.MUST),)),
        time_limit_s=TIME_LIMIT_S,
    )
    assert hard.status is PlanStatus.INFEASIBLE
    assert hard.conflicts == ("web-apart",)


def test_soft_affinity_without_room_is_listed_not_infeasible() -> None:
    small = [make_host("h1", memory_mib=16384), make_host("h2", memory_mib=16384)]
    vms = [
        make_vm("app", "h1", memory_mib=8192),
        make_vm("db", "h2", memory_mib=8192),
        make_vm("f1", "h1", memory_mib=6144),
        make_vm("f2", "h2", memory_mib=6144),
    ]
    snap = make_snapshot(small, vms)
    plan, _ = plan_ok(snap, policy(3, rules=(together("app", "db"),)))
    assert plan.status is PlanStatus.BALANCED and not plan.moves
    assert plan.soft_violations == (
        broken("app-together", RuleKind.AFFINITY, ("app", "db"), ("h1", "h2")),
    )
    hard = make_plan(
        snap,
        policy(3, rules=(together("app", "db", mode=RuleMode.MUST),)),
        time_limit_s=TIME_LIMIT_S,
    )
    assert hard.status is PlanStatus.INFEASIBLE
    assert "app-together" in hard.conflicts


def test_balancing_breaks_a_soft_anti_affinity_for_a_large_gain_and_says_so() -> None:
    """h1 carries three times h2's load and only web1 can even it out: the gain outweighs
    the soft penalty, the plan moves web1 next to web2 and lists the soft rule it breaks."""
    hosts = [make_host("h1"), make_host("h2")]
    vms = [
        make_vm("web1", "h1", cpu_used_cores=4.0),
        make_vm("big", "h1", cpu_used_cores=8.0, memory_mib=8192),
        make_vm("web2", "h2", cpu_used_cores=4.0),
    ]
    plan, end = plan_ok(make_snapshot(hosts, vms), policy(5, rules=(apart("web1", "web2"),)))
    assert end.vm("web1").host == end.vm("web2").host == "h2"
    assert plan.after.imbalance < plan.before.imbalance
    assert plan.soft_violations == (
        broken("web-apart", RuleKind.ANTI_AFFINITY, ("web1", "web2"), ("h2",)),
    )


# -- the soft_rules knob --------------------------------------------------------------------------
def test_when_balancing_leaves_a_balanced_cluster_alone() -> None:
    snap = _three_hosts_two_each("web1", "web2")
    pol = replace(policy(3, rules=(apart("web1", "web2"),)), soft_rules=SoftRules.WHEN_BALANCING)
    plan, _ = plan_ok(snap, pol)
    assert plan.status is PlanStatus.BALANCED and not plan.moves
    assert [s.rule for s in plan.soft_violations] == ["web-apart"]
    repaired, _ = plan_ok(snap, replace(pol, soft_rules=SoftRules.REPAIR))
    assert repaired.moves and not repaired.soft_violations


def test_when_balancing_repairs_in_a_cycle_that_balances() -> None:
    """Outside the target the cycle balances anyway, and the soft rule is honoured with it
    (app and db are too small to matter for balance: only the soft rule joins them)."""
    hosts = [make_host("h1"), make_host("h2"), make_host("h3")]
    tiny = {"cpu_used_cores": 0.1, "memory_mib": 512}
    vms = [make_vm(f"v{i}", "h1", cpu_used_cores=3.0) for i in range(6)] + [
        make_vm("app", "h2", **tiny),
        make_vm("db", "h3", **tiny),
    ]
    pol = replace(policy(3, rules=(together("app", "db"),)), soft_rules=SoftRules.WHEN_BALANCING)
    plan, end = plan_ok(make_snapshot(hosts, vms), pol)
    assert plan.after.imbalance < plan.before.imbalance
    assert end.vm("app").host == end.vm("db").host
    assert plan.soft_violations == ()


def test_threshold_one_never_repairs_soft_rules() -> None:
    snap = _three_hosts_two_each("web1", "web2")
    plan, _ = plan_ok(snap, policy(1, rules=(apart("web1", "web2"),)))
    assert not plan.moves
    assert [s.rule for s in plan.soft_violations] == ["web-apart"]
    hard, end = plan_ok(snap, policy(1, rules=(apart("web1", "web2", mode=RuleMode.MUST),)))
    assert hard.moves and end.vm("web1").host != end.vm("web2").host


def test_replanning_the_end_state_gives_no_move() -> None:
    snap = _three_hosts_two_each("web1", "web2")
    pol = policy(3, rules=(apart("web1", "web2"), together("c", "d")))
    _, end = plan_ok(snap, pol)
    again = make_plan(end, pol, time_limit_s=TIME_LIMIT_S)
    assert not again.moves


# -- shown in plans -------------------------------------------------------------------------------
def test_soft_violations_survive_the_plan_json() -> None:
    hosts = [make_host("h1"), make_host("h2")]
    vms = [make_vm(f"w{i}", "h1") for i in range(3)] + [make_vm("x", "h2")]
    plan, _ = plan_ok(make_snapshot(hosts, vms), policy(3, rules=(apart("w0", "w1", "w2"),)))
    assert plan.soft_violations
    doc = plan_to_dict(plan)
    assert doc["soft_violations"][0]["rule"] == "web-apart"
    assert plan_from_dict(doc).soft_violations == plan.soft_violations


# -- property: random clusters, groups must or should ------------------------------------------
@st.composite
def _soft_clusters(draw: st.DrawFn) -> tuple[Snapshot, Policy]:
    snapshot, pol = draw(clusters())
    rules = tuple(
        replace(r, mode=draw(st.sampled_from([RuleMode.MUST, RuleMode.SHOULD]))) if r.group else r
        for r in pol.rules
    )
    return snapshot, replace(pol, rules=rules, soft_rules=draw(st.sampled_from(list(SoftRules))))


def _broken_groups(snapshot: Snapshot, pol: Policy) -> set[str]:
    """Soft VM-VM rules the snapshot breaks, computed here independently of the optimizer."""
    out = set()
    for r in pol.rules:
        if not r.group or r.hard:
            continue
        hosts = [v.host for v in snapshot.vms if r.vms.matches(v.name, v.labels)]
        if r.kind is RuleKind.ANTI_AFFINITY and len(set(hosts)) < len(hosts):
            out.add(r.name)
        if r.kind is RuleKind.AFFINITY and len(set(hosts)) > 1:
            out.add(r.name)
    return out


@settings(max_examples=30, deadline=None, suppress_health_check=list(HealthCheck))
@given(_soft_clusters())
def test_soft_groups_never_conflict_are_listed_and_replanning_moves_nothing(
    case: tuple[Snapshot, Policy],
) -> None:
    snapshot, pol = case
    plan = make_plan(snapshot, pol, time_limit_s=TIME_LIMIT_S)
    note(f"snapshot={snapshot!r}\npolicy={pol!r}\nplan={plan!r}")
    assert not validate_plan(snapshot, pol, plan)
    soft_names = {r.name for r in pol.rules if not r.hard}
    if plan.status is PlanStatus.INFEASIBLE:
        assert not set(plan.conflicts) & soft_names
        return
    end = end_state(snapshot, plan)
    listed = {s.rule for s in plan.soft_violations}
    assert listed <= soft_names
    assert {n for n in listed if pol.rule(n).group} == _broken_groups(end, pol)
    if any(
        "no safe order" in b.detail or b.reason is BlockedReason.MOVE_BUDGET for b in plan.blocked
    ):
        return  # a plan cut short leaves work for the next cycle
    again = make_plan(end, pol, time_limit_s=TIME_LIMIT_S)
    assert not again.moves, [(m.vm, m.source, m.target, m.reason_label) for m in again.moves]
