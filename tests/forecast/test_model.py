"""The forecaster (balancer.forecast): daily and weekly rhythms, fallback, gaps, invariants."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from balancer.errors import InputError
from balancer.forecast import ForecastParams, Series, fit, forecast
from balancer.forecast.model import _components_at

STEP_S = 300.0
PER_DAY = 288
MIDNIGHT = datetime(2024, 3, 4, tzinfo=UTC)  # a Monday


def _series(values: np.ndarray, end: datetime) -> Series:
    v = np.asarray(values, dtype=np.float32)
    return Series(names=tuple(f"vm{i}" for i in range(v.shape[0])), values=v, end=end)


def daily_peak(days: int, *, end_hour: float, seed: int = 0, vms: int = 3) -> Series:
    """A base of 1 core and every day a peak of 4 cores at 08:00 (rising from 07:00, falling
    until 09:00), noise of 0.1; the series starts at midnight and ends at ``end_hour`` of its
    last day."""
    rng = np.random.default_rng(seed)
    steps = days * PER_DAY + round(end_hour * 12)
    tod_h = (np.arange(steps) % PER_DAY) / 12.0
    base = 1.0 + 3.0 * np.maximum(0.0, 1.0 - np.abs(tod_h - 8.0))
    values = base[None, :] + rng.normal(0, 0.1, (vms, steps))
    return _series(values, MIDNIGHT + timedelta(seconds=steps * STEP_S))


def test_a_daily_peak_is_forecast_at_its_time_the_next_morning() -> None:
    s = daily_peak(10, end_hour=5.0)
    assert s.end.hour == 5
    fc = forecast(s, horizon_steps=6 * 12)  # 05:00 .. 11:00
    assert not fc.fallback.any()
    for upper in (True, False):
        peak = fc.peak(upper=upper)
        for i in range(len(s.names)):
            when = peak.time(i)
            assert abs((when - s.end.replace(hour=8)).total_seconds()) <= STEP_S, when
            assert peak.value[i] > 3.0
    # before the peak the forecast is the base, not the level of the last hour smeared out
    assert np.all(np.abs(fc.mean[:, : 2 * 12] - 1.0) < 0.4)
    assert np.all(fc.mean[:, 3 * 12 - 1 : 3 * 12 + 2] > 3.5)


def test_short_history_falls_back_to_the_present_demand() -> None:
    s = _series(np.full((2, 24), 2.0), MIDNIGHT + timedelta(hours=2))
    present = np.asarray([3.5, 0.25], dtype=np.float32)
    fc = forecast(s, horizon_steps=12, present=present)
    assert fc.fallback.all()
    assert np.array_equal(fc.mean, np.repeat(present[:, None], 12, axis=1))
    assert np.array_equal(fc.upper, fc.mean)
    # without present: the last sample
    values = np.full((1, 24), 2.0, dtype=np.float32)
    values[0, -1] = 1.5
    fc = forecast(_series(values, MIDNIGHT), horizon_steps=3)
    assert fc.fallback.all() and np.all(fc.mean == 1.5)


def test_only_the_short_vm_falls_back() -> None:
    s = daily_peak(3, end_hour=5.0, vms=2)
    values = s.values.copy()
    values[1, :-20] = np.nan  # VM 1 has 20 samples
    fc = forecast(_series(values, s.end), horizon_steps=12, present=np.asarray([9.0, 9.0]))
    assert fc.fallback.tolist() == [False, True]
    assert np.all(fc.mean[1] == 9.0) and np.all(fc.mean[0] < 3.0)


def test_gaps_do_not_break_it_and_a_constant_vm_is_forecast_constant() -> None:
    rng = np.random.default_rng(3)
    values = np.full((2, 9 * PER_DAY), 1.75, dtype=np.float32)
    values[1] = daily_peak(9, end_hour=0, vms=1).values[0]
    holes = rng.random(values.shape) < 0.2
    values[holes] = np.nan
    values[:, -30:] = np.nan  # and the last 2.5 hours are missing
    fc = forecast(_series(values, MIDNIGHT + timedelta(days=9)), horizon_steps=48)
    assert np.isfinite(fc.mean).all() and np.isfinite(fc.upper).all()
    assert np.allclose(fc.mean[0], 1.75, atol=1e-5)
    assert np.allclose(fc.upper[0], 1.75, atol=1e-5)
    # VM 1 at midnight: the base, not the peak
    assert np.all(np.abs(fc.mean[1] - 1.0) < 0.4)


def test_a_weekday_that_differs_is_forecast_for_that_weekday() -> None:
    # on Wednesdays the VM runs 6 cores all day, else 1 core; the history ends on the third
    # Tuesday at 22:00 (two Wednesdays seen) and the forecast looks 6 h ahead
    rng = np.random.default_rng(5)
    steps = 15 * PER_DAY + 22 * 12
    day = np.arange(steps) // PER_DAY
    values = np.where(day % 7 == 2, 6.0, 1.0)[None, :] + rng.normal(0, 0.05, (2, steps))
    s = _series(values, MIDNIGHT + timedelta(seconds=steps * STEP_S))
    assert (s.end.weekday(), s.end.hour) == (1, 22)
    fc = forecast(s, horizon_steps=72)
    assert np.all(np.abs(fc.mean[:, :22] - 1.0) < 0.5)  # Tuesday, 22:00 to 23:50
    assert np.all(fc.mean[:, 26:] > 5.0), fc.mean[:, 26:].min()  # Wednesday from 00:10
    # with six days of history only (no weekly samples) the daily profile cannot know it
    short = _series(values[:, -6 * PER_DAY :], s.end)
    assert np.all(forecast(short, horizon_steps=72).mean < 3.0)


def test_the_components_match_a_plain_loop() -> None:
    rng = np.random.default_rng(11)
    values = rng.gamma(2.0, 1.0, (3, 15 * PER_DAY)).astype(np.float32)
    values[rng.random(values.shape) < 0.1] = np.nan
    p = ForecastParams()
    origins = np.asarray([PER_DAY + 7, 8 * PER_DAY + 100, 15 * PER_DAY - 48], dtype=np.intp)
    cols = origins[:, None] + np.arange(0, 48, 5)[None, :]
    lvl, daily, weekly, long = _components_at(values, origins, cols, STEP_S, p)
    for i in range(values.shape[0]):
        for m, o in enumerate(origins):
            past = values[i, :o]
            w = np.exp2(-np.arange(12)[::-1] * STEP_S / p.level_halflife_s)
            win = past[-12:]
            ok = ~np.isnan(win)
            assert lvl[i, m] == pytest.approx((w[ok] * win[ok]).sum() / w[ok].sum(), rel=1e-5)
            hours = [past[j : j + 12] for j in range(0, o - 11, 12) if j >= o - 7 * PER_DAY]
            assert long[i, m] == pytest.approx(np.nanmean(np.concatenate(hours)), rel=1e-5)
            for h, c in enumerate(cols[m]):
                d = [values[i, c - k * PER_DAY] for k in range(1, 8) if 0 <= c - k * PER_DAY < o]
                want = np.nanmean(d) if not np.isnan(d).all() else long[i, m]
                assert daily[i, m, h] == pytest.approx(want, rel=1e-5)
                wk = [values[i, c - k * 7 * PER_DAY] for k in (1, 2) if c - k * 7 * PER_DAY >= 0]
                want_w = np.nanmean(wk) if wk and not np.isnan(wk).all() else daily[i, m, h]
                assert weekly[i, m, h] == pytest.approx(want_w, rel=1e-5)


def test_bad_calls_are_input_errors() -> None:
    s = daily_peak(2, end_hour=1)
    with pytest.raises(InputError, match="horizon"):
        forecast(s, horizon_steps=0)
    with pytest.raises(InputError, match="horizon"):
        forecast(s, horizon_steps=PER_DAY + 1)
    with pytest.raises(InputError, match="quantile"):
        forecast(s, horizon_steps=3, quantile=1.0)
    with pytest.raises(InputError, match="present"):
        forecast(s, horizon_steps=3, present=np.zeros(1, dtype=np.float32))
    with pytest.raises(InputError, match="UTC"):
        Series(names=("a",), values=np.zeros((1, 3), np.float32), end=datetime(2024, 1, 1))
    model = fit(s, horizon_steps=12)
    with pytest.raises(InputError, match="fitted for 12"):
        model.forecast(s, horizon_steps=13)
    with pytest.raises(InputError, match="differ"):
        model.forecast(_series(s.values[:1], s.end), horizon_steps=3)


@settings(max_examples=40, deadline=None)
@given(
    values=hnp.arrays(
        np.float32,
        hnp.array_shapes(min_dims=2, max_dims=2, min_side=1, max_side=4).map(
            lambda sh: (sh[0], sh[1] * 97)
        ),
        elements=st.one_of(st.floats(0, 64, width=32), st.just(float("nan"))),
    ),
    horizon=st.integers(1, 60),
    quantile=st.floats(0.5, 0.99),
    present=st.booleans(),
)
def test_shapes_bounds_finite_and_deterministic(
    values: np.ndarray, horizon: int, quantile: float, present: bool
) -> None:
    s = _series(values, MIDNIGHT)
    now = np.full(values.shape[0], 2.0, dtype=np.float32) if present else None
    a = forecast(s, horizon_steps=horizon, quantile=quantile, present=now)
    b = forecast(s, horizon_steps=horizon, quantile=quantile, present=now)
    n = values.shape[0]
    assert a.mean.shape == a.upper.shape == (n, horizon) and a.fallback.shape == (n,)
    assert a.mean.dtype == np.float32 and a.upper.dtype == np.float32
    assert np.isfinite(a.mean).all() and np.isfinite(a.upper).all()
    assert (a.mean >= 0).all() and (a.upper >= a.mean).all()
    assert np.array_equal(a.mean, b.mean) and np.array_equal(a.upper, b.upper)
    assert np.array_equal(a.fallback, b.fallback)
    seen = np.nan_to_num(values, nan=0.0)
    assert (a.mean <= max(float(seen.max()), 2.0) + 1e-4).all()  # a convex blend of history
