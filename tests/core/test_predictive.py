"""Predictive planning (balancer.predictive): plan on the forecast, check on the present."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import numpy as np
import pytest

from balancer.forecast import Forecast
from balancer.model import Snapshot
from balancer.optimizer.validate import validate_plan
from balancer.plan import MoveReason, parse_reason_label
from balancer.planner import make_plan
from balancer.predictive import outlook, planning_snapshot, predictive_plan
from policies.model import Policy, Predictive
from tests.factories import make_host, make_snapshot, make_vm

NOW = datetime(2026, 3, 2, 7, 30, tzinfo=UTC)
STEP_S = 300.0
H = 12  # one hour of five-minute steps
POLICY = Policy(threshold=3, predictive=Predictive(horizon_minutes=60, quantile=0.9, weight=1.0))


def fc(
    snap: Snapshot, curves: dict[str, list[float]], *, fallback: tuple[str, ...] = ()
) -> Forecast:
    """A forecast whose upper quantile is ``curves[vm]`` (flat at the present demand for VMs
    not named), mean a little below it."""
    names = tuple(v.name for v in snap.vms)
    upper = np.array(
        [curves.get(v.name, [v.cpu_used_cores] * H) for v in snap.vms], dtype=np.float32
    )
    return Forecast(
        names=names,
        start=NOW,
        step_s=STEP_S,
        quantile=0.9,
        mean=upper * np.float32(0.9),
        upper=upper,
        fallback=np.array([n in fallback for n in names], dtype=np.bool_),
    )


def peak_at(k: int, *, low: float, high: float) -> list[float]:
    return [high if i >= k else low for i in range(H)]


def cluster() -> Snapshot:
    # two 8-core hosts; on h1 two VMs that peak together at 08:00 (k = 6)
    hosts = [make_host("h1", cpu_cores=8), make_host("h2", cpu_cores=8)]
    vms = [
        make_vm("a", "h1", vcpus=4, cpu_used_cores=0.2),
        make_vm("b", "h1", vcpus=4, cpu_used_cores=0.2),
        make_vm("c", "h2", vcpus=4, cpu_used_cores=0.4),
        make_vm("d", "h2", vcpus=4, cpu_used_cores=0.4),
    ]
    return make_snapshot(hosts, vms)


def test_a_peak_ahead_is_planned_for_now_and_the_move_says_forecast_with_peak_and_time() -> None:
    snap = cluster()
    view = outlook(
        snap,
        fc(snap, {"a": peak_at(6, low=0.2, high=3.8), "b": peak_at(6, low=0.2, high=3.8)}),
        POLICY.predictive,
    )
    h1 = view.host("h1")
    assert h1 is not None and h1.peak_at == NOW + timedelta(minutes=30)
    assert h1.peak_cores == 7.6 and h1.present_cores == 0.4
    # reactive: nothing to do (the cluster is idle)
    assert make_plan(snap, POLICY, time_limit_s=2.0).moves == ()
    plan = predictive_plan(snap, POLICY, view, time_limit_s=2.0)
    assert plan.moves, plan
    assert {m.vm for m in plan.moves} <= {"a", "b"}
    for m in plan.moves:
        assert m.reason is MoveReason.FORECAST and not m.reason.mandatory
        assert m.reason_label == "forecast:h1 7.6 cores (95%) at 08:00Z"
        assert parse_reason_label(m.reason_label) == (MoveReason.FORECAST, m.rule)
    assert validate_plan(snap, POLICY, plan) == ()


def test_a_spike_that_the_forecast_says_is_ending_is_not_moved_for() -> None:
    hosts = [make_host("h1", cpu_cores=8), make_host("h2", cpu_cores=8)]
    vms = [
        make_vm("a", "h1", vcpus=4, cpu_used_cores=3.9),
        make_vm("b", "h1", vcpus=4, cpu_used_cores=3.9),
        make_vm("c", "h2", vcpus=4, cpu_used_cores=0.4),
    ]
    snap = make_snapshot(hosts, vms)
    # the spike lasts through the current step, then the forecast says it is over
    ending = [3.9] + [0.3] * (H - 1)
    view = outlook(snap, fc(snap, {"a": ending, "b": ending}), POLICY.predictive)
    assert view.demand["a"] == 0.3
    assert make_plan(snap, POLICY, time_limit_s=2.0).moves  # reactive moves for the spike
    assert predictive_plan(snap, POLICY, view, time_limit_s=2.0).moves == ()


def test_steps_unsafe_on_the_present_demand_are_cut() -> None:
    hosts = [make_host("h1", cpu_cores=8), make_host("h2", cpu_cores=8)]
    vms = [
        make_vm("x", "h1", vcpus=8, cpu_used_cores=7.0),  # busy now, idle in the forecast
        make_vm("y", "h2", vcpus=8, cpu_used_cores=3.0),  # will peak
        make_vm("z", "h2", vcpus=4, cpu_used_cores=3.0),
    ]
    snap = make_snapshot(hosts, vms)
    view = outlook(snap, fc(snap, {"x": [0.5] * H, "y": [7.0] * H}), POLICY.predictive)
    forecast_only = make_plan(planning_snapshot(snap, view), POLICY, time_limit_s=2.0)
    assert forecast_only.moves  # on the forecast, h2 must be relieved onto the idle-to-be h1
    assert validate_plan(snap, POLICY, forecast_only)  # ... which overloads h1 today
    plan = predictive_plan(snap, POLICY, view, time_limit_s=2.0)
    assert plan.moves == ()
    assert validate_plan(snap, POLICY, plan) == ()


def test_vms_without_history_plan_on_their_present_demand() -> None:
    snap = cluster()
    view = outlook(snap, fc(snap, {"a": [4.0] * H}, fallback=("a",)), POLICY.predictive)
    assert view.demand["a"] == 0.2 and "a" in view.fallback and "a" not in view.peak_at


def test_weight_blends_present_and_peak() -> None:
    snap = cluster()
    half = Predictive(horizon_minutes=60, quantile=0.9, weight=0.5)
    view = outlook(snap, fc(snap, {"a": peak_at(6, low=0.2, high=3.8)}), half)
    assert view.demand["a"] == 2.0


def test_the_horizon_limits_the_peak_seen() -> None:
    snap = cluster()
    short = Predictive(horizon_minutes=15, quantile=0.9, weight=1.0)
    view = outlook(snap, fc(snap, {"a": peak_at(6, low=0.2, high=3.8)}), short)
    assert view.demand["a"] == 0.2  # the 08:00 peak is beyond 15 minutes


def test_a_hosts_peak_with_a_vm_adds_the_curves_step_by_step() -> None:
    snap = cluster()
    # c on h2 peaks at 07:45 (k = 3) and is low again from 07:50; a peaks at 08:00 (k = 6)
    c = [0.4, 0.4, 0.4, 3.0, 0.4] + [0.4] * (H - 5)
    view = outlook(snap, fc(snap, {"a": peak_at(6, low=0.2, high=3.8), "c": c}), POLICY.predictive)
    h2 = view.host("h2")
    assert h2 is not None and h2.peak_cores == 3.4 and h2.peak_at == NOW + timedelta(minutes=15)
    # a on h2: h2's 0.8 cores at 08:00 plus a's 3.8, not h2's 07:45 peak plus a's peak
    with_a = view.peak_with("h2", "a")
    assert with_a is not None
    assert with_a[0] == pytest.approx(4.6) and with_a[1] == NOW + timedelta(minutes=30)
    # on its own host a VM is already in the host's curve
    own = view.peak_with("h1", "a")
    assert own is not None and own[0] == pytest.approx(3.8 + 0.2)  # a and b (flat)
    assert view.peak_with("h2", "nope") is None and view.peak_with("h9", "a") is None
