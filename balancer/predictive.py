"""Predictive balancing (pure): plan against the demand expected over a horizon, check the
steps against the present.

Words:

* **outlook**: what the balance cycle plans against when the policy's ``predictive`` section is
  on. Each VM's *planning demand* is ``(1 - weight) x present + weight x peak``, where
  ``present`` is the reactive demand (the collectors' ``max(EWM, p95)``) and ``peak`` the
  highest point of the forecast's upper quantile (policy ``predictive.quantile``) from the end
  of the current step (a migration decided now lands during it) to
  ``predictive.horizon_minutes``. A VM whose history is too short for a forecast plans on its
  present demand. So a VM whose daily peak is 30 minutes ahead already counts with it (the
  balancer moves before the peak), and a spike the forecast says is ending no longer counts
  (the balancer does not move for it).
* **host outlook**: per host, the present CPU demand and the expected peak over the horizon (the
  sum of its VMs' upper-quantile curves plus the host's overhead, at its highest point) and when
  it comes. Shown by the API (assistant, hosts) and the dashboard.

:func:`predictive_plan` runs the optimizer and the planner on the planning demand, then checks
the plan's steps against the *present* demand with the independent validator
(:func:`balancer.optimizer.validate.validate_plan`): the plan is cut before the first step that
would overload a target now (those moves wait for a later cycle), so a forecast never makes a
migration unsafe today. Balance moves of such a plan carry the reason ``forecast`` with the
source host's expected peak and its time (``forecast:h03 14.2 cores (89%) at 08:05Z``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta

import numpy as np

from balancer.forecast import Forecast
from balancer.model import Snapshot
from balancer.optimizer.validate import validate_plan
from balancer.plan import Move, MoveReason, Plan
from balancer.planner import make_plan
from policies.model import Policy, Predictive


@dataclass(frozen=True, slots=True, kw_only=True)
class HostOutlook:
    host: str
    cpu_cores: int
    #: CPU demand now (VMs' present demand plus the host's overhead)
    present_cores: float
    #: the highest expected CPU demand within the horizon (upper quantile) and when it comes
    peak_cores: float
    peak_at: datetime

    @property
    def peak_load(self) -> float:
        return self.peak_cores / self.cpu_cores if self.cpu_cores else 0.0

    @property
    def present_load(self) -> float:
        return self.present_cores / self.cpu_cores if self.cpu_cores else 0.0


@dataclass(frozen=True, slots=True, kw_only=True)
class Outlook:
    at: datetime
    horizon_minutes: int
    quantile: float
    weight: float
    #: planning demand per VM (cores)
    demand: Mapping[str, float]
    #: per VM, when its forecast peaks within the horizon (absent: no forecast, present used)
    peak_at: Mapping[str, datetime]
    hosts: tuple[HostOutlook, ...]
    #: the forecast's step (seconds) and each VM's host when the outlook was made
    step_s: float = 300.0
    on_host: Mapping[str, str] = field(default_factory=dict, compare=False, repr=False)
    #: VMs planned on their present demand (history too short, or not in the forecast)
    fallback: tuple[str, ...] = ()
    #: the expected CPU demand per step of the horizon (upper quantile; a fallback VM's present
    #: demand held), per VM and per host (its VMs' sum plus its overhead)
    vm_curves: Mapping[str, np.ndarray] = field(default_factory=dict, compare=False, repr=False)
    host_curves: Mapping[str, np.ndarray] = field(default_factory=dict, compare=False, repr=False)

    def host(self, name: str) -> HostOutlook | None:
        return next((h for h in self.hosts if h.host == name), None)

    def peak_with(self, host: str, vm: str) -> tuple[float, datetime] | None:
        """The highest expected CPU demand of ``host`` with ``vm`` added (its curve on the
        host's, step by step, from the end of the current step) and when it comes; None when
        either has no curve. For the VM's current host, its own peak."""
        hc, vc = self.host_curves.get(host), self.vm_curves.get(vm)
        h = self.host(host)
        if hc is None or vc is None or h is None or not len(hc):
            return None
        curve = hc if self.on_host.get(vm) == host else hc + vc
        lead = 1 if len(curve) > 1 else 0
        k = lead + int(np.argmax(curve[lead:]))
        return float(curve[k]), self.at + timedelta(seconds=k * self.step_s)


def horizon_steps(predictive: Predictive, step_s: float) -> int:
    return max(1, math.ceil(predictive.horizon_minutes * 60 / step_s))


def outlook(snapshot: Snapshot, forecast: Forecast, predictive: Predictive) -> Outlook:
    """The planning demand and host outlook of ``snapshot`` (see the module docstring)."""
    steps = min(horizon_steps(predictive, forecast.step_s), int(forecast.upper.shape[1]))
    lead = 1 if steps > 1 else 0  # the current step: a move decided now lands during it
    index = {n: i for i, n in enumerate(forecast.names)}
    w = min(max(predictive.weight, 0.0), 1.0)
    demand: dict[str, float] = {}
    peak_at: dict[str, datetime] = {}
    fallback: list[str] = []
    curves: dict[str, np.ndarray] = {
        h.name: np.full(steps, h.overhead_cpu_cores, dtype=np.float64) for h in snapshot.hosts
    }
    present_by_host = {h.name: h.overhead_cpu_cores for h in snapshot.hosts}
    vm_curves: dict[str, np.ndarray] = {}
    for v in snapshot.vms:
        present = v.cpu_used_cores
        present_by_host[v.host] = present_by_host.get(v.host, 0.0) + present
        i = index.get(v.name)
        if i is None or bool(forecast.fallback[i]) or steps == 0:
            demand[v.name] = present
            fallback.append(v.name)
            vm_curves[v.name] = np.full(steps, present, dtype=np.float64)
            if v.host in curves:
                curves[v.host] += present
            continue
        upper = np.nan_to_num(forecast.upper[i, :steps].astype(np.float64), nan=present)
        k = lead + int(np.argmax(upper[lead:]))
        peak = float(upper[k])
        demand[v.name] = round(min(max((1 - w) * present + w * peak, 0.0), float(v.vcpus)), 4)
        peak_at[v.name] = forecast.start + timedelta(seconds=k * forecast.step_s)
        vm_curves[v.name] = upper
        if v.host in curves:
            curves[v.host] += upper
    hosts = []
    for h in snapshot.hosts:
        curve = curves[h.name]
        k = lead + int(np.argmax(curve[lead:])) if len(curve) else 0
        hosts.append(
            HostOutlook(
                host=h.name,
                cpu_cores=h.cpu_cores,
                present_cores=round(present_by_host.get(h.name, 0.0), 4),
                peak_cores=round(float(curve[k]) if len(curve) else 0.0, 4),
                peak_at=forecast.start + timedelta(seconds=k * forecast.step_s),
            )
        )
    return Outlook(
        at=forecast.start,
        horizon_minutes=predictive.horizon_minutes,
        quantile=forecast.quantile,
        weight=w,
        demand=demand,
        peak_at=peak_at,
        hosts=tuple(hosts),
        step_s=forecast.step_s,
        on_host={v.name: v.host for v in snapshot.vms},
        fallback=tuple(fallback),
        vm_curves=vm_curves,
        host_curves=curves,
    )


def planning_snapshot(snapshot: Snapshot, view: Outlook) -> Snapshot:
    """``snapshot`` with each VM's CPU demand replaced by its planning demand."""
    return snapshot.with_vms(
        replace(v, cpu_used_cores=view.demand.get(v.name, v.cpu_used_cores)) for v in snapshot.vms
    )


def forecast_label(view: Outlook, host: str) -> str:
    """``h03 14.2 cores (89%) at 08:05Z``: a host's expected peak, for a move's reason."""
    h = view.host(host)
    if h is None:
        return host
    return f"{host} {h.peak_cores:.1f} cores ({h.peak_load:.0%}) at {h.peak_at:%H:%MZ}"


def safe_prefix(present: Snapshot, policy: Policy, plan: Plan) -> Plan:
    """The plan cut before its first step that is not safe on the ``present`` demand."""
    bad = [v.step for v in validate_plan(present, policy, plan) if v.step >= 0]
    if not bad:
        return plan
    first = min(bad)
    return replace(plan, moves=tuple(m for m in plan.moves if m.step < first))


def _relabel(m: Move, view: Outlook) -> Move:
    if m.reason is not MoveReason.BALANCE:
        return m
    return replace(m, reason=MoveReason.FORECAST, rule=forecast_label(view, m.source))


def predictive_plan(
    snapshot: Snapshot,
    policy: Policy,
    view: Outlook | None,
    *,
    held: frozenset[str] = frozenset(),
    time_limit_s: float = 10.0,
    seed: int = 0,
) -> Plan:
    """The balance cycle's plan: reactive without an outlook, else planned on the outlook and
    cut to the steps that are safe now (see the module docstring)."""
    if view is None or not policy.predictive.enabled:
        return make_plan(snapshot, policy, held=held, time_limit_s=time_limit_s, seed=seed)
    plan = make_plan(
        planning_snapshot(snapshot, view),
        policy,
        held=held,
        time_limit_s=time_limit_s,
        seed=seed,
    )
    plan = safe_prefix(snapshot, policy, plan)
    return replace(plan, moves=tuple(_relabel(m, view) for m in plan.moves))
