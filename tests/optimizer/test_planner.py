"""Ordering: in-flight memory on both hosts, concurrency limits, swaps and cycles broken with a
temporary move (or the move left out), never a transient overcommit."""

from __future__ import annotations

from balancer.optimizer.context import build_context
from balancer.optimizer.core import Solution
from balancer.optimizer.metrics import metrics
from balancer.optimizer.validate import validate_plan
from balancer.plan import BlockedReason, MoveReason, PlanStatus
from balancer.planner import build_plan, end_state
from policies.model import Limits
from tests.factories import make_host, make_snapshot, make_vm
from tests.optimizer.helpers import anti, policy


def _solution(snapshot, pol, target: dict[str, str]) -> Solution:  # type: ignore[no-untyped-def]
    """A hand-made optimizer answer (to test the planner on its own)."""
    ctx = build_context(snapshot, pol)
    placement = tuple(ctx.host_index[target.get(v.name, v.host)] for v in snapshot.vms)
    moved = [v for v, h in enumerate(placement) if h != ctx.current[v]]
    return Solution(
        ctx=ctx,
        status=PlanStatus.MOVES,
        start=ctx.current,
        placement=placement,
        reasons={v: (MoveReason.BALANCE, None) for v in moved},
        gains={v: 0.0 for v in moved},
        blocked=(),
        before=metrics(ctx, ctx.current),
        after=metrics(ctx, placement),
    )


def _full_hosts():  # type: ignore[no-untyped-def]
    # each of h1, h2 has room for exactly one 16 GiB VM (20 GiB usable with 0 headroom)
    return [make_host("h1", memory_mib=20480), make_host("h2", memory_mib=20480)]


def test_swap_is_broken_with_a_temporary_move() -> None:
    hosts = [*_full_hosts(), make_host("h3", memory_mib=20480)]
    vms = [make_vm("a", "h1", memory_mib=16384), make_vm("b", "h2", memory_mib=16384)]
    snap = make_snapshot(hosts, vms)
    pol = policy(3)
    plan = build_plan(_solution(snap, pol, {"a": "h2", "b": "h1"}))
    assert not validate_plan(snap, pol, plan)
    assert [m.reason for m in plan.moves].count(MoveReason.TEMPORARY) == 1
    end = end_state(snap, plan)
    assert end.vm("a").host == "h2" and end.vm("b").host == "h1"
    assert plan.steps == 3


def test_swap_without_parking_room_is_left_out() -> None:
    snap = make_snapshot(
        _full_hosts(), [make_vm("a", "h1", memory_mib=16384), make_vm("b", "h2", memory_mib=16384)]
    )
    pol = policy(3)
    plan = build_plan(_solution(snap, pol, {"a": "h2", "b": "h1"}))
    assert not validate_plan(snap, pol, plan)
    assert len(plan.moves) <= 1 or not plan.moves
    assert BlockedReason.CAPACITY in {b.reason for b in plan.blocked}


def test_three_cycle_is_ordered_safely() -> None:
    hosts = [make_host(f"h{i}", memory_mib=20480) for i in range(1, 5)]
    vms = [
        make_vm("a", "h1", memory_mib=16384),
        make_vm("b", "h2", memory_mib=16384),
        make_vm("c", "h3", memory_mib=16384),
    ]
    snap = make_snapshot(hosts, vms)
    pol = policy(3)
    plan = build_plan(_solution(snap, pol, {"a": "h2", "b": "h3", "c": "h1"}))
    assert not validate_plan(snap, pol, plan)
    end = end_state(snap, plan)
    assert (end.vm("a").host, end.vm("b").host, end.vm("c").host) == ("h2", "h3", "h1")


def test_in_flight_memory_counts_on_target_until_source_leaves() -> None:
    # x must leave h2 before y can arrive: two steps, never both on h2 at once
    hosts = [
        make_host("h1", memory_mib=40960),
        make_host("h2", memory_mib=20480),
        make_host("h3", memory_mib=40960),
    ]
    vms = [make_vm("y", "h1", memory_mib=16384), make_vm("x", "h2", memory_mib=16384)]
    snap = make_snapshot(hosts, vms)
    pol = policy(3)
    plan = build_plan(_solution(snap, pol, {"y": "h2", "x": "h3"}))
    assert not validate_plan(snap, pol, plan)
    steps = {m.vm: m.step for m in plan.moves}
    assert steps["x"] < steps["y"]


def test_concurrency_limits_make_waves() -> None:
    hosts = [make_host("h1", memory_mib=1 << 20), make_host("h2", memory_mib=1 << 20)]
    vms = [make_vm(f"v{i}", "h1") for i in range(6)]
    snap = make_snapshot(hosts, vms)
    pol = policy(3, limits=Limits(moves_per_cycle=10, concurrent_per_host=2, concurrent_total=8))
    plan = build_plan(_solution(snap, pol, {f"v{i}": "h2" for i in range(6)}))
    assert not validate_plan(snap, pol, plan)
    assert plan.steps == 3


def test_anti_affinity_members_never_share_a_host_in_flight() -> None:
    hosts = [make_host(f"h{i}") for i in range(1, 4)]
    vms = [make_vm("a", "h1"), make_vm("b", "h2")]
    snap = make_snapshot(hosts, vms)
    pol = policy(3, rules=(anti("apart", "a", "b"),))
    plan = build_plan(_solution(snap, pol, {"a": "h2", "b": "h3"}))
    assert not validate_plan(snap, pol, plan)
    steps = {m.vm: m.step for m in plan.moves}
    assert steps["b"] < steps["a"]
