"""The independent validator catches each kind of unsafe plan."""

from __future__ import annotations

from balancer.model import HostState
from balancer.optimizer import validate_plan
from balancer.plan import Metrics, Move, MoveReason, Plan, PlanStatus
from policies.model import Limits, RuleMode
from tests.factories import make_host, make_snapshot, make_vm
from tests.optimizer.helpers import anti, policy, vm_host

M = Metrics(imbalance=0, cpu_stddev=0, memory_stddev=0, max_cpu_load=0, max_memory_load=0)


def _plan(*moves: tuple[str, str, str, int]) -> Plan:
    return Plan(
        status=PlanStatus.MOVES,
        blocked=(),
        before=M,
        after=M,
        moves=tuple(
            Move(vm=v, source=s, target=t, step=k, reason=MoveReason.BALANCE)
            for v, s, t, k in moves
        ),
    )


def _checks(snap, pol, plan) -> set[str]:  # type: ignore[no-untyped-def]
    return {v.check for v in validate_plan(snap, pol, plan)}


def test_catches_in_flight_overcommit() -> None:
    hosts = [make_host("h1", memory_mib=20480), make_host("h2", memory_mib=20480)]
    snap = make_snapshot(
        hosts, [make_vm("a", "h1", memory_mib=16384), make_vm("b", "h2", memory_mib=16384)]
    )
    assert "memory" in _checks(snap, policy(3), _plan(("a", "h1", "h2", 0), ("b", "h2", "h1", 0)))


def test_catches_states_rules_cpu_concurrency_and_sources() -> None:
    hosts = [
        make_host("h1"),
        make_host("h2", state=HostState.QUARANTINED),
        make_host("h3", cpu_features={"sse4_2"}),
        make_host("h4"),
    ]
    vms = [
        make_vm("a", "h1"),
        make_vm("b", "h1", cpu_features={"avx2"}),
        make_vm("c", "h4"),
        make_vm("d", "h1"),
    ]
    pol = policy(
        3,
        rules=(vm_host("no-h4", ("d",), ("h4",), RuleMode.MUST_NOT), anti("ac", "a", "c")),
        limits=Limits(moves_per_cycle=1, concurrent_per_host=1, concurrent_total=1),
    )
    plan = _plan(
        ("a", "h1", "h2", 0), ("b", "h1", "h3", 0), ("d", "h1", "h4", 0), ("c", "h9", "h1", 1)
    )
    got = _checks(make_snapshot(hosts, vms), pol, plan)
    assert {"host_state", "cpu", "rule", "concurrency", "budget", "unknown"} <= got


def test_catches_anti_affinity_in_flight_and_unlisted_evacuation() -> None:
    hosts = [make_host("h1", state=HostState.MAINTENANCE), make_host("h2"), make_host("h3")]
    snap = make_snapshot(hosts, [make_vm("a", "h1"), make_vm("b", "h3"), make_vm("c", "h1")])
    pol = policy(3, rules=(anti("ab", "a", "b"),))
    plan = _plan(("b", "h3", "h2", 0), ("a", "h1", "h2", 0))
    got = _checks(snap, pol, plan)
    assert {"rule", "evacuation"} <= got


def test_valid_plan_has_no_violation() -> None:
    hosts = [make_host("h1"), make_host("h2")]
    snap = make_snapshot(hosts, [make_vm("a", "h1")])
    assert not validate_plan(snap, policy(3), _plan(("a", "h1", "h2", 0)))
