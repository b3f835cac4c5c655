"""An infeasible policy/snapshot names the smallest set of conflicting rules it found."""

from __future__ import annotations

import pytest

from balancer.errors import InfeasibleError
from balancer.optimizer import optimize
from balancer.optimizer.core import require_feasible
from balancer.plan import CauseKind, PlanStatus
from balancer.plan_io import plan_to_dict
from balancer.planner import make_plan
from policies.lint import lint
from policies.model import Limits, RuleMode
from tests.factories import make_host, make_snapshot, make_vm
from tests.optimizer.helpers import TIME_LIMIT_S, aff, anti, policy, vm_host


def _hosts(n: int = 3) -> list:
    return [make_host(f"h{i + 1}") for i in range(n)]


def test_affinity_and_anti_affinity_on_the_same_pair() -> None:
    snap = make_snapshot(
        _hosts(), [make_vm("a", "h1"), make_vm("b", "h2"), make_vm("c", "h3"), make_vm("d", "h3")]
    )
    rules = (aff("together", "a", "b"), anti("apart", "a", "b"), anti("unrelated", "c", "d"))
    plan = make_plan(snap, policy(3, rules=rules), time_limit_s=TIME_LIMIT_S)
    assert plan.status is PlanStatus.INFEASIBLE
    assert plan.conflicts == ("apart", "together")
    assert not plan.moves
    assert plan_to_dict(plan)["conflicts"] == ["apart", "together"]


def test_pins_and_anti_affinity_conflict_names_only_the_culprits() -> None:
    snap = make_snapshot(
        _hosts(), [make_vm("a", "h2"), make_vm("b", "h1"), make_vm("c", "h1"), make_vm("d", "h2")]
    )
    rules = (
        vm_host("a-on-h1", ("a",), ("h1",), RuleMode.MUST),
        vm_host("b-on-h1", ("b",), ("h1",), RuleMode.MUST),
        anti("ab-apart", "a", "b"),
        anti("cd-apart", "c", "d"),
        vm_host("d-not-h3", ("d",), ("h3",), RuleMode.MUST_NOT),
    )
    plan = make_plan(snap, policy(3, rules=rules), time_limit_s=TIME_LIMIT_S)
    assert plan.status is PlanStatus.INFEASIBLE
    assert plan.conflicts == ("a-on-h1", "ab-apart", "b-on-h1")


def test_anti_affinity_group_larger_than_the_cluster() -> None:
    snap = make_snapshot(_hosts(2), [make_vm(f"w{i}", "h1") for i in range(3)])
    sol = optimize(
        snap, policy(1, rules=(anti("spread", "w0", "w1", "w2"),)), time_limit_s=TIME_LIMIT_S
    )
    assert sol.status is PlanStatus.INFEASIBLE and sol.conflicts == ("spread",)
    with pytest.raises(InfeasibleError) as err:
        require_feasible(sol)
    assert err.value.rules == ("spread",)


def test_causes_are_typed_rule_capacity_and_budget() -> None:
    """Each infeasibility carries typed causes; the rule ones are lint's, and capacity with
    headroom or the move budget come from the solver's core."""
    snap = make_snapshot(_hosts(2), [make_vm("a", "h1", memory_mib=126_000), make_vm("b", "h1")])
    pin_a = vm_host("a-on-h2", ("a",), ("h2",), RuleMode.MUST)
    pin_b = vm_host("b-on-h2", ("b",), ("h2",), RuleMode.MUST)
    # a fits h2 (128 GiB) only without the 5 % memory headroom: a capacity cause
    room = optimize(snap, policy(1, rules=(pin_a,)), time_limit_s=TIME_LIMIT_S)
    assert room.status is PlanStatus.INFEASIBLE
    assert [(c.code, c.kind, c.rules) for c in room.causes] == [
        ("no_room", CauseKind.CAPACITY, ("a-on-h2",))
    ]
    assert lint(policy(1, rules=(pin_a,)), snap) == []  # lint proves only certain conflicts
    # b could move, but no move is allowed: a move-budget cause
    budget = optimize(
        snap,
        policy(1, rules=(pin_b,), limits=Limits(moves_per_cycle=0)),
        time_limit_s=TIME_LIMIT_S,
    )
    assert [(c.code, c.kind) for c in budget.causes] == [("move_budget", CauseKind.MOVE_BUDGET)]
    assert budget.conflicts == ("b-on-h2", "limits.moves_per_cycle")
    with pytest.raises(InfeasibleError) as err:
        require_feasible(budget)
    assert err.value.causes == budget.causes
    assert "limits.moves_per_cycle" in str(err.value)
