"""Forecast cost benchmark: ``python -m benchmarks.forecast.cost``.

8,000 VMs (the 50 bitbrains VMs tiled, each copy shifted by a seeded random number of steps
and multiplied by seeded noise), 14 days of 5-minute history (4,032 points each), horizon 4 h:
the CPU seconds (``time.process_time``) of one :meth:`ForecastModel.forecast` call and of one
:func:`fit` (the model refresh), and of :func:`forecast` without a model (fit + apply), each
the median of ``--repeat`` runs. The table goes to ``docs/benchmarks/forecast.md`` (section
``forecast-cost``).
"""

from __future__ import annotations

import argparse
import platform
import resource
import statistics
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import numpy.typing as npt

from balancer.forecast import fit, forecast
from balancer.forecast.accuracy import series_of
from benchmarks.doc_sections import write_section
from collectors.continuous import read_continuous_trace

TRACES = Path("/work/shared/traces/bitbrains")
OUT = Path("docs/benchmarks/forecast.md")
SECTION = "forecast-cost"
TARGET_CPU_S = 1.0


def tiled(source: npt.NDArray[np.float32], vms: int, steps: int, seed: int) -> np.ndarray:
    """``vms`` rows of ``steps`` points: row i is source row ``i mod n`` read from a random
    start (wrapping around), times lognormal noise (sigma 0.1) per point."""
    rng = np.random.default_rng(seed)
    n, t = source.shape
    shift = rng.integers(0, t, vms)
    cols = (shift[:, None] + np.arange(steps)[None, :]) % t
    out = source[np.arange(vms) % n][np.arange(vms)[:, None], cols]
    noise = rng.lognormal(0.0, 0.1, (vms, steps)).astype(np.float32)
    res: np.ndarray = (out * noise).astype(np.float32)
    return res


def _median_cpu(call: Callable[[], object], repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t0 = time.process_time()
        call()
        times.append(time.process_time() - t0)
    return statistics.median(times)


def run(
    traces: Path,
    *,
    vms: int = 8000,
    days: int = 14,
    horizon_steps: int = 48,
    repeat: int = 5,
    seed: int = 1,
) -> dict[str, float]:
    trace = read_continuous_trace(traces)
    per_day = round(86400 / trace.step_s)
    values = tiled(trace.demand_cores, vms, days * per_day, seed)
    series = series_of(tuple(f"vm{i:05d}" for i in range(vms)), values, step_s=trace.step_s)
    present = values[:, -1].copy()
    model = fit(series, horizon_steps=horizon_steps)
    return {
        "vms": float(vms),
        "points": float(values.shape[1]),
        "horizon_steps": float(horizon_steps),
        "forecast_cpu_s": _median_cpu(
            lambda: model.forecast(series, horizon_steps=horizon_steps, present=present), repeat
        ),
        "fit_cpu_s": _median_cpu(lambda: fit(series, horizon_steps=horizon_steps), repeat),
        "fit_and_forecast_cpu_s": _median_cpu(
            lambda: forecast(series, horizon_steps=horizon_steps, present=present), repeat
        ),
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


def table(r: dict[str, float]) -> list[str]:
    def ok(x: float) -> str:
        return "yes" if x <= TARGET_CPU_S else "no"

    return [
        "| call | CPU s (median) | within 1 CPU-s |",
        "|---|---|---|",
        f"| `model.forecast` (every cycle) | {r['forecast_cpu_s']:.3f} | "
        f"{ok(r['forecast_cpu_s'])} |",
        f"| `fit` (the model refresh, e.g. hourly) | {r['fit_cpu_s']:.3f} | {ok(r['fit_cpu_s'])} |",
        f"| `forecast` without a model (fit + apply) | {r['fit_and_forecast_cpu_s']:.3f} | "
        f"{ok(r['fit_and_forecast_cpu_s'])} |",
    ]


def write_doc(r: dict[str, float], command: str, repeat: int, path: Path) -> None:
    lines = [
        "## Cost",
        "",
        f"Command: `{command}`, run {datetime.now(UTC):%Y-%m-%d}.",
        "",
        f"{int(r['vms'])} VMs (the bitbrains VMs tiled with a seeded random time shift and",
        f"lognormal noise), {int(r['points'])} points each (14 days of 5-minute history),",
        f"horizon {int(r['horizon_steps'])} steps (4 h); CPU seconds by `time.process_time`,",
        f"median of {repeat}; peak RSS of the process {r['peak_rss_mib']:.0f} MiB. Machine:",
        f"{platform.machine()}, Python {platform.python_version()}, numpy {np.__version__},",
        "2 cores shared with other work.",
        "",
        *table(r),
    ]
    write_section(path, SECTION, "\n".join(lines))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.forecast.cost")
    ap.add_argument("--traces", type=Path, default=TRACES)
    ap.add_argument("--vms", type=int, default=8000)
    ap.add_argument("--days", type=int, default=14)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--out", type=Path, default=OUT)
    ap.add_argument("--no-write", action="store_true", help="print only, do not write the doc")
    args = ap.parse_args(argv)
    r = run(args.traces, vms=args.vms, days=args.days, repeat=args.repeat)
    for line in table(r):
        print(line, flush=True)
    if not args.no_write:
        cmd = "python -m benchmarks.forecast.cost" + (
            f" --vms {args.vms}" if args.vms != 8000 else ""
        )
        write_doc(r, cmd, args.repeat, args.out)
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
