"""The demand formula: EWM and percentile against pandas/numpy references, and its properties."""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
from hypothesis import given, settings
from hypothesis import strategies as st

from collectors.demand import demand, ewm, percentile


def test_percentile_matches_numpy_with_missing_values() -> None:
    rng = np.random.default_rng(3)
    x = rng.random((50, 40)).astype(np.float32)
    x[rng.random(x.shape) < 0.2] = np.nan
    x[:, 7] = np.nan  # a column without samples
    for q in (50.0, 90.0, 95.0, 99.0, 100.0):
        ours = percentile(x, q)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            ref = np.nanpercentile(x.astype(np.float64), q, axis=0)
        np.testing.assert_allclose(ours, ref, rtol=1e-6, equal_nan=True)


def test_ewm_matches_pandas_time_based_ewm() -> None:
    rng = np.random.default_rng(4)
    times = np.cumsum(rng.uniform(10, 30, size=60))
    x = rng.random(60)
    now = times[-1]
    ours = ewm(x[:, None], now - times, halflife_s=300.0)[0]
    ref = (
        pd.Series(x, index=pd.to_datetime(times, unit="s"))
        .ewm(halflife=pd.Timedelta(seconds=300), times=pd.to_datetime(times, unit="s"))
        .mean()
        .iloc[-1]
    )
    assert abs(ours - ref) < 1e-9


def test_empty_window_gives_nan() -> None:
    out = demand(np.zeros((0, 3), np.float32), np.zeros(0), halflife_s=60, q=95)
    assert np.isnan(out).all()


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.floats(min_value=0, max_value=64, allow_nan=False), min_size=1, max_size=100),
    st.floats(min_value=1, max_value=100),
)
def test_demand_lies_between_min_and_max(values: list[float], q: float) -> None:
    x = np.array(values, dtype=np.float64)[:, None]
    ages = np.arange(len(values))[::-1] * 20.0
    d = demand(x, ages, halflife_s=600, q=q)[0]
    assert min(values) - 1e-6 <= d <= max(values) + 1e-6
    assert d >= percentile(x, q)[0] - 1e-9
