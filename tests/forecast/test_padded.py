"""A history window longer than the VMs' history (the service reads 14 days; a new cluster has
three): the NaN padding in front must not hide the daily rhythm."""

from __future__ import annotations

from datetime import UTC, datetime

import numpy as np

from balancer.forecast import Series, fit

END = datetime(2026, 3, 5, 5, 0, tzinfo=UTC)  # an origin at 05:00
PER_DAY = 288


def test_three_days_of_rhythm_padded_to_two_weeks_forecast_the_peak() -> None:
    days, steps = 3, 14 * PER_DAY
    tod_h = (np.arange(days * PER_DAY) / 12.0 + 5.0) % 24  # the history ends at 05:00
    rhythm = np.where((tod_h >= 8) & (tod_h < 9), 1.9, 0.1).astype(np.float32)
    values = np.full((2, steps), np.nan, dtype=np.float32)
    values[:, -days * PER_DAY :] = rhythm
    series = Series(names=("a", "b"), values=values, end=END)
    model = fit(series, horizon_steps=48)
    fc = model.forecast(series, horizon_steps=48, quantile=0.9)
    peak = int(np.argmax(fc.mean[0]))
    assert 36 <= peak < 48  # 08:00..09:00 is 3-4 h after the origin
    assert abs(float(fc.mean[0, 40]) - 1.9) < 0.2 and abs(float(fc.mean[0, 10]) - 0.1) < 0.2
    assert not fc.fallback.any()
