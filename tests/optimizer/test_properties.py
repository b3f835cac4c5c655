"""Property tests on random snapshots and policies.

* every plan passes the independent validator: every hard rule holds after every step, with
  in-flight memory (and CPU) counted on both hosts, within the concurrency limits;
* re-planning the plan's own end state gives no move (no ping-pong by construction);
* the same input and seed give the same plan.
"""

from __future__ import annotations

import os
from dataclasses import replace

from hypothesis import HealthCheck, given, note, settings
from hypothesis import strategies as st

from balancer.model import HostState, Snapshot
from balancer.optimizer import optimize, validate_plan
from balancer.plan import BlockedReason, PlanStatus
from balancer.planner import build_plan, end_state
from policies.model import Limits, Policy, Resources, Rule, RuleKind, RuleMode, Selector
from tests.factories import make_host, make_snapshot, make_vm

OLD = frozenset({"sse4_2"})
NEW = frozenset({"sse4_2", "avx2"})
TIME_LIMIT_S = 2.0
SETTINGS = settings(
    max_examples=int(os.environ.get("BALANCER_PROPERTY_EXAMPLES", "60")),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


@st.composite
def clusters(draw: st.DrawFn) -> tuple[Snapshot, Policy]:
    n_hosts = draw(st.integers(2, 5))
    hosts = []
    for i in range(n_hosts):
        state = draw(
            st.sampled_from(
                [HostState.ACTIVE] * 6
                + [
                    HostState.MAINTENANCE,
                    HostState.ENTERING_MAINTENANCE,
                    HostState.QUARANTINED,
                    HostState.UNREACHABLE,
                ]
            )
        )
        hosts.append(
            make_host(
                f"h{i}",
                cpu_cores=draw(st.sampled_from([8, 16, 32])),
                memory_mib=draw(st.sampled_from([16384, 32768, 65536])),
                cpu_features=draw(st.sampled_from([OLD, NEW])),
                state=state,
                labels={"rack": f"r{i % 2}"},
            )
        )
    n_vms = draw(st.integers(0, 12))
    vms = [
        make_vm(
            f"v{j}",
            f"h{draw(st.integers(0, n_hosts - 1))}",
            memory_mib=draw(st.sampled_from([1024, 2048, 4096, 8192])),
            cpu_used_cores=draw(st.sampled_from([0.2, 0.5, 1.0, 2.0, 4.0])),
            cpu_features=draw(st.sampled_from([frozenset(), OLD, NEW])),
            labels={"app": draw(st.sampled_from(["web", "db", "batch"]))},
        )
        for j in range(n_vms)
    ]
    names = [v.name for v in vms]
    rules: list[Rule] = []
    if len(names) >= 2:
        for k in range(draw(st.integers(0, 3))):
            kind = draw(st.sampled_from(list(RuleKind)))
            members = draw(st.lists(st.sampled_from(names), min_size=2, max_size=3, unique=True))
            if kind is RuleKind.VM_HOST:
                rules.append(
                    Rule(
                        name=f"r{k}",
                        kind=kind,
                        vms=Selector(names=frozenset(members[:1])),
                        hosts=Selector(labels={"rack": draw(st.sampled_from(["r0", "r1"]))}),
                        mode=draw(st.sampled_from(list(RuleMode))),
                    )
                )
            else:
                rules.append(Rule(name=f"r{k}", kind=kind, vms=Selector(names=frozenset(members))))
    excluded = draw(st.lists(st.sampled_from(names), max_size=2, unique=True)) if names else []
    policy = Policy(
        threshold=draw(st.integers(1, 5)),
        balance=Resources(cpu=1.0, memory=draw(st.sampled_from([0.0, 0.5, 1.0]))),
        headroom=Resources(cpu=0.1, memory=draw(st.sampled_from([0.0, 0.05, 0.2]))),
        limits=Limits(
            moves_per_cycle=50,
            concurrent_per_host=draw(st.integers(1, 3)),
            concurrent_total=draw(st.integers(1, 6)),
        ),
        rules=tuple(rules),
        exclude=(Selector(names=frozenset(excluded)),) if excluded else (),
    )
    return make_snapshot(hosts, vms), policy


@SETTINGS
@given(clusters())
def test_every_step_is_safe_and_replanning_moves_nothing(case: tuple[Snapshot, Policy]) -> None:
    snapshot, policy = case
    solution = optimize(snapshot, policy, time_limit_s=TIME_LIMIT_S)
    plan = build_plan(solution)
    note(f"snapshot={snapshot!r}\npolicy={policy!r}\nplan={plan!r}")
    violations = validate_plan(snapshot, policy, plan)
    assert not violations, "\n".join(map(str, violations))
    if plan.status is PlanStatus.INFEASIBLE:
        assert plan.conflicts and not plan.moves
        return
    dropped = any("no safe order" in b.detail for b in plan.blocked)
    capped = any(b.reason is BlockedReason.MOVE_BUDGET for b in plan.blocked)
    if dropped or capped:
        return  # a plan cut short (budget, or no safe order) leaves work for the next cycle
    end = end_state(snapshot, plan)
    again = build_plan(optimize(end, policy, time_limit_s=TIME_LIMIT_S))
    assert not again.moves, [(m.vm, m.source, m.target, m.reason_label) for m in again.moves]


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(clusters(), st.integers(0, 3))
def test_same_input_and_seed_same_plan(case: tuple[Snapshot, Policy], seed: int) -> None:
    snapshot, policy = case
    a = build_plan(optimize(snapshot, policy, time_limit_s=TIME_LIMIT_S, seed=seed))
    b = build_plan(optimize(snapshot, replace(policy), time_limit_s=TIME_LIMIT_S, seed=seed))
    assert a.moves == b.moves and a.blocked == b.blocked and a.status == b.status
