"""Forecast accuracy benchmark: ``python -m benchmarks.forecast.accuracy``.

The bitbrains trace (20 consecutive days of the same 50 VMs, 5-minute samples; demand in cores
= vcpus x percent / 100): every forecaster learns on days 1-14 and is scored with rolling
origins every hour over days 15-20 (each origin sees the whole history before it) at horizons
30 min, 1 h and 4 h: the MAE of its mean and the coverage of its upper quantile (q = 0.9), as
defined in :mod:`balancer.forecast.accuracy` (point-wise over the window from the origin).
Holt-Winters (statsmodels, additive damped trend and daily season) is fitted once per VM on
days 1-14 and then run with those parameters over the history up to each origin, on every
``--hw-every``-th origin (it is slow); its upper is mean + z_q x the in-sample residual std.
The table goes to ``docs/benchmarks/forecast.md`` (section ``forecast-accuracy``).
"""

from __future__ import annotations

import argparse
import sys
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import numpy.typing as npt

from balancer.forecast import ForecastParams, Series, fit
from balancer.forecast.accuracy import (
    Forecaster,
    HorizonScore,
    backtest,
    fitted,
    persistence,
    seasonal_naive,
    series_of,
    weekly_naive,
)
from benchmarks.doc_sections import write_section
from collectors.continuous import read_continuous_trace

TRACES = Path("/work/shared/traces/bitbrains")
OUT = Path("docs/benchmarks/forecast.md")
SECTION = "forecast-accuracy"
HORIZONS = (6, 12, 48)  # 30 min, 1 h, 4 h
F32 = npt.NDArray[np.float32]


@dataclass(frozen=True, slots=True, kw_only=True)
class Row:
    method: str
    scores: tuple[HorizonScore, ...]
    fit_cpu_s: float
    note: str = ""


def holt_winters(train: F32, quantile: float, period: int) -> tuple[Forecaster, float, int]:
    """Holt-Winters per VM fitted on ``train`` (n, T0); the forecaster re-filters the history
    up to each origin with the fitted parameters and initial state. Returns it, the fit's CPU
    seconds and how many VMs fell back to persistence (the fit failed or the VM is constant)."""
    from scipy.stats import norm
    from statsmodels.tsa.holtwinters import ExponentialSmoothing

    z = float(norm.ppf(quantile))
    fits: list[dict[str, object] | None] = []
    failed = 0
    t0 = time.process_time()
    for row in train.astype(np.float64):
        x = np.nan_to_num(row, nan=0.0)
        if np.ptp(x) < 1e-6:
            fits.append(None)
            failed += 1
            continue
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                res = ExponentialSmoothing(
                    x,
                    trend="add",
                    damped_trend=True,
                    seasonal="add",
                    seasonal_periods=period,
                    initialization_method="estimated",
                ).fit()
        except (ValueError, np.linalg.LinAlgError):
            fits.append(None)
            failed += 1
            continue
        p = res.params
        fits.append(
            {
                "alpha": p["smoothing_level"],
                "beta": p["smoothing_trend"],
                "gamma": p["smoothing_seasonal"],
                "phi": p["damping_trend"],
                "l0": p["initial_level"],
                "b0": p["initial_trend"],
                "s0": np.asarray(p["initial_seasons"]),
                "std": float(np.std(res.resid)),
            }
        )
    fit_s = time.process_time() - t0
    reactive = persistence(quantile)

    def run(history: Series, horizon_steps: int) -> tuple[F32, F32]:
        mean, upper = reactive(history, horizon_steps)
        for i, f in enumerate(fits):
            if f is None:
                continue
            x = np.nan_to_num(history.values[i].astype(np.float64), nan=0.0)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                res = ExponentialSmoothing(
                    x,
                    trend="add",
                    damped_trend=True,
                    seasonal="add",
                    seasonal_periods=period,
                    initialization_method="known",
                    initial_level=f["l0"],
                    initial_trend=f["b0"],
                    initial_seasonal=f["s0"],
                ).fit(
                    smoothing_level=f["alpha"],
                    smoothing_trend=f["beta"],
                    smoothing_seasonal=f["gamma"],
                    damping_trend=f["phi"],
                    optimized=False,
                )
            m = np.maximum(res.forecast(horizon_steps), 0).astype(np.float32)
            mean[i] = m
            upper[i] = m + np.float32(z * float(f["std"]))  # type: ignore[arg-type]
        return mean, upper

    return run, fit_s, failed


def run(
    traces: Path,
    *,
    train_days: int = 14,
    quantile: float = 0.9,
    horizons: Sequence[int] = HORIZONS,
    origin_every: int = 12,
    hw_every: int = 3,
    vms: int | None = None,
    max_origins: int | None = None,
) -> tuple[list[Row], dict[str, object]]:
    trace = read_continuous_trace(traces)
    values = trace.demand_cores if vms is None else trace.demand_cores[:vms]
    names = trace.names[: values.shape[0]]
    per_day = round(86400 / trace.step_s)
    series = series_of(names, values, step_s=trace.step_s)
    t0 = train_days * per_day
    origins = list(range(t0, values.shape[1] - max(horizons) + 1, origin_every))
    if max_origins is not None:
        origins = origins[:max_origins]
    train = series.head(t0)
    rows: list[Row] = []
    for name, f in (
        ("reactive persistence (last hour's EWM, flat)", persistence(quantile)),
        ("seasonal naive, daily", seasonal_naive(quantile=quantile)),
        ("seasonal naive, weekly", weekly_naive(quantile)),
    ):
        rows.append(
            Row(
                method=name,
                scores=backtest(series, f, origins=origins, horizons=horizons),
                fit_cpu_s=0.0,
            )
        )
    c0 = time.process_time()
    model = fit(train, horizon_steps=max(horizons), params=ForecastParams())
    fit_s = time.process_time() - c0
    rows.append(
        Row(
            method="this model (balancer.forecast)",
            scores=backtest(series, fitted(model, quantile), origins=origins, horizons=horizons),
            fit_cpu_s=fit_s,
        )
    )
    hw, hw_fit_s, failed = holt_winters(train.values, quantile, per_day)
    hw_origins = origins[::hw_every]
    rows.append(
        Row(
            method="Holt-Winters (statsmodels)",
            scores=backtest(series, hw, origins=hw_origins, horizons=horizons),
            fit_cpu_s=hw_fit_s,
            note=f"one origin in {hw_every} ({len(hw_origins)}); {failed} constant VMs: "
            "persistence",
        )
    )
    chosen = model.weights[:, :, 0]  # level weight per VM and band
    meta: dict[str, object] = {
        "vms": len(names),
        "origins": len(origins),
        "train_days": train_days,
        "days": values.shape[1] // per_day,
        "level_only_share": float((chosen == 1.0).mean()),
    }
    return rows, meta


def _h(steps: int, step_s: float = 300.0) -> str:
    m = round(steps * step_s / 60)
    return f"{m // 60} h" if m % 60 == 0 else f"{m} min"


def table(rows: Sequence[Row], horizons: Sequence[int]) -> list[str]:
    head = " | ".join(f"MAE {_h(h)} | cov {_h(h)}" for h in sorted(horizons))
    lines = [
        f"| method | {head} | fit CPU s | note |",
        "|---" * (3 + 2 * len(horizons)) + "|",
    ]
    for r in rows:
        cells = " | ".join(f"{s.mae:.3f} ({s.wape:.0%}) | {s.coverage:.1%}" for s in r.scores)
        lines.append(f"| {r.method} | {cells} | {r.fit_cpu_s:.2f} | {r.note} |")
    return lines


def write_doc(rows: Sequence[Row], meta: dict[str, object], command: str, path: Path) -> None:
    lines = [
        "## Accuracy on the bitbrains trace",
        "",
        f"Command: `{command}`, run {datetime.now(UTC):%Y-%m-%d}.",
        "",
        f"{meta['vms']} VMs, {meta['days']} days; every method learns on days 1-"
        f"{meta['train_days']} and is scored at {meta['origins']} rolling origins (every hour of",
        "the remaining days; each origin sees all history before it). MAE in cores, point-wise",
        "over the window from the origin to the horizon (so the 4 h figure includes the first",
        "30 min), with the WAPE (sum of absolute errors / sum of demand) in brackets; *cov* is",
        "the share of actual points at or below the upper quantile (q = 0.9: the target is",
        "90 %). Each baseline's upper: persistence, the 0.9 quantile of the last hour's samples;",
        "seasonal naive, the 0.9 quantile of the same time of day over the last 7 days (weekly:",
        "of the same time of week over 2 weeks); Holt-Winters, mean + 1.28 x its in-sample",
        "residual std. *Fit CPU s*: learning on days 1-14 for all VMs (`time.process_time`).",
        f"The model kept the pure level (weight 1) for {meta['level_only_share']:.0%} of its",
        "VM x horizon-band weights.",
        "",
        *table(rows, HORIZONS),
    ]
    write_section(path, SECTION, "\n".join(lines))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.forecast.accuracy")
    ap.add_argument("--traces", type=Path, default=TRACES)
    ap.add_argument("--vms", type=int, default=None, help="only the first N VMs")
    ap.add_argument("--origins", type=int, default=None, help="only the first N origins")
    ap.add_argument("--hw-every", type=int, default=3, help="Holt-Winters on every k-th origin")
    ap.add_argument("--train-days", type=int, default=14)
    ap.add_argument("--out", type=Path, default=OUT)
    ap.add_argument("--no-write", action="store_true", help="print only, do not write the doc")
    args = ap.parse_args(argv)
    rows, meta = run(
        args.traces,
        train_days=args.train_days,
        vms=args.vms,
        max_origins=args.origins,
        hw_every=args.hw_every,
    )
    for line in table(rows, HORIZONS):
        print(line, flush=True)
    if not args.no_write:
        write_doc(rows, meta, "python -m benchmarks.forecast.accuracy", args.out)
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
