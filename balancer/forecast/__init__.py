"""Demand forecasting (pure core): per VM the expected demand and an upper quantile over the
next hours, from the VM's demand history (see :mod:`balancer.forecast.model`)."""

from __future__ import annotations

from balancer.forecast.model import (
    QUANTILE_LEVELS,
    Forecast,
    ForecastModel,
    ForecastParams,
    Peak,
    Series,
    fit,
    forecast,
)

__all__ = [
    "QUANTILE_LEVELS",
    "Forecast",
    "ForecastModel",
    "ForecastParams",
    "Peak",
    "Series",
    "fit",
    "forecast",
]
