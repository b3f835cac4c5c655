"""The demand forecaster (pure numpy: values in, values out; time is an argument).

Model
-----
For a VM with history ``x`` on a regular grid (NaN = no sample) and an origin at the end of
the history, four components are computed, each vectorised over all VMs at once:

* ``L`` **level**: the exponentially weighted mean of the last ``level_window_s`` (default
  1 h, half-life ``level_halflife_s`` = 10 min: the collectors' reactive EWM), held flat;
* ``D(t)`` **daily profile**: the mean of ``x`` at the same time of day over the last
  ``daily_days`` days (seasonal naive, averaged);
* ``W(t)`` **weekly profile**: the mean of ``x`` at the same time of week over the last
  ``weekly_weeks`` weeks (only where such samples exist: with at least 7 days of history);
  where there is none, ``W = D``;
* ``M`` **long mean**: the mean of ``x`` over the last ``daily_days`` days.

The expected demand ``h`` steps ahead is the blend::

    mean(h) = M + a_b (L - M) + d_b (D(t+h) - M) + w_b (W(t+h) - M)      (clipped at 0)

whose weights ``a_b, d_b, w_b`` belong to the VM and to the horizon band ``b`` that holds
``h`` (bands of doubling length: 5 min, 10-15 min, 30 min, 35-60 min, 1-2 h, 2-4 h, 4-8 h,
8-24 h). :func:`fit` chooses them per VM and band from :func:`candidate_weights` (level weight
1, 0.9, 0.75, 0.5, 0.25, 0; the rest to the daily profile, the weekly one, both halves, or the
long mean) by the **least absolute error** on a rolling-origin backtest over the last
``fit_days`` of the history (origins every ``fit_stride_steps``). Candidates are tried from the
most reactive (the level held) down, and one replaces the current choice only if its error is
lower by more than ``margin`` (5 %): without clear evidence of a rhythm the forecast stays
reactive. So a VM whose load is an on/off batch job with no daily rhythm keeps the level; a VM
with a clean daily or weekly rhythm takes the profile where it is better. Least absolute error
and not least squares: the squared-error blend of an on/off VM sits between its two states,
where it never is (measured: 50 % worse MAE than persistence at 30 min on bitbrains).

The **upper quantile** is ``mean + e_q``, where ``e_q`` is the empirical quantile of the
VM's backtest errors (actual - mean) in the same band (in-sample, on the fitted weights),
stored at the levels :data:`QUANTILE_LEVELS` and interpolated between them; ``upper >= mean``.

**Fallback**: a VM with fewer than ``min_history_steps`` samples (default one day) gets
``present`` (or its last sample) for the whole horizon, ``upper = mean``, ``fallback = True``.

Why this model: see ``docs/benchmarks/forecast.md`` (accuracy against persistence, seasonal
naive and Holt-Winters on the bitbrains trace, and the cost for 8,000 VMs).

Cost: :func:`fit` gathers ``n * origins * S * (daily_days + weekly_weeks)`` values (``S``: at
most ``fit_steps_per_band`` steps per band) and scores ``n * origins * S * candidates`` points;
:meth:`ForecastModel.forecast` gathers only ``n * H * (daily_days + weekly_weeks)`` values.
Measured for 8,000 VMs x 4,032 points: forecast 0.3 CPU-s, fit 6.6 CPU-s (see the benchmark
document). Refresh the model rarely (hourly or daily); forecast every cycle.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from datetime import datetime, timedelta

import numpy as np
import numpy.typing as npt

from balancer.errors import InputError

F32 = npt.NDArray[np.float32]
F64 = npt.NDArray[np.float64]

#: quantile levels at which :func:`fit` stores each VM's error distribution
QUANTILE_LEVELS: tuple[float, ...] = (0.5, 0.6, 0.7, 0.75, 0.8, 0.85, 0.9, 0.95, 0.975, 0.99)
#: the first step of each horizon band (the last band ends at the model's horizon)
BAND_STARTS: tuple[int, ...] = (0, 1, 3, 6, 12, 24, 48, 96)
DAY_S = 86400.0
WEEK_S = 7 * DAY_S


@dataclass(frozen=True, slots=True, kw_only=True, eq=False)
class Series:
    """Demand history on a regular grid: ``values[i, j]`` = mean CPU demand (cores) of
    ``names[i]`` in the bucket ``j``; NaN = no sample. The last column is the most recent bucket,
    which ends at ``end`` (bucket ``j`` covers ``[end - (T - j) * step_s,
    end - (T - j - 1) * step_s)``)."""

    names: tuple[str, ...]
    values: F32  # (n, T)
    end: datetime  # UTC-aware
    step_s: float = 300.0

    def __post_init__(self) -> None:
        v = self.values
        if v.ndim != 2 or v.shape[0] != len(self.names):
            raise InputError(
                f"series values have shape {v.shape}, expected ({len(self.names)}, T)",
                subject="series",
            )
        if self.end.tzinfo is None:
            raise InputError("series end must be UTC-aware", subject="series")
        if not (math.isfinite(self.step_s) and self.step_s > 0):
            raise InputError(f"series step_s {self.step_s} must be > 0", subject="series")
        if np.isinf(v).any():
            raise InputError("series values must be finite or NaN", subject="series")

    @property
    def steps(self) -> int:
        return int(self.values.shape[1])

    def head(self, steps: int) -> Series:
        """The first ``steps`` columns (the history as it was ``T - steps`` steps earlier)."""
        end = self.end - timedelta(seconds=(self.steps - steps) * self.step_s)
        return Series(names=self.names, values=self.values[:, :steps], end=end, step_s=self.step_s)


@dataclass(frozen=True, slots=True, kw_only=True)
class Peak:
    """Per VM the highest forecast value over a horizon and the start of its step."""

    names: tuple[str, ...]
    value: F32  # (n,)
    step: npt.NDArray[np.intp]  # (n,) horizon column of the max (the first one on ties)
    start: datetime
    step_s: float

    def time(self, i: int) -> datetime:
        """When VM ``i``'s peak step starts."""
        return self.start + timedelta(seconds=int(self.step[i]) * self.step_s)


@dataclass(frozen=True, slots=True, kw_only=True, eq=False)
class Forecast:
    """Per VM the expected demand and its upper quantile; column ``h`` covers
    ``[start + h * step_s, start + (h + 1) * step_s)``."""

    names: tuple[str, ...]
    start: datetime  # == series.end
    step_s: float
    quantile: float
    mean: F32  # (n, H) expected demand (cores)
    upper: F32  # (n, H) the ``quantile`` upper quantile, >= mean
    fallback: npt.NDArray[np.bool_]  # (n,) True: history too short, mean = upper = present

    @property
    def horizon_steps(self) -> int:
        return int(self.mean.shape[1])

    def row(self, name: str) -> int:
        """Index of VM ``name`` (InputError if it has no forecast)."""
        try:
            return self.names.index(name)
        except ValueError:
            raise InputError(f"no forecast for VM {name!r}", subject=name) from None

    def peak(self, *, upper: bool = True, steps: int | None = None) -> Peak:
        """Per VM the max of ``upper`` (or of ``mean``) over the first ``steps`` columns
        (default: the whole horizon) and the step of that max."""
        h = self.horizon_steps if steps is None else steps
        if not 1 <= h <= self.horizon_steps:
            raise InputError(
                f"peak over {h} steps: the forecast has {self.horizon_steps}", subject="steps"
            )
        block = (self.upper if upper else self.mean)[:, :h]
        at = np.argmax(block, axis=1)
        value = block[np.arange(block.shape[0]), at].astype(np.float32)
        return Peak(names=self.names, value=value, step=at, start=self.start, step_s=self.step_s)

    def blended(self, weight: float) -> F32:
        """``mean + weight * (upper - mean)`` per VM and step (weight 0: the mean, 1: upper)."""
        out: F32 = (self.mean + np.float32(weight) * (self.upper - self.mean)).astype(np.float32)
        return out


@dataclass(frozen=True, slots=True, kw_only=True)
class ForecastParams:
    """Knobs of the model (see the module docstring); durations in seconds."""

    level_window_s: float = 3600.0
    level_halflife_s: float = 600.0
    daily_days: int = 7
    weekly_weeks: int = 2
    min_history_steps: int = 288
    fit_days: float = 13.0
    fit_stride_steps: int = 49
    fit_steps_per_band: int = 6
    margin: float = 0.05

    def __post_init__(self) -> None:
        checks = {
            "level_window_s": self.level_window_s > 0,
            "level_halflife_s": self.level_halflife_s > 0,
            "daily_days": self.daily_days >= 1,
            "weekly_weeks": self.weekly_weeks >= 0,
            "min_history_steps": self.min_history_steps >= 1,
            "fit_days": self.fit_days > 0,
            "fit_stride_steps": self.fit_stride_steps >= 1,
            "fit_steps_per_band": self.fit_steps_per_band >= 1,
            "margin": 0 <= self.margin < 1,
        }
        for name, ok in checks.items():
            if not ok:
                raise InputError(
                    f"forecast parameter {name}={getattr(self, name)} out of range", subject=name
                )


def _bands(horizon_steps: int) -> npt.NDArray[np.intp]:
    """Band index of each horizon step."""
    starts = np.asarray([s for s in BAND_STARTS if s < horizon_steps], dtype=np.intp)
    out: npt.NDArray[np.intp] = (
        np.searchsorted(starts, np.arange(horizon_steps), side="right") - 1
    ).astype(np.intp)
    return out


def _period_steps(period_s: float, step_s: float) -> int:
    return max(1, round(period_s / step_s))


@dataclass(frozen=True, slots=True, kw_only=True, eq=False)
class ForecastModel:
    """Fitted per-VM weights and error quantiles (see :func:`fit`)."""

    names: tuple[str, ...]
    step_s: float
    horizon_steps: int
    params: ForecastParams
    #: (n, bands, 3): the weights of L - M, D - M, W - M
    weights: F32
    #: (n, bands, len(QUANTILE_LEVELS)): the error quantiles, non-decreasing along the last axis
    error_quantiles: F32
    #: (n,) backtest points behind each VM's weights (0: the default, the level held)
    fitted_points: npt.NDArray[np.int64] = field(repr=False)

    def forecast(
        self,
        series: Series,
        *,
        horizon_steps: int | None = None,
        quantile: float = 0.9,
        present: F32 | None = None,
    ) -> Forecast:
        """The forecast from the end of ``series`` (same VMs in the same order as the fit)."""
        h_steps = self.horizon_steps if horizon_steps is None else horizon_steps
        _check_call(series, h_steps, quantile, present)
        if series.names != self.names:
            raise InputError(
                "the series' VMs differ from the model's (refit the model)", subject="series"
            )
        if h_steps > self.horizon_steps:
            raise InputError(
                f"horizon {h_steps} steps: the model was fitted for {self.horizon_steps}",
                subject="horizon_steps",
            )
        if not math.isclose(series.step_s, self.step_s):
            raise InputError(
                f"series step {series.step_s} s, model step {self.step_s} s", subject="series"
            )
        values = series.values
        t = values.shape[1]
        cols = t + np.arange(h_steps)
        comp = _components_at(values, np.asarray([t]), cols[None, :], series.step_s, self.params)
        lvl, daily, weekly, long = (c[:, 0] for c in comp)  # (n,), (n, H), (n, H), (n,)
        band = _bands(self.horizon_steps)[:h_steps]
        w = self.weights[:, band, :]  # (n, H, 3)
        mean = _blend(lvl[:, None], daily, weekly, long[:, None], w)
        err = _interp_quantile(self.error_quantiles, quantile)[:, band]  # (n, H)
        upper = mean + np.maximum(err, 0)
        last = _last_value(values)
        base = last if present is None else np.asarray(present, dtype=np.float32)
        base = np.where(np.isfinite(base), np.maximum(base, 0), 0).astype(np.float32)
        fallback = np.count_nonzero(~np.isnan(values), axis=1) < self.params.min_history_steps
        mean = np.where(fallback[:, None], base[:, None], mean)
        upper = np.where(fallback[:, None], base[:, None], upper)
        return Forecast(
            names=series.names,
            start=series.end,
            step_s=series.step_s,
            quantile=quantile,
            mean=mean.astype(np.float32),
            upper=np.maximum(upper, mean).astype(np.float32),
            fallback=fallback,
        )


def _check_call(series: Series, horizon_steps: int, quantile: float, present: F32 | None) -> None:
    per_day = _period_steps(DAY_S, series.step_s)
    if not 1 <= horizon_steps <= per_day:
        raise InputError(
            f"horizon {horizon_steps} steps: between 1 and one day ({per_day} steps)",
            subject="horizon_steps",
        )
    if not QUANTILE_LEVELS[0] <= quantile <= QUANTILE_LEVELS[-1]:
        raise InputError(
            f"quantile {quantile}: between {QUANTILE_LEVELS[0]} and {QUANTILE_LEVELS[-1]}",
            subject="quantile",
        )
    if present is not None and np.shape(present) != (len(series.names),):
        raise InputError(
            f"present has shape {np.shape(present)}, expected ({len(series.names)},)",
            subject="present",
        )


def _blend(lvl: F32, daily: F32, weekly: F32, long: F32, w: F32) -> F32:
    out = long + w[..., 0] * (lvl - long) + w[..., 1] * (daily - long) + w[..., 2] * (weekly - long)
    res: F32 = np.maximum(out, 0).astype(np.float32)
    return res


def _interp_quantile(table: F32, q: float) -> F32:
    """(n, bands) error quantile at level ``q`` (linear between the stored levels)."""
    levels = np.asarray(QUANTILE_LEVELS)
    k = int(np.clip(np.searchsorted(levels, q, side="right") - 1, 0, len(levels) - 2))
    frac = np.float32((q - levels[k]) / (levels[k + 1] - levels[k]))
    out: F32 = table[..., k] + frac * (table[..., k + 1] - table[..., k])
    return out


def _last_value(values: F32) -> F32:
    """Per row the last non-NaN value (0 for a row without any); only the rows whose last
    bucket is empty are searched."""
    n, t = values.shape
    if t == 0:
        return np.zeros(n, dtype=np.float32)
    out = values[:, -1].astype(np.float32)
    todo = np.flatnonzero(np.isnan(out))
    if todo.size:
        ok = ~np.isnan(values[todo])
        idx = t - 1 - np.argmax(ok[:, ::-1], axis=1)
        out[todo] = np.where(ok.any(axis=1), values[todo, idx], 0)
    return out


def _last_before(values: F32, origins: npt.NDArray[np.intp]) -> F32:
    """(n, M) the last non-NaN value before each origin (0 where there is none)."""
    ok = ~np.isnan(values)
    pos = np.where(ok, np.arange(values.shape[1], dtype=np.int32), -1)
    last = np.maximum.accumulate(pos, axis=1)[:, np.maximum(origins - 1, 0)]
    got = np.take_along_axis(values, np.maximum(last, 0), axis=1)
    res: F32 = np.where((last >= 0) & (origins[None, :] >= 1), got, 0).astype(np.float32)
    return res


def _nan_mean_gather(
    values: F32,
    idx: npt.NDArray[np.intp],
    limit: npt.NDArray[np.intp],
    columns: F32 | None = None,
) -> F32:
    """``nanmean(values[:, idx], axis=-1)`` counting only ``0 <= idx < limit`` (NaN if none).
    ``idx`` is (..., K); ``limit`` broadcasts against it. ``columns``, if given, is
    ``values.T`` made contiguous: gathering its rows copies whole runs of memory (the fit
    gathers many columns; the forecast few). One lag at a time: no (n, ..., K) temporary."""
    valid = (idx >= 0) & (idx < limit)
    safe = np.where(valid, idx, 0)
    total: F64 | None = None
    count: npt.NDArray[np.int64] | None = None
    for k in range(idx.shape[-1]):
        if columns is not None:
            got = np.moveaxis(columns[safe[..., k]], -1, 0)  # (n, ...)
        else:
            got = values[:, safe[..., k]]
        ok = valid[None, ..., k] & ~np.isnan(got)
        part = np.where(ok, got, 0).astype(np.float64)
        total = part if total is None else total + part
        count = ok.astype(np.int64) if count is None else count + ok
    if total is None or count is None:
        return np.full((values.shape[0], *idx.shape[:-1]), np.nan, dtype=np.float32)
    with np.errstate(invalid="ignore", divide="ignore"):
        out = total / count
    res: F32 = np.where(count > 0, out, np.nan).astype(np.float32)
    return res


def _level(values: F32, origins: npt.NDArray[np.intp], step_s: float, p: ForecastParams) -> F32:
    """(n, M) EWM of the ``level_window_s`` before each origin (NaN-aware, NaN if empty)."""
    m = max(1, round(p.level_window_s / step_s))
    ages = np.arange(m)[::-1]  # age in steps of columns o-m .. o-1 (age 0 = the last bucket)
    wts = np.exp2(-(ages * step_s) / p.level_halflife_s).astype(np.float32)
    idx = origins[:, None] - m + np.arange(m)[None, :]  # (M, m)
    valid = idx >= 0
    got = values[:, np.where(valid, idx, 0)]  # (n, M, m)
    ok = valid[None] & ~np.isnan(got)
    num = (np.where(ok, got, 0) * wts).sum(axis=-1, dtype=np.float64)
    den = (ok * wts).sum(axis=-1, dtype=np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        out = num / den
    res: F32 = np.where(den > 0, out, np.nan).astype(np.float32)
    return res


def _block_sums(values: F32, block: int) -> tuple[F64, F64]:
    """Prefix sums (n, B + 1) of the values and of the sample counts of the whole blocks of
    ``block`` columns from column 0 (row chunks: no full-size temporary)."""
    n, t = values.shape
    nb = t // block
    sums = np.zeros((n, nb + 1))
    counts = np.zeros((n, nb + 1))
    rows = max(1, 2**20 // max(1, t))
    for r in range(0, n, rows):
        x = values[r : r + rows, : nb * block].reshape(-1, nb, block)
        ok = ~np.isnan(x)
        sums[r : r + rows, 1:] = np.cumsum(np.where(ok, x, 0).sum(axis=2, dtype=np.float64), 1)
        counts[r : r + rows, 1:] = np.cumsum(ok.sum(axis=2), axis=1)
    return sums, counts


def _long_mean(values: F32, origins: npt.NDArray[np.intp], span: int, block: int) -> F32:
    """(n, M) mean of the whole ``block``-column blocks (from column 0) that lie in the
    ``span`` columns before each origin (NaN-aware; NaN without a sample)."""
    sums, counts = _block_sums(values, block)
    hi = origins // block  # blocks ending at or before the origin
    lo = np.maximum(-(-(origins - span) // block), 0)
    lo = np.minimum(lo, hi)
    total = sums[:, hi] - sums[:, lo]
    count = counts[:, hi] - counts[:, lo]
    with np.errstate(invalid="ignore", divide="ignore"):
        out = total / count
    res: F32 = np.where(count > 0, out, np.nan).astype(np.float32)
    return res


def _components_at(
    values: F32,
    origins: npt.NDArray[np.intp],
    cols: npt.NDArray[np.intp],
    step_s: float,
    p: ForecastParams,
    *,
    lvl: F32 | None = None,
    long: F32 | None = None,
    columns: F32 | None = None,
) -> tuple[F32, F32, F32, F32]:
    """Level (n, M), daily (n, M, H), weekly (n, M, H), long mean (n, M) for targets ``cols``
    (M, H) of each origin; only history before the origin is used. NaNs are filled: a missing
    long mean by the level, a missing level by the last value, missing profiles by the long
    mean (daily) and by the daily profile (weekly)."""
    per_day = _period_steps(DAY_S, step_s)
    per_week = _period_steps(WEEK_S, step_s)
    limit = origins[:, None, None]  # (M, 1, 1)
    d_lags = per_day * np.arange(1, p.daily_days + 1)
    daily = _nan_mean_gather(values, cols[..., None] - d_lags, limit, columns)
    if p.weekly_weeks:
        w_lags = per_week * np.arange(1, p.weekly_weeks + 1)
        weekly = _nan_mean_gather(values, cols[..., None] - w_lags, limit, columns)
    else:
        weekly = np.full_like(daily, np.nan)
    if lvl is None:
        lvl = _level(values, origins, step_s, p)
    if long is None:
        long = _long_mean(values, origins, p.daily_days * per_day, _block_steps(step_s))
    return _fill(values, origins, lvl, daily, weekly, long)


def _block_steps(step_s: float) -> int:
    return _period_steps(3600.0, step_s)


def _fill(
    values: F32, origins: npt.NDArray[np.intp], lvl: F32, daily: F32, weekly: F32, long: F32
) -> tuple[F32, F32, F32, F32]:
    rows = np.flatnonzero(np.isnan(lvl).any(axis=1))
    if rows.size:
        lvl = lvl.copy()
        lvl[rows] = np.where(np.isnan(lvl[rows]), _last_before(values[rows], origins), lvl[rows])
    long = np.where(np.isnan(long), lvl, long)
    daily = np.where(np.isnan(daily), long[..., None], daily)
    weekly = np.where(np.isnan(weekly), daily, weekly)
    return lvl, daily, weekly, long


def candidate_weights(weekly: bool) -> F32:
    """The (level, daily, weekly) weights :func:`fit` chooses from, the pure level first; the
    rest of each (1 - their sum) goes to the long mean."""
    out: list[tuple[float, float, float]] = [(1.0, 0.0, 0.0)]
    for a in (0.75, 0.5, 0.25, 0.0):
        rest = 1.0 - a
        splits = [(rest, 0.0)]
        if weekly:
            splits += [(0.0, rest), (rest / 2, rest / 2)]
        splits += [(0.0, 0.0)]
        out += [(a, d, w) for d, w in splits]
    return np.asarray(out, dtype=np.float32)


def _sampled_steps(band: npt.NDArray[np.intp], per_band: int) -> npt.NDArray[np.intp]:
    """At most ``per_band`` evenly spread horizon steps of each band (the fit's backtest)."""
    picked: list[int] = []
    for b in range(int(band.max()) + 1):
        steps = np.flatnonzero(band == b)
        take = np.unique(np.linspace(0, steps.size - 1, min(per_band, steps.size)).round())
        picked += [int(steps[int(i)]) for i in take]
    return np.asarray(picked, dtype=np.intp)


def fit(
    series: Series,
    *,
    horizon_steps: int,
    params: ForecastParams | None = None,
) -> ForecastModel:
    """Learn each VM's blend weights and error quantiles per horizon band from a rolling-origin
    backtest over the last ``params.fit_days`` of ``series`` (see the module docstring)."""
    p = params or ForecastParams()
    _check_call(series, horizon_steps, 0.9, None)
    values = series.values
    n, t = values.shape
    band = _bands(horizon_steps)
    bands = int(band.max()) + 1
    per_day = _period_steps(DAY_S, series.step_s)
    per_week = _period_steps(WEEK_S, series.step_s)
    first = max(1, t - round(p.fit_days * DAY_S / series.step_s))
    origins = np.arange(t - horizon_steps, first - 1, -p.fit_stride_steps)[::-1]
    origins = origins[origins >= 1].astype(np.intp)
    if origins.size == 0:
        return _level_model(series, horizon_steps, p, bands)
    lvl_all = _level(values, origins, series.step_s, p)
    long_all = _long_mean(values, origins, p.daily_days * per_day, _block_steps(series.step_s))
    # the backtest looks at a few evenly spread steps of each band (errors within a band are
    # alike); ``sb`` is the band of each looked-at step, ``cuts`` where each band's run begins
    steps = _sampled_steps(band, p.fit_steps_per_band)
    sb = band[steps]
    cuts = np.flatnonzero(np.r_[True, sb[1:] != sb[:-1]])
    chunk = max(1, int(2**21 // max(1, n * steps.size)))
    columns: F32 = np.ascontiguousarray(values.T)  # (T, n): rows gathered as whole runs
    parts = [np.arange(i, min(i + chunk, origins.size)) for i in range(0, origins.size, chunk)]

    # a VM is judged where it has weekly samples if it has any after a week: that is how it
    # will be forecast (after a week of history every target has them)
    # (it has a sample more than a week before the end; a VM whose history is shorter than a
    # week, padded with NaN at the front, is judged without: so it is forecast until then)
    weekly_vm = (
        np.count_nonzero(~np.isnan(values[:, : t - per_week]), axis=1) > 0
        if p.weekly_weeks and t > per_week
        else np.zeros(n, dtype=bool)
    )

    def part(k: npt.NDArray[np.intp]) -> tuple[F32, F32, F32, F32, F32]:
        o = origins[k]
        cols = o[:, None] + steps[None, :]
        y = np.moveaxis(columns[cols], -1, 0)
        if weekly_vm.any():
            lags = per_week * np.arange(1, p.weekly_weeks + 1)
            raw = _nan_mean_gather(values, cols[..., None] - lags, o[:, None, None], columns)
            y = np.where(np.isnan(raw) & weekly_vm[:, None, None], np.nan, y)
        lvl, daily, weekly, long = _components_at(
            values,
            o,
            cols,
            series.step_s,
            p,
            lvl=lvl_all[:, k],
            long=long_all[:, k],
            columns=columns,
        )
        return lvl, daily, weekly, long, y

    def per_band(x: npt.NDArray[np.floating]) -> F64:
        """(n, m, S) -> (n, bands): sums over origins and each band's steps."""
        out: F64 = np.add.reduceat(x.sum(axis=1, dtype=np.float64), cuts, axis=1)
        return out

    # each VM and band takes the candidate weights with the least absolute error over the
    # backtest; a candidate must beat the current choice by ``p.margin`` (relative) to replace
    # it, and candidates are tried from the most reactive (pure level) down
    cands = candidate_weights(p.weekly_weeks > 0 and t > per_week)
    sae = np.zeros((n, bands, cands.shape[0]))
    points = np.zeros((n, bands), dtype=np.int64)
    for k in parts:
        lvl, daily, weekly, long, y = part(k)
        ok = ~np.isnan(y)
        resid = np.where(ok, y - long[..., None], 0)  # the actual above the long mean
        dl = np.broadcast_to((lvl - long)[..., None], daily.shape)
        dd, dw = daily - long[..., None], weekly - long[..., None]
        floor = -long[..., None]  # the blend is clipped at 0: its excess never below -long
        for c, (wa, wd, ww) in enumerate(cands):
            excess = np.maximum(wa * dl + wd * dd + ww * dw, floor)
            sae[:, :, c] += per_band(np.abs(np.where(ok, resid - excess, 0)))
        points += per_band(ok).astype(np.int64)
    best = np.zeros((n, bands), dtype=np.intp)
    for c in range(1, cands.shape[0]):
        cur = np.take_along_axis(sae, best[..., None], axis=-1)[..., 0]
        better = sae[..., c] < cur * (1 - p.margin)
        best = np.where(better, c, best)
    w32 = cands[best].astype(np.float32)
    # the errors of the fitted blend, per band; quantiles along the pooled origins and steps
    errs: list[list[F32]] = [[] for _ in range(bands)]
    for k in parts:
        lvl, daily, weekly, long, y = part(k)
        mean = _blend(lvl[..., None], daily, weekly, long[..., None], w32[:, None, sb, :])
        e = y - mean  # NaN where no actual
        for b in range(bands):
            errs[b].append(e[:, :, sb == b].reshape(n, -1))
    levels = np.asarray(QUANTILE_LEVELS)
    table = np.zeros((n, bands, levels.size), dtype=np.float32)
    for b in range(bands):
        table[:, b] = _row_quantiles(np.concatenate(errs[b], axis=1), levels)
    return ForecastModel(
        names=series.names,
        step_s=series.step_s,
        horizon_steps=horizon_steps,
        params=p,
        weights=w32,
        error_quantiles=np.maximum.accumulate(table, axis=-1),
        fitted_points=points.sum(axis=1),
    )


def _row_quantiles(e: F32, levels: F64) -> F32:
    """(n, len(levels)) quantiles of each row's non-NaN values (linear; 0 for an empty row),
    by one sort of the block (NaN sorts last)."""
    srt = np.sort(e, axis=1)
    count = (~np.isnan(e)).sum(axis=1)
    pos = levels[None, :] * np.maximum(count - 1, 0)[:, None]
    lo = np.floor(pos).astype(np.intp)
    hi = np.minimum(lo + 1, np.maximum(count - 1, 0)[:, None])
    rows = np.arange(e.shape[0])[:, None]
    frac = (pos - lo).astype(np.float32)
    out = srt[rows, lo] + frac * (srt[rows, hi] - srt[rows, lo])
    res: F32 = np.where(count[:, None] > 0, out, 0).astype(np.float32)
    return res


def _level_model(
    series: Series, horizon_steps: int, p: ForecastParams, bands: int
) -> ForecastModel:
    """The model without a backtest (history shorter than the horizon): the level held."""
    n = len(series.names)
    return ForecastModel(
        names=series.names,
        step_s=series.step_s,
        horizon_steps=horizon_steps,
        params=p,
        weights=np.broadcast_to(candidate_weights(False)[0], (n, bands, 3)).astype(np.float32),
        error_quantiles=np.zeros((n, bands, len(QUANTILE_LEVELS)), dtype=np.float32),
        fitted_points=np.zeros(n, dtype=np.int64),
    )


def forecast(
    series: Series,
    *,
    horizon_steps: int,
    quantile: float = 0.9,
    present: F32 | None = None,
    params: ForecastParams | None = None,
    model: ForecastModel | None = None,
) -> Forecast:
    """Forecast from the end of ``series``. With ``model`` (from :func:`fit`, refreshed rarely)
    this only applies it; without, it fits on ``series`` first (``fit`` + apply; still within
    the cost budget, see ``docs/benchmarks/forecast.md``)."""
    m = model or fit(series, horizon_steps=horizon_steps, params=params)
    return m.forecast(series, horizon_steps=horizon_steps, quantile=quantile, present=present)
