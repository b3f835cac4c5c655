"""The rolling-origin backtest (balancer.forecast.accuracy) against hand-computed values."""

from __future__ import annotations

import numpy as np
import pytest

from balancer.errors import InputError
from balancer.forecast import Series
from balancer.forecast.accuracy import backtest, persistence, seasonal_naive, series_of


def _const(value: float, upper: float):  # a forecaster that always says the same
    def run(history: Series, horizon_steps: int) -> tuple[np.ndarray, np.ndarray]:
        n = len(history.names)
        return (
            np.full((n, horizon_steps), value, np.float32),
            np.full((n, horizon_steps), upper, np.float32),
        )

    return run


def test_mae_and_coverage_are_point_wise_over_the_window() -> None:
    values = np.asarray([[0, 0, 1, 2, 3, 4, 5]], dtype=np.float32)
    s = series_of(["a"], values)
    (h1, h3) = backtest(s, _const(2.0, 2.5), origins=[2, 3], horizons=[3, 1])
    # origin 2: actual 1; origin 3: actual 2 -> errors 1, 0
    assert (h1.horizon_steps, h1.points, h1.mae, h1.coverage) == (1, 2, 0.5, 1.0)
    # origin 2: 1,2,3; origin 3: 2,3,4 -> errors 1,0,1,0,1,2; covered 1,2,2
    assert h3.points == 6 and h3.mae == pytest.approx(5 / 6)
    assert h3.coverage == pytest.approx(3 / 6) and h3.wape == pytest.approx(5 / 15)


def test_nan_actuals_and_the_end_of_the_data_are_skipped() -> None:
    values = np.asarray([[1, 1, np.nan, 1]], dtype=np.float32)
    (h,) = backtest(series_of(["a"], values), _const(1.0, 1.0), origins=[2], horizons=[5])
    assert h.points == 1 and h.mae == 0 and h.coverage == 1


def test_baselines_persistence_and_seasonal_naive() -> None:
    day = np.tile(np.r_[np.zeros(144), np.ones(144)], 3).astype(np.float32)[None, :]
    s = series_of(["a"], day)
    mean, upper = seasonal_naive()(s.head(2 * 288 + 100), 60)
    assert np.array_equal(mean[0], day[0, 288 + 100 : 288 + 160])
    assert (upper >= mean).all()
    mean, upper = persistence()(s.head(2 * 288 + 100), 4)
    assert np.allclose(mean, 0) and (upper >= mean).all()
    with pytest.raises(InputError):
        backtest(s, persistence(), origins=[0], horizons=[1])
    with pytest.raises(InputError):
        backtest(s, persistence(), origins=[5], horizons=[0])
