"""Predictive against reactive balancing on the 20 bitbrains days (issue 18's benchmark).

    PYTHONPATH=. python -m benchmarks.prediction.run            # both runs in parallel, ~25 min
    PYTHONPATH=. python -m benchmarks.prediction.run --render   # the table from results.json

Both policies (``reactive.yaml``: the shipped default without rules; ``predictive.yaml``: the
same plus ``predictive: {horizon_minutes: 60, quantile: 0.9, weight: 1}``) replay the 50 VMs
of ``/work/shared/traces/bitbrains`` as one continuous trace on one cluster (``--hosts``,
default 6 hosts of 12 cores and 192 GiB), 5-minute decisions, seed 0; every day is simulated,
the figures are those of the report days (default 15-20: the first 14 are learning days).
The forecast's error per horizon is ``balancer forecast backtest`` on the same trace (learn on
days 1-14, hourly origins over days 15-20). Writes ``results.json`` here and the tables into
its section of ``docs/benchmarks/prediction.md``.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from concurrent.futures import ProcessPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from balancer.simulation.engine import SimConfig
from balancer.simulation.run import run
from balancer.simulation.spec import parse_day_range
from benchmarks.doc_sections import write_section

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
TRACES = Path("/work/shared/traces/bitbrains")
DOC = REPO / "docs" / "benchmarks" / "prediction.md"
SECTION = "prediction"
POLICIES = {"reactive": HERE / "reactive.yaml", "predictive": HERE / "predictive.yaml"}
FIGURES = (
    "overload_host_share",
    "overload_vm_share",
    "max_host_load",
    "imbalance_mean",
    "migrations",
    "migrations_per_vm_day",
    "pingpong_moves",
    "gib_copied",
    "decide_seconds_mean",
)


def one(
    name: str, traces: str, hosts: str, days: int | None, report: str, steps: int | None
) -> dict[str, Any]:
    result = run(
        traces,
        hosts,
        str(POLICIES[name]),
        SimConfig(steps=steps),
        days=days,
        report_days=parse_day_range(report),
    )
    f = result.figures
    reasons: dict[str, int] = {}
    for d in result.report:
        for m in d.migrations:
            key = m.reason.split(":", 1)[0]
            reasons[key] = reasons.get(key, 0) + 1
    ticks = sum(len(d.ticks) for d in result.report)
    overloaded_s = sum(t.host_overload_s for d in result.report for t in d.ticks)
    return {
        "policy": name,
        **{k: getattr(f, k) for k in FIGURES},
        "overloaded_host_hours": overloaded_s / 3600,
        "ticks": ticks,
        "reasons": reasons,
    }


def accuracy(traces: str) -> dict[str, Any]:
    out = subprocess.run(
        [sys.executable, "-m", "balancer", "forecast", "backtest", "--traces", traces, "--json"],
        check=True,
        capture_output=True,
        text=True,
        cwd=REPO,
    )
    doc: dict[str, Any] = json.loads(out.stdout)
    return doc


def _fmt(x: float) -> str:
    return f"{x:.4g}" if isinstance(x, float) else str(x)


def render(doc: dict[str, Any]) -> str:
    runs = {r["policy"]: r for r in doc["runs"]}
    a, b = runs["reactive"], runs["predictive"]
    lines = [
        f"Hosts `{doc['hosts']}`, report days {doc['report_days']}, command "
        f"`{doc['command']}` ({doc['date']}).",
        "",
        "| figure | reactive | predictive |",
        "|---|---|---|",
    ]
    for k in (*FIGURES, "overloaded_host_hours"):
        lines.append(f"| {k} | {_fmt(a[k])} | {_fmt(b[k])} |")
    lines.append(f"| moves by reason | {a['reasons']} | {b['reasons']} |")
    acc = doc.get("accuracy")
    if acc:
        lines += [
            "",
            f"Forecast error ({acc['vms']} VMs, {acc['origins']} hourly origins over the report "
            f"days, learned on days 1-{acc['train_days']}; MAE in cores, coverage of the "
            f"q{acc['quantile']} upper quantile):",
            "",
            "| horizon | MAE forecast | MAE persistence | coverage forecast "
            "| coverage persistence |",
            "|---|---|---|---|---|",
        ]
        for h in acc["horizons"]:
            f, p = h["forecast"], h["persistence"]
            lines.append(
                f"| {h['horizon_s'] / 60:g} min | {f['mae_cores']:.3f} | {p['mae_cores']:.3f} "
                f"| {100 * f['coverage']:.1f} % | {100 * p['coverage']:.1f} % |"
            )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--traces", default=str(TRACES))
    ap.add_argument("--hosts", default="6x(12c,192G)")
    ap.add_argument("--days", type=int, default=None)
    ap.add_argument("--report-days", default="15-20")
    ap.add_argument("--steps", type=int, default=None, help="steps per day (quick runs)")
    ap.add_argument("--out", type=Path, default=HERE / "results.json")
    ap.add_argument("--doc", type=Path, default=DOC)
    ap.add_argument("--render", action="store_true", help="only render --out into the doc")
    ap.add_argument("--no-doc", action="store_true", help="do not write the doc")
    args = ap.parse_args(argv)
    if not args.render:
        with ProcessPoolExecutor(max_workers=2) as pool:
            futures = [
                pool.submit(
                    one, n, args.traces, args.hosts, args.days, args.report_days, args.steps
                )
                for n in POLICIES
            ]
            runs = [f.result() for f in futures]
        doc = {
            "hosts": args.hosts,
            "report_days": args.report_days,
            "date": datetime.now(UTC).strftime("%Y-%m-%d"),
            "command": "PYTHONPATH=. python -m benchmarks.prediction.run",
            "runs": runs,
            "accuracy": accuracy(args.traces) if args.steps is None else None,
        }
        args.out.write_text(json.dumps(doc, indent=2) + "\n")
    doc = json.loads(args.out.read_text())
    text = render(doc)
    print(text)
    if not args.no_doc:
        write_section(args.doc, SECTION, text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
