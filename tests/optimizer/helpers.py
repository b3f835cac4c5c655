"""Shared helpers for the optimizer tests: plan + validate + end state in one call."""

from __future__ import annotations

from dataclasses import replace

from balancer.model import Snapshot
from balancer.optimizer import validate_plan
from balancer.plan import Plan
from balancer.planner import end_state, make_plan
from policies.model import Limits, Policy, Rule, RuleKind, RuleMode, Selector

TIME_LIMIT_S = 2.0


def plan_ok(snapshot: Snapshot, policy: Policy, **kw: object) -> tuple[Plan, Snapshot]:
    """Plan, assert the independent validator finds nothing, return the plan and end state."""
    plan = make_plan(snapshot, policy, time_limit_s=TIME_LIMIT_S, **kw)  # type: ignore[arg-type]
    violations = validate_plan(snapshot, policy, plan)
    assert not violations, "\n".join(map(str, violations))
    return plan, end_state(snapshot, plan)


def policy(threshold: int = 3, rules: tuple[Rule, ...] = (), **kw: object) -> Policy:
    limits = kw.pop(
        "limits", Limits(moves_per_cycle=100, concurrent_per_host=2, concurrent_total=8)
    )
    return replace(Policy(threshold=threshold, rules=rules), limits=limits, **kw)  # type: ignore[arg-type]


def anti(name: str, *vms: str) -> Rule:
    return Rule(name=name, kind=RuleKind.ANTI_AFFINITY, vms=Selector(names=frozenset(vms)))


def aff(name: str, *vms: str) -> Rule:
    return Rule(name=name, kind=RuleKind.AFFINITY, vms=Selector(names=frozenset(vms)))


def vm_host(name: str, vms: tuple[str, ...], hosts: tuple[str, ...], mode: RuleMode) -> Rule:
    return Rule(
        name=name,
        kind=RuleKind.VM_HOST,
        vms=Selector(names=frozenset(vms)),
        hosts=Selector(names=frozenset(hosts)),
        mode=mode,
    )


def where(snapshot: Snapshot) -> dict[str, str]:
    return snapshot.placement()


def moved(plan: Plan) -> dict[str, str]:
    """VM -> final target of its non-temporary moves."""
    return {m.vm: m.target for m in plan.moves}
