"""Property: lint and the optimizer agree on contradictory rules.

Generated small clusters (host states, CPU features) and rule sets (affinity, anti_affinity,
must / must_not): whenever lint reports no error, the optimizer does not raise
InfeasibleError; whenever it does, lint against that snapshot reports an error with the same
code naming the same rules. Capacity is ample, so that only rules can make it infeasible.
"""

from __future__ import annotations

from dataclasses import replace

import pytest
from hypothesis import HealthCheck, given, note, settings
from hypothesis import strategies as st

from balancer.errors import InfeasibleError
from balancer.model import HostState, Snapshot
from balancer.optimizer import optimize
from balancer.optimizer.core import require_feasible
from balancer.plan import CauseKind
from policies.lint import Severity, lint
from policies.model import Limits, Policy, Rule, RuleKind, RuleMode, Selector
from tests.factories import make_host, make_snapshot, make_vm

FEATURES = ("f1", "f2")
RACKS = ("a", "b", "c")
STATES = (
    HostState.ACTIVE,
    HostState.ACTIVE,
    HostState.ACTIVE,
    HostState.MAINTENANCE,
    HostState.QUARANTINED,
    HostState.UNREACHABLE,
)


@st.composite
def cases(draw: st.DrawFn, tight: bool = False) -> tuple[Snapshot, Policy]:
    """Small clusters and rule sets; ``tight``: VMs up to half a host and a small move
    budget, so that capacity and the budget can make the input infeasible too."""
    n_hosts = draw(st.integers(2, 4))
    hosts = [
        make_host(
            f"h{i}",
            state=draw(st.sampled_from(STATES)),
            cpu_features=draw(st.sets(st.sampled_from(FEATURES))),
            labels={"rack": draw(st.sampled_from(RACKS))},
        )
        for i in range(n_hosts)
    ]
    n_vms = draw(st.integers(2, 6))
    vms = [
        make_vm(
            f"v{i}",
            f"h{draw(st.integers(0, n_hosts - 1))}",
            memory_mib=draw(st.sampled_from((8192, 32768, 65536))) if tight else 1024,
            cpu_used_cores=0.5,
            cpu_features=draw(st.sets(st.sampled_from(FEATURES), max_size=1)),
        )
        for i in range(n_vms)
    ]
    vm_names = [v.name for v in vms]
    host_names = [h.name for h in hosts]
    rules: list[Rule] = []
    for i in range(draw(st.integers(1, 4))):
        kind = draw(st.sampled_from(list(RuleKind)))
        if kind is RuleKind.VM_HOST:
            members = draw(st.sets(st.sampled_from(vm_names), min_size=1, max_size=3))
            rules.append(
                Rule(
                    name=f"r{i}",
                    kind=kind,
                    vms=Selector(names=frozenset(members)),
                    hosts=draw(
                        st.one_of(
                            st.builds(Selector, names=st.frozensets(st.sampled_from(host_names))),
                            st.builds(
                                Selector,
                                labels=st.fixed_dictionaries({"rack": st.sampled_from(RACKS)}),
                            ),
                        )
                    ),
                    mode=draw(st.sampled_from((RuleMode.MUST, RuleMode.MUST_NOT))),
                )
            )
        else:
            members = draw(st.sets(st.sampled_from(vm_names), min_size=2, max_size=4))
            rules.append(Rule(name=f"r{i}", kind=kind, vms=Selector(names=frozenset(members))))
    exclude = draw(st.sets(st.sampled_from(vm_names), max_size=1))
    policy = replace(
        Policy(
            threshold=1,
            rules=tuple(rules),
            exclude=tuple(Selector(names=frozenset({n})) for n in exclude),
        ),
        limits=Limits(
            moves_per_cycle=draw(st.integers(0, 3)) if tight else 100,
            concurrent_per_host=64,
            concurrent_total=1024,
        ),
    )
    return make_snapshot(hosts, vms), policy


@settings(
    max_examples=60,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(cases())
def test_lint_and_optimizer_agree(case: tuple[Snapshot, Policy]) -> None:
    snap, pol = case
    findings = [f for f in lint(pol, snap) if f.severity is Severity.ERROR]
    note(f"snapshot: {snap}\npolicy rules: {pol.rules}\nlint: {findings}")
    sol = optimize(snap, pol, time_limit_s=0.5)
    try:
        require_feasible(sol)
    except InfeasibleError as err:
        note(f"infeasible: {err}")
        assert findings, "the optimizer found the rules infeasible but lint found no error"
        named = {(f.code, frozenset(f.rules)) for f in findings}
        assert err.causes
        for c in err.causes:
            assert c.kind is not CauseKind.MOVE_BUDGET
            assert (c.code, frozenset(c.rules)) in named, c
        assert set(err.rules) <= {r for f in findings for r in f.rules}
        return
    # feasible: nothing to compare (lint may be stricter than the model: VMs that cannot
    # leave a host may stay on it)


@settings(max_examples=60, deadline=None, derandomize=True)
@given(cases())
def test_a_conflict_found_alone_holds_against_the_snapshot(case: tuple[Snapshot, Policy]) -> None:
    """What lint proves from the rules alone is proved again with the hosts: every error it
    finds without a snapshot contains the rules of an error it finds with one."""
    snap, pol = case
    with_snap = [frozenset(f.rules) for f in lint(pol, snap) if f.severity is Severity.ERROR]
    for f in lint(pol, None):
        if f.severity is Severity.ERROR:
            assert any(rules <= frozenset(f.rules) for rules in with_snap), f


def test_property_can_fail_on_a_known_contradiction() -> None:
    """The generator's shape reaches the optimizer's infeasible path (the property is live)."""
    snap = make_snapshot([make_host("h0"), make_host("h1")], [make_vm("v0", "h0")])
    pin = Rule(
        name="r0",
        kind=RuleKind.VM_HOST,
        vms=Selector(names=frozenset({"v0"})),
        hosts=Selector(names=frozenset()),
        mode=RuleMode.MUST,
    )
    pol = Policy(threshold=1, rules=(pin,))
    with pytest.raises(InfeasibleError) as err:
        require_feasible(optimize(snap, pol, time_limit_s=0.5))
    assert err.value.rules == ("r0",)
    assert [f.code for f in lint(pol, snap)] == ["must_no_hosts"]


@settings(
    max_examples=40,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(cases(tight=True))
def test_capacity_and_budget_causes_are_typed(case: tuple[Snapshot, Policy]) -> None:
    """With tight capacity and budget: every infeasibility names a cause; the rule, CPU and
    host-state causes are lint's, the rest are typed capacity or move_budget causes that
    name the solver's rules."""
    snap, pol = case
    findings = {
        (f.code, frozenset(f.rules)) for f in lint(pol, snap) if f.severity is Severity.ERROR
    }
    sol = optimize(snap, pol, time_limit_s=0.5)
    note(f"snapshot: {snap}\npolicy: {pol}\nlint: {findings}\nsolution: {sol.causes}")
    try:
        require_feasible(sol)
    except InfeasibleError as err:
        assert err.causes
        for c in err.causes:
            if c.kind in (CauseKind.CAPACITY, CauseKind.MOVE_BUDGET) and c.code in (
                "no_room",
                "move_budget",
                "unexplained",
            ):
                assert c.message
                if c.kind is CauseKind.MOVE_BUDGET:
                    assert "limits.moves_per_cycle" in c.rules
            else:
                assert (c.code, frozenset(c.rules)) in findings, c
        assert set(err.rules) == {n for c in err.causes for n in c.rules}
