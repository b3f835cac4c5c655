"""Predictive balancing through the simulation's decider (the service's decision, with its
demand history fed by ``observe``): a daily peak is moved for before it comes, a reactive
policy moves only once it is there."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta

from balancer.model import Snapshot
from balancer.plan import MoveReason
from balancer.simulation.decide import ServiceDecider
from policies.model import Policy, Predictive
from tests.factories import make_host, make_snapshot, make_vm

DAY0 = datetime(2026, 3, 2, tzinfo=UTC)
STEP = timedelta(minutes=5)
REACTIVE = Policy(threshold=3, cooldown_minutes=0)
PREDICTIVE = replace(REACTIVE, predictive=Predictive(horizon_minutes=60, quantile=0.9, weight=1.0))


def peaking(at: datetime) -> bool:
    """The two peak VMs run from 08:00 to 09:00 every day."""
    return 8 <= at.hour < 9


def cluster(at: datetime) -> Snapshot:
    hot = 1.9 if peaking(at) else 0.1
    hosts = [make_host("h1", cpu_cores=4), make_host("h2", cpu_cores=4)]
    vms = [
        make_vm("p1", "h1", vcpus=2, memory_mib=1024, cpu_used_cores=hot),
        make_vm("p2", "h1", vcpus=2, memory_mib=1024, cpu_used_cores=hot),
        make_vm("q1", "h2", vcpus=2, memory_mib=1024, cpu_used_cores=0.3),
        make_vm("q2", "h2", vcpus=2, memory_mib=1024, cpu_used_cores=0.3),
    ]
    return make_snapshot(hosts, vms)


def learned(policy: Policy, days: int = 3) -> ServiceDecider:
    decider = ServiceDecider(policy, time_limit_s=1.0)
    t = DAY0
    while t < DAY0 + timedelta(days=days, hours=7, minutes=30):
        decider.observe(cluster(t), t)
        t += STEP
    return decider


def test_predictive_moves_before_the_daily_peak_and_reactive_only_during_it() -> None:
    before = DAY0 + timedelta(days=3, hours=7, minutes=30)
    during = DAY0 + timedelta(days=3, hours=8, minutes=10)

    predictive = learned(PREDICTIVE)
    early = predictive.decide(cluster(before), before, [])
    assert early.execute, "the forecast of the 08:00 peak should move a peak VM at 07:30"
    assert {m.vm for m in early.execute} <= {"p1", "p2"}
    for m in early.execute:
        assert m.reason is MoveReason.FORECAST
        assert m.rule is not None and m.rule.startswith("h1 ") and "at 08:" in m.rule

    reactive = learned(REACTIVE)
    assert reactive.forecasts is None  # a reactive policy keeps no history
    assert reactive.decide(cluster(before), before, []).execute == ()
    late = reactive.decide(cluster(during), during, [])
    assert late.execute and {m.vm for m in late.execute} <= {"p1", "p2"}
    assert all(m.reason is MoveReason.BALANCE for m in late.execute)


def test_with_less_than_a_day_of_history_predictive_plans_like_reactive() -> None:
    at = DAY0 + timedelta(hours=7, minutes=30)
    decider = ServiceDecider(PREDICTIVE, time_limit_s=1.0)
    t = DAY0
    while t < at:
        decider.observe(cluster(t), t)
        t += STEP
    decision = decider.decide(cluster(at), at, [])
    assert decision.execute == ()
    assert decider.forecasts is not None and decider.forecasts.last is not None
    assert set(decider.forecasts.last.fallback) == {"p1", "p2", "q1", "q2"}
