"""The benchmark scenario at its smallest size: a valid plan that empties the maintenance host
and keeps every anti-affinity group apart (the benchmark itself is not a timed test)."""

from __future__ import annotations

from balancer.optimizer import validate_plan
from balancer.planner import end_state, make_plan
from benchmarks.optimizer.run import class_bound
from benchmarks.optimizer.scenario import build_scenario


def test_smallest_benchmark_scenario_plans_validly() -> None:
    sc = build_scenario(8, 100, seed=1, threshold=4)
    assert sc.groups >= 2
    plan = make_plan(sc.snapshot, sc.policy, time_limit_s=2.0, seed=1)
    assert not validate_plan(sc.snapshot, sc.policy, plan)
    end = end_state(sc.snapshot, plan)
    assert not end.vms_on(sc.maintenance_host) or plan.blocked
    assert plan.after.imbalance < plan.before.imbalance
    assert plan.after.max_cpu_load >= class_bound(sc.snapshot) - 1e-9
