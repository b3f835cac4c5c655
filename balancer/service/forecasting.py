"""The forecast source of the balance cycle: the demand history (:mod:`collectors.history`)
and the forecaster (:mod:`balancer.forecast`) give the outlook the cycle plans against
(:mod:`balancer.predictive`).

The forecaster's model (:func:`balancer.forecast.fit`: per-VM blend weights and error
quantiles) costs several CPU seconds at 8,000 VMs; it is refitted at most every
:data:`REFIT_S` (and when VMs it does not know appear, or the horizon grows), in a background
thread in the service, and applied at every cycle
(:meth:`~balancer.forecast.ForecastModel.forecast`, well inside a CPU second).

The service records every collected snapshot into the history and, when the policy's
``predictive`` section is on, forecasts every VM's demand at each balance cycle. The
simulation's decider does exactly the same with a memory-only history, so what is backtested is
what is deployed.
"""

from __future__ import annotations

import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import replace
from datetime import datetime, timedelta

import numpy as np

from balancer.forecast import ForecastModel, ForecastParams, fit
from balancer.model import Snapshot
from balancer.predictive import Outlook, horizon_steps, outlook
from collectors.history import DemandHistory, grid_end
from policies.model import Predictive

#: the forecaster's model is refitted at most this often (the weights change slowly)
REFIT_S = 3600.0


#: the fit's backtest looks at about this many (VM, origin) pairs: 8,000 VMs keep the default
#: spacing of origins (every 49 steps, ``docs/benchmarks/forecast.md``); a small cluster is
#: backtested at closer origins (a few VMs at every step), which a short history needs
FIT_PAIRS = 60_000


def fit_params(vms: int, steps: int) -> ForecastParams:
    """The forecaster's parameters for ``vms`` VMs with ``steps`` history steps."""
    default = ForecastParams()
    stride = -(-min(steps, round(default.fit_days * 288)) * max(vms, 1) // FIT_PAIRS)
    return replace(default, fit_stride_steps=max(1, min(default.fit_stride_steps, stride)))


def bucket_end(now: datetime, step_s: float) -> datetime:
    """The end of the last whole history bucket at ``now`` (the history's grid, one bucket
    before :func:`collectors.history.grid_end`, which includes the current partial one)."""
    return grid_end(now, step_s) - timedelta(seconds=step_s)


class ForecastSource:
    """Records the cluster's demand and forecasts it (see the module docstring)."""

    def __init__(
        self, history: DemandHistory, *, flush_every_s: float = 0.0, background: bool = False
    ) -> None:
        self.history = history
        #: refit the model in a background thread (the service; the simulation refits in line,
        #: so that a backtest is deterministic)
        self.background = background
        self._pool: ThreadPoolExecutor | None = None
        self._refit: Future[ForecastModel] | None = None
        #: write the history to its database at most this often (0: the caller flushes)
        self.flush_every_s = flush_every_s
        self._flushed: datetime | None = None
        #: the outlook of the last forecast (None before the first, or when predictive is off)
        self.last: Outlook | None = None
        #: CPU seconds the last forecast took (history read plus model)
        self.last_cpu_s = 0.0
        self._model: ForecastModel | None = None
        self._fitted: datetime | None = None

    def record(self, snapshot: Snapshot, now: datetime) -> None:
        """Add a collected snapshot to the history; write the history out when it is due
        (a crash loses at most ``flush_every_s`` of history, never the stored part)."""
        self.history.record(snapshot, now)
        if self.flush_every_s <= 0:
            return
        if self._flushed is None:
            self._flushed = now
        elif (now - self._flushed).total_seconds() >= self.flush_every_s:
            self._flushed = now
            self.history.flush()

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
        self.history.close()

    def _fit(self, names: tuple[str, ...], horizon: int, end: datetime) -> ForecastModel:
        step_s = self.history.settings.fine_step_s
        steps = int(self.history.settings.fine_keep_days * 86400 // step_s)
        series = self.history.series("vm", names, end=end, steps=steps)
        return fit(series, horizon_steps=horizon, params=fit_params(len(names), steps))

    def _model_for(self, names: tuple[str, ...], horizon: int, now: datetime) -> ForecastModel:
        """The model to apply now. The first one is fitted at once; a refit (due every
        :data:`REFIT_S`, or for VMs the model does not know, or a longer horizon) runs in the
        background when ``background`` is set, and the current model serves until it is done
        (VMs it does not know plan on their present demand meanwhile)."""
        end = bucket_end(now, self.history.settings.fine_step_s)
        done = self._refit
        if done is not None and done.done():
            self._refit = None
            self._model, self._fitted = done.result(), now
        model = self._model
        due = (
            model is None
            or self._fitted is None
            or not set(names) <= set(model.names)
            or model.horizon_steps < horizon
            or (now - self._fitted).total_seconds() >= REFIT_S
        )
        if model is None or model.horizon_steps < horizon or (due and not self.background):
            self._model, self._fitted = self._fit(names, horizon, end), now
            return self._model
        if due and self._refit is None:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="forecast-fit")
            self._refit = self._pool.submit(self._fit, names, horizon, end)
        return model

    def outlook(self, snapshot: Snapshot, predictive: Predictive, now: datetime) -> Outlook | None:
        """The outlook of ``snapshot`` (its VMs' demand is the present), or None when the
        policy's predictive section is off."""
        if not predictive.enabled:
            self.last = None
            return None
        t0 = time.process_time()
        step_s = self.history.settings.fine_step_s
        names = tuple(v.name for v in snapshot.vms)
        h = horizon_steps(predictive, step_s)
        model = self._model_for(names, h, now)
        steps = int(self.history.settings.fine_keep_days * 86400 // step_s)
        series = self.history.series("vm", model.names, end=bucket_end(now, step_s), steps=steps)
        cores = {v.name: v.cpu_used_cores for v in snapshot.vms}
        present = np.array([cores.get(n, 0.0) for n in model.names], dtype=np.float32)
        fc = model.forecast(series, horizon_steps=h, quantile=predictive.quantile, present=present)
        view = outlook(snapshot, fc, predictive)
        self.last_cpu_s = time.process_time() - t0
        self.last = view
        return view
