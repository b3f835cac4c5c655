"""Rolling-origin backtest of a forecaster on a demand matrix (pure numpy).

For a (n, T) matrix of demand (cores; NaN = no sample), origins ``o`` (column indices: the
forecast sees columns ``< o``) and horizons ``h`` (in steps), every forecaster is asked once per
origin for ``max(horizons)`` steps, and each horizon is scored **point-wise over its window**:
every actual value ``x[i, o + k]`` with ``0 <= k < h`` (and ``o + k < T``, not NaN) against the
forecast's column ``k``:

* ``mae``: the mean of ``|x - mean|`` over those points (cores), over all VMs and origins;
* ``wape``: ``sum |x - mean| / sum |x|`` (the MAE relative to the mean demand; 0.25 = an error
  of a quarter of the demand);
* ``coverage``: the share of those points with ``x <= upper`` (the target is the quantile).

So the 4 h figure includes the first 30 minutes: it is the error of what a planner looking
4 h ahead uses. The baselines (:func:`persistence`, :func:`seasonal_naive`) are the forecasts
the model is measured against; each has its own natural upper quantile (see each).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import numpy as np
import numpy.typing as npt

from balancer.errors import InputError
from balancer.forecast.model import (
    DAY_S,
    WEEK_S,
    ForecastModel,
    ForecastParams,
    Series,
    _level,
    _period_steps,
)

F32 = npt.NDArray[np.float32]
#: a forecaster: the history up to the origin and a horizon in steps -> (mean, upper), (n, H)
Forecaster = Callable[[Series, int], tuple[F32, F32]]
#: where a backtest's series start when the data carries no time (only lags matter)
EPOCH = datetime(2000, 1, 3, tzinfo=UTC)  # a Monday


@dataclass(frozen=True, slots=True, kw_only=True)
class HorizonScore:
    horizon_steps: int
    mae: float
    wape: float
    coverage: float
    points: int


def series_of(
    names: Sequence[str], values: F32, *, step_s: float = 300.0, start: datetime = EPOCH
) -> Series:
    """A :class:`Series` of a whole matrix whose first column starts at ``start``."""
    end = start + timedelta(seconds=values.shape[1] * step_s)
    return Series(names=tuple(names), values=values, end=end, step_s=step_s)


def backtest(
    series: Series,
    forecaster: Forecaster,
    *,
    origins: Sequence[int],
    horizons: Sequence[int],
) -> tuple[HorizonScore, ...]:
    """Score ``forecaster`` at each origin (column index) for each horizon (see the module
    docstring); horizons in ascending order of the result."""
    hs = sorted(set(int(h) for h in horizons))
    if not hs or hs[0] < 1:
        raise InputError("horizons must be at least one step", subject="horizons")
    t = series.steps
    if not origins or min(origins) < 1 or max(origins) >= t:
        raise InputError(f"origins must lie in 1..{t - 1}", subject="origins")
    hmax = hs[-1]
    abs_err = {h: 0.0 for h in hs}
    abs_act = {h: 0.0 for h in hs}
    covered = {h: 0 for h in hs}
    points = {h: 0 for h in hs}
    for o in origins:
        mean, upper = forecaster(series.head(o), hmax)
        actual = series.values[:, o : o + hmax]
        k = actual.shape[1]
        for h in hs:
            a = actual[:, : min(h, k)]
            ok = ~np.isnan(a)
            m = mean[:, : a.shape[1]]
            u = upper[:, : a.shape[1]]
            abs_err[h] += float(np.abs(a - m)[ok].sum(dtype=np.float64))
            abs_act[h] += float(np.abs(a)[ok].sum(dtype=np.float64))
            covered[h] += int((a <= u + 1e-6)[ok].sum())
            points[h] += int(ok.sum())
    return tuple(
        HorizonScore(
            horizon_steps=h,
            mae=abs_err[h] / points[h] if points[h] else float("nan"),
            wape=abs_err[h] / abs_act[h] if abs_act[h] > 0 else float("nan"),
            coverage=covered[h] / points[h] if points[h] else float("nan"),
            points=points[h],
        )
        for h in hs
    )


def _quantile_rows(block: F32, q: float) -> F32:
    """Per row of a (n, k) block the q-quantile of its non-NaN values (NaN if none)."""
    if block.shape[1] == 0:
        return np.full(block.shape[0], np.nan, dtype=np.float32)
    with np.errstate(all="ignore"):
        ok = ~np.isnan(block).all(axis=1)
        out = np.full(block.shape[0], np.nan, dtype=np.float32)
        if ok.any():
            out[ok] = np.nanquantile(block[ok], q, axis=1)
    return out


def _last(values: F32) -> F32:
    from balancer.forecast.model import _last_value

    return _last_value(values)


def persistence(quantile: float = 0.9, params: ForecastParams | None = None) -> Forecaster:
    """Reactive persistence: the EWM of the last hour (half-life 10 min, as the collectors
    compute it) held flat; upper: the ``quantile`` of the last hour's samples (at least the
    mean)."""
    p = params or ForecastParams()

    def run(history: Series, horizon_steps: int) -> tuple[F32, F32]:
        v = history.values
        t = v.shape[1]
        lvl = _level(v, np.asarray([t]), history.step_s, p)[:, 0]
        lvl = np.where(np.isnan(lvl), _last(v), lvl)
        m = max(1, round(p.level_window_s / history.step_s))
        q = _quantile_rows(v[:, max(0, t - m) :], quantile)
        up = np.maximum(np.where(np.isnan(q), lvl, q), lvl)
        return _flat(lvl, horizon_steps), _flat(up, horizon_steps)

    return run


def seasonal_naive(
    period_s: float = DAY_S, *, quantile: float = 0.9, spread_periods: int = 7
) -> Forecaster:
    """Seasonal naive: the value one period (a day, or a week) earlier; upper: the
    ``quantile`` of the same time over the last ``spread_periods`` periods (at least the
    mean). Without a sample one period back: the last value."""

    def run(history: Series, horizon_steps: int) -> tuple[F32, F32]:
        v = history.values
        t = v.shape[1]
        per = _period_steps(period_s, history.step_s)
        cols = t + np.arange(horizon_steps)
        last = _last(v)
        lag1 = cols - per
        mean = np.where((lag1 >= 0)[None, :], v[:, np.maximum(lag1, 0)], np.nan)
        mean = np.where(np.isnan(mean), last[:, None], mean)
        lags = cols[:, None] - per * np.arange(1, spread_periods + 1)[None, :]
        ok = (lags >= 0)[None]
        got = np.where(ok, v[:, np.maximum(lags, 0)], np.nan)  # (n, H, K)
        with np.errstate(all="ignore"), warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # an all-NaN slice: NaN, handled
            q = np.nanquantile(got, quantile, axis=2) if got.size else got[..., 0]
        up = np.maximum(np.where(np.isnan(q), mean, q), mean)
        return mean.astype(np.float32), up.astype(np.float32)

    return run


def weekly_naive(quantile: float = 0.9) -> Forecaster:
    """Seasonal naive over a week (the same time one week earlier); upper over two weeks."""
    return seasonal_naive(WEEK_S, quantile=quantile, spread_periods=2)


def fitted(model: ForecastModel, quantile: float = 0.9) -> Forecaster:
    """The model (fitted once, e.g. on the training days) applied at each origin."""

    def run(history: Series, horizon_steps: int) -> tuple[F32, F32]:
        fc = model.forecast(history, horizon_steps=horizon_steps, quantile=quantile)
        return fc.mean, fc.upper

    return run


def _flat(x: F32, horizon_steps: int) -> F32:
    out: F32 = np.repeat(x.astype(np.float32)[:, None], horizon_steps, axis=1)
    return out
