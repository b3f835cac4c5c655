"""Outputs of a run: the summary JSON, CSV time series and PNG plots (matplotlib, Agg), and the
side-by-side comparison of two runs. :func:`summary_doc` and :func:`compare_rows` are pure; the
``write_*`` functions do the I/O."""

from __future__ import annotations

import csv
import json
from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from balancer.simulation.figures import Figures, TickRecord
from balancer.simulation.run import RunResult

#: the figures every summary.json holds (the issue's list), in this order
SUMMARY_KEYS = (
    "overload_host_share",
    "overload_vm_share",
    "imbalance_mean",
    "imbalance_p95",
    "migrations",
    "migrations_per_vm_day",
    "pingpong_moves",
    "gib_copied",
    "decide_seconds_mean",
)
#: figures where a smaller value is better (for the comparison's verdict column)
LOWER_IS_BETTER = frozenset(
    {*SUMMARY_KEYS, "migrations_failed", "max_host_load", "energy_kwh", "hosts_active_mean"}
)
OUTPUT_FILES = (
    "summary.json",
    "timeseries.csv",
    "migrations.csv",
    "host_loads.csv",
    "host_loads.png",
    "imbalance.png",
    "migrations.png",
)


def _ordered(figures: Figures) -> dict[str, float | int]:
    d = figures.as_dict()
    return {k: d[k] for k in SUMMARY_KEYS} | {k: v for k, v in d.items() if k not in SUMMARY_KEYS}


def summary_doc(result: RunResult) -> dict[str, object]:
    """The summary: the run's figures at the top level (over the report range when one is
    given; then ``all_days`` holds those of every day), then the setup and each day's figures
    (``in_report``: whether the day counts in the top-level figures)."""
    c = result.config
    report = {d.label for d in result.report}
    scope: dict[str, object] = {
        "continuous": result.continuous,
        "report_days": None,
    }
    if result.report_days is not None:
        first, last = result.report_days
        scope["report_days"] = {
            "first": first,
            "last": last,
            "labels": [d.label for d in result.report],
        }
        if result.all_figures is not None:
            scope["all_days"] = _ordered(result.all_figures)
    return {
        **_ordered(result.figures),
        **scope,
        "policy": result.policy,
        "hosts_spec": result.hosts_spec,
        "seed": c.seed,
        "interval_s": c.interval_s,
        "vm_types": [[t.cpu_cores, t.memory_mib] for t in c.vm_types],
        "vm_pick": c.vm_pick,
        "migration_cpu_cores": c.migration_cpu_cores,
        "days_detail": [
            {
                "day": d.label,
                "in_report": d.label in report,
                "initial_placement_moves": d.initial_moves,
                **_ordered(d.figures),
            }
            for d in result.days
        ],
    }


def compare_rows(a: Figures, b: Figures) -> list[tuple[str, float, float, float, str]]:
    """(figure, A, B, B - A, which is better) for every figure."""
    da, db = a.as_dict(), b.as_dict()
    rows = []
    for key in [*SUMMARY_KEYS, *(k for k in da if k not in SUMMARY_KEYS)]:
        x, y = float(da[key]), float(db[key])
        better = ""
        if key in LOWER_IS_BETTER and x != y:
            better = "A" if x < y else "B"
        rows.append((key, x, y, y - x, better))
    return rows


def fmt(value: float) -> str:
    if value == int(value) and abs(value) < 1e12:
        return str(int(value))
    return f"{value:.4g}"


def _tick_rows(result: RunResult) -> list[tuple[str, TickRecord]]:
    return [(d.label, t) for d in result.days for t in d.ticks]


def write_outputs(result: RunResult, out: Path) -> list[Path]:
    """summary.json, CSVs and PNGs into ``out`` (created); returns the files written."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "summary.json").write_text(json.dumps(summary_doc(result), indent=2) + "\n")
    ticks = _tick_rows(result)
    fields = list(TickRecord.__dataclass_fields__)
    with (out / "timeseries.csv").open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["day", *fields])
        for label, t in ticks:
            w.writerow([label, *(getattr(t, f) for f in fields)])
    with (out / "migrations.csv").open("w", newline="") as fh:
        w = csv.writer(fh)
        cols = [
            "day",
            "time_s",
            "vm",
            "source",
            "target",
            "reason",
            "duration_s",
            "data_mib",
            "succeeded",
            "error",
        ]
        w.writerow(cols)
        for d in result.days:
            for m in d.migrations:
                w.writerow([d.label, *(getattr(m, c) for c in cols[1:])])
    hosts = result.days[0].host_names
    with (out / "host_loads.csv").open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["day", "tick", *hosts])
        for d in result.days:
            for k, row in enumerate(d.host_load):
                w.writerow([d.label, k, *(f"{x:.4f}" for x in row)])
    _plot_heatmap(result, out / "host_loads.png")
    _plot_imbalance(result, out / "imbalance.png")
    _plot_migrations(result, out / "migrations.png")
    return [out / f for f in OUTPUT_FILES]


def _hours(result: RunResult) -> np.ndarray:
    offset = 0.0
    hours: list[float] = []
    for d in result.days:
        hours.extend((offset + t.time_s) / 3600.0 for t in d.ticks)
        offset += sum(t.tick_s for t in d.ticks)
    return np.array(hours)


def _plot_heatmap(result: RunResult, path: Path) -> None:
    loads = np.vstack([d.host_load for d in result.days])
    fig, ax = plt.subplots(figsize=(10, 5))
    hours = _hours(result)
    end = hours[-1] + result.days[0].tick_s / 3600.0 if len(hours) else 1.0
    im = ax.imshow(
        loads.T,
        aspect="auto",
        origin="lower",
        cmap="inferno",
        vmin=0.0,
        vmax=max(1.2, float(loads.max()) if loads.size else 1.0),
        extent=(0.0, end, -0.5, loads.shape[1] - 0.5),
        interpolation="nearest",
    )
    fig.colorbar(im, ax=ax, label="CPU load (demand / capacity)")
    ax.set_xlabel("hours")
    ax.set_ylabel("host")
    ax.set_title(f"Host CPU load - {result.policy} on {result.hosts_spec}")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def _plot_imbalance(result: RunResult, path: Path) -> None:
    imb = np.array([t.imbalance for _, t in _tick_rows(result)])
    hours = _hours(result)
    tick_s = result.days[0].tick_s if result.days else 300.0
    per_hour = max(1, round(3600.0 / tick_s))
    series = pd.Series(imb)
    fig, ax = plt.subplots(figsize=(10, 4))
    ax.plot(hours, imb, lw=0.6, color="0.6", label="per interval")
    ax.plot(
        hours,
        series.rolling(per_hour, min_periods=1).mean(),
        lw=1.5,
        color="tab:green",
        label="mean over the last hour",
    )
    ax.plot(
        hours,
        series.rolling(per_hour, min_periods=1).quantile(0.95),
        lw=1.2,
        color="tab:red",
        label="p95 over the last hour",
    )
    if len(imb):
        ax.axhline(
            float(imb.mean()),
            color="tab:green",
            ls="--",
            lw=0.8,
            label=f"run mean {imb.mean():.3f}",
        )
        ax.axhline(
            float(np.percentile(imb, 95)),
            color="tab:red",
            ls=":",
            lw=0.8,
            label=f"run p95 {np.percentile(imb, 95):.3f}",
        )
    ax.set_xlabel("hours")
    ax.set_ylabel("imbalance (stddev of host CPU loads)")
    ax.set_title(f"Imbalance over time - {result.policy}")
    ax.legend(loc="upper right", fontsize="small")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def _plot_migrations(result: RunResult, path: Path) -> None:
    ticks = [t for _, t in _tick_rows(result)]
    hours = _hours(result)
    started = np.array([t.migrations_started for t in ticks])
    over = np.array([t.overloaded_hosts for t in ticks])
    width = result.days[0].tick_s / 3600.0 if result.days else 1.0
    fig, ax = plt.subplots(figsize=(10, 4))
    ax.bar(hours, started, width=width, align="edge", label="migrations started")
    ax.plot(hours, over, color="tab:red", lw=1, label="hosts overloaded")
    ax.set_xlabel("hours")
    ax.set_ylabel("per interval")
    ax.set_title(f"Migrations per interval - {result.policy}")
    ax.legend(loc="upper right")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def compare_doc(a: RunResult, b: RunResult) -> dict[str, object]:
    """The comparison of two runs of the same traces (their report ranges' figures)."""
    rows = compare_rows(a.figures, b.figures)
    return {
        "a": a.policy,
        "b": b.policy,
        "report_days": list(a.report_days) if a.report_days is not None else None,
        "figures": {k: {"a": x, "b": y, "diff": d, "better": w} for k, x, y, d, w in rows},
    }


def write_compare(a: RunResult, b: RunResult, path: Path) -> None:
    doc = compare_doc(a, b)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc, indent=2) + "\n")


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return "\n".join(lines)
