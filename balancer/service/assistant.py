"""The migration assistant on the live cluster (``GET /api/v1/vms/{vm}/targets``).

Words: the *ranking* is :func:`balancer.optimizer.assist` on the service's current snapshot
(the last collect cycle with the administrative host states applied) under the policy in force:
hosts the VM could move to now, lowest resulting imbalance first, and every other host with the
verdict that rules it out (the optimizer's own host filters, so the assistant never offers a
host a plan could not use). With a predictive policy, each candidate also carries the *forecast
peak*: the host's expected CPU peak within the horizon of the last balance cycle plus the VM's
planning demand, so an operator sees that a host that is cool now will be hot at 08:00.
"""

from __future__ import annotations

from datetime import datetime

from balancer.model import Snapshot
from balancer.optimizer import assist
from balancer.optimizer.assist import Assistance, Candidate
from balancer.optimizer.placement import NewVM, place
from balancer.predictive import HostOutlook, Outlook
from balancer.service.views import (
    HostForecastView,
    PlacementView,
    RuledOutView,
    TargetsView,
    TargetView,
)
from policies.model import Policy


def host_forecast(h: HostOutlook, view: Outlook) -> HostForecastView:
    return HostForecastView(
        host=h.host,
        present_load=round(h.present_load, 4),
        peak_load=round(h.peak_load, 4),
        peak_cores=h.peak_cores,
        peak_at=h.peak_at,
        horizon_minutes=view.horizon_minutes,
        quantile=view.quantile,
    )


def _peak_with(view: Outlook | None, host: str, vm: str) -> tuple[float | None, datetime | None]:
    h = view.host(host) if view is not None else None
    peak = view.peak_with(host, vm) if view is not None else None
    if h is None or peak is None or not h.cpu_cores:
        return None, None
    return round(peak[0] / h.cpu_cores, 4), peak[1]


def _target(c: Candidate, peak: float | None = None, peak_at: datetime | None = None) -> TargetView:
    return TargetView(
        host=c.host,
        cpu_load=round(c.cpu_load, 4),
        memory_load=round(c.memory_load, 4),
        imbalance=round(c.imbalance, 6),
        soft_breaks=list(c.soft_breaks),
        soft_repairs=list(c.soft_repairs),
        forecast_peak_load=peak,
        forecast_peak_at=peak_at,
    )


def _ruled_out(result: Assistance) -> list[RuledOutView]:
    return [RuledOutView(host=r.host, reason=r.label, detail=r.detail) for r in result.ruled_out]


def targets(
    snapshot: Snapshot, policy: Policy, vm: str, view: Outlook | None, *, at: datetime
) -> TargetsView:
    """The ranking for ``vm`` (module docstring) on ``snapshot``, taken ``at``; ``view``: the
    last cycle's outlook or None. An unknown VM raises :class:`balancer.errors.InputError`."""
    result = assist(snapshot, policy, vm)
    planned = view.demand.get(vm) if view is not None else None
    current = view.host(result.current) if view is not None else None
    candidates = [_target(c, *_peak_with(view, c.host, vm)) for c in result.candidates]
    return TargetsView(
        vm=result.vm,
        current=result.current,
        at=at,
        imbalance=round(result.imbalance, 6),
        candidates=candidates,
        ruled_out=_ruled_out(result),
        blocked_reason=result.blocked.reason.value if result.blocked else None,
        blocked_detail=result.blocked.detail if result.blocked else None,
        current_forecast=host_forecast(current, view) if current and view else None,
        planned_cores=round(planned, 4) if planned is not None else None,
    )


def placement(snapshot: Snapshot, policy: Policy, new: NewVM) -> PlacementView:
    """The ranked hosts for ``new`` (:func:`balancer.optimizer.placement.place`)."""
    result = place(snapshot, policy, new)
    return PlacementView(
        vm=new.name,
        cpu_demand_cores=float(new.vcpus if new.cpu_demand_cores is None else new.cpu_demand_cores),
        candidates=[_target(c) for c in result.candidates],
        ruled_out=_ruled_out(result),
    )
