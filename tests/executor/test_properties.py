"""Property test: random clusters, plans, limits and faults. Whatever happens, the limits are
never exceeded, every move has exactly one final outcome, every VM runs on exactly one host and
the journal agrees with the hypervisors."""

from __future__ import annotations

import tempfile
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from balancer.executor import Executor, ExecutorConfig
from balancer.model import Snapshot
from balancer.plan import Move, MoveReason, Plan, PlanStatus
from balancer.sim.clock import ManualClock
from balancer.sim.cluster import SimulatedCluster
from balancer.storage import Store
from policies.model import Policy, Rule, RuleKind, Selector
from tests.executor.helpers import (
    ZERO,
    assert_journal_matches_cluster,
    assert_limits,
    assert_one_outcome_each,
    intervals,
    max_overlap,
)
from tests.factories import make_host, make_snapshot, make_vm

REASONS = [MoveReason.BALANCE, MoveReason.MAINTENANCE, MoveReason.RULE, MoveReason.MANUAL]


@st.composite
def scenarios(draw: st.DrawFn) -> tuple[Snapshot, Plan, Policy, ExecutorConfig, dict[str, str]]:
    n_hosts = draw(st.integers(2, 5))
    hosts = [
        make_host(
            f"h{i}",
            memory_mib=draw(st.sampled_from([12288, 32768, 131072])),
            cpu_features=draw(st.sampled_from([{"sse4_2"}, {"sse4_2", "avx", "avx2"}])),
        )
        for i in range(n_hosts)
    ]
    n_vms = draw(st.integers(1, 9))
    vms = []
    used = dict.fromkeys(range(n_hosts), 0)
    for i in range(n_vms):
        mem = draw(st.sampled_from([1024, 2048, 4096]))
        h = draw(st.integers(0, n_hosts - 1))
        if used[h] + mem > hosts[h].memory_mib:
            continue
        used[h] += mem
        vms.append(
            make_vm(
                f"v{i}",
                f"h{h}",
                memory_mib=mem,
                cpu_features=draw(st.sampled_from([(), ("avx2",)])),
                dirty_rate_mib_s=draw(st.sampled_from([0.0, 20.0, 200.0])),
            )
        )
    snap = make_snapshot(hosts, vms)
    where = snap.placement()
    moves = []
    for _ in range(draw(st.integers(0, 12))):
        if not vms:
            break
        vm = draw(st.sampled_from(vms)).name
        target = f"h{draw(st.integers(0, n_hosts - 1))}"
        stale = draw(st.integers(0, 9)) == 0
        source = f"h{draw(st.integers(0, n_hosts - 1))}" if stale else where[vm]
        if target == source:
            continue
        step = draw(st.integers(0, 2))
        moves.append(
            Move(
                vm=vm,
                source=source,
                target=target,
                step=step,
                reason=draw(st.sampled_from(REASONS)),
            )
        )
        where[vm] = target
    moves.sort(key=lambda m: m.step)
    group = draw(st.sets(st.sampled_from([v.name for v in vms]), max_size=3)) if vms else set()
    policy = Policy(
        rules=(
            Rule(name="spread", kind=RuleKind.ANTI_AFFINITY, vms=Selector(names=frozenset(group))),
        )
    )
    cfg = ExecutorConfig(
        concurrent_per_host=draw(st.integers(1, 3)),
        concurrent_total=draw(st.integers(1, 4)),
        stall_timeout_s=5.0,
        time_limit_s=draw(st.sampled_from([4.0, 60.0])),
        poll_interval_s=0.5,
        progress_every_s=2.0,
    )
    faults = {v.name: draw(st.sampled_from(["none", "none", "fail", "stall"])) for v in vms}
    plan = Plan(status=PlanStatus.MOVES, moves=tuple(moves), blocked=(), before=ZERO, after=ZERO)
    return snap, plan, policy, cfg, faults


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(scenarios(), st.booleans())
def test_limits_outcomes_and_placement_hold_for_any_plan(
    case: tuple[Snapshot, Plan, Policy, ExecutorConfig, dict[str, str]], retry: bool
) -> None:
    snap, plan, policy, cfg, faults = case
    clock = ManualClock()
    sim = SimulatedCluster(snap, clock=clock)
    for vm, fault in faults.items():
        if fault == "fail":
            sim.inject_failure(vm, at_fraction=0.5)
        elif fault == "stall":
            sim.inject_stall(vm, at_fraction=0.2)
    with tempfile.TemporaryDirectory() as tmp:
        store = Store.open(f"sqlite:///{Path(tmp) / 'b.db'}")
        try:
            ex = Executor(sim, store, clock=clock, config=cfg, policy=policy)
            sub = ex.submit_plan(plan, allow_retry=retry, plan_snapshot=snap)
            assert sub.superseded is None
            assert ex.run(timeout_s=24 * 3600)
            assert len(sub.request_ids) == len(plan.moves)
            assert_limits(
                store, [h.name for h in snap.hosts], cfg.concurrent_per_host, cfg.concurrent_total
            )
            assert_one_outcome_each(store)
            assert_journal_matches_cluster(store, snap, sim)
            group = policy.rules[0].vms.names
            assert max_overlap([iv for iv in intervals(store) if iv.vm in group]) <= 1
            # steps keep their order
            rows = {r.id: r for r in store.requests()}
            ivs = intervals(store)
            for a in ivs:
                for b in ivs:
                    if rows[a.request_id].step < rows[b.request_id].step:  # type: ignore[operator]
                        assert a.end <= b.start
        finally:
            store.close()
