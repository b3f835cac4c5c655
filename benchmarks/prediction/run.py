"""Predictive against reactive balancing on the 20 bitbrains days (issue 18's benchmark).

    PYTHONPATH=. python -m benchmarks.prediction.run            # seeds 0-2, both policies: ~45 min
    PYTHONPATH=. python -m benchmarks.prediction.run --render   # the table from results.json

Both policies (``reactive.yaml``: the shipped default without rules; ``predictive.yaml``: the
same plus ``predictive: {horizon_minutes: 60, quantile: 0.9, weight: 1}``) replay the 50 VMs
of ``/work/shared/traces/bitbrains`` as one continuous trace on one cluster (``--hosts``,
default 6 hosts of 12 cores and 192 GiB), 5-minute decisions, once per seed (``--seeds``,
default 0,1,2: the seed drives the optimizer's search, so one seed is one trajectory of many);
every day is simulated, the figures are those of the report days (default 15-20: the first 14
are learning days). The verdict compares the means over the seeds and counts the seeds where
predictive wins.
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
    name: str,
    traces: str,
    hosts: str,
    days: int | None,
    report: str,
    steps: int | None,
    seed: int = 0,
) -> dict[str, Any]:
    result = run(
        traces,
        hosts,
        str(POLICIES[name]),
        SimConfig(steps=steps, seed=seed),
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
        "seed": seed,
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


def _mean(rows: list[dict[str, Any]], key: str) -> float:
    return sum(float(r[key]) for r in rows) / len(rows)


def _wins(a: dict[str, Any], b: dict[str, Any]) -> bool:
    """The issue's target on one seed: less overloaded host-time, no more migrations."""
    return bool(
        b["overload_host_share"] < a["overload_host_share"] and b["migrations"] <= a["migrations"]
    )


def render(doc: dict[str, Any]) -> str:
    by: dict[str, dict[int, dict[str, Any]]] = {}
    for r in doc["runs"]:
        by.setdefault(r["policy"], {})[int(r.get("seed", 0))] = r
    seeds = sorted(set(by["reactive"]) & set(by["predictive"]))
    a = [by["reactive"][s] for s in seeds]
    b = [by["predictive"][s] for s in seeds]
    wins = sum(_wins(x, y) for x, y in zip(a, b, strict=True))
    mean_win = _wins(
        {k: _mean(a, k) for k in ("overload_host_share", "migrations")},
        {k: _mean(b, k) for k in ("overload_host_share", "migrations")},
    )
    lines = [
        f"Hosts `{doc['hosts']}`, report days {doc['report_days']}, seeds "
        f"{', '.join(map(str, seeds))}, command `{doc['command']}` ({doc['date']}).",
        "",
        f"**Target** (less overloaded host-time than reactive, no more migrations): "
        f"{'met' if mean_win else 'not met'} on the mean over the seeds; met on {wins} of "
        f"{len(seeds)} seeds.",
        "",
        "Mean over the seeds:",
        "",
        "| figure | reactive | predictive | predictive / reactive |",
        "|---|---|---|---|",
    ]
    for k in (*FIGURES, "overloaded_host_hours"):
        x, y = _mean(a, k), _mean(b, k)
        ratio = f"{y / x:.2f}" if x else "-"
        lines.append(f"| {k} | {_fmt(x)} | {_fmt(y)} | {ratio} |")
    lines += [
        "",
        "Per seed (overloaded host share, VM share, migrations; reactive / predictive):",
        "",
        "| seed | host share | VM share | migrations | GiB copied | target met | "
        "predictive moves by reason |",
        "|---|---|---|---|---|---|---|",
    ]
    for s_, x, y in zip(seeds, a, b, strict=True):
        lines.append(
            f"| {s_} | {x['overload_host_share']:.4f} / {y['overload_host_share']:.4f} "
            f"| {x['overload_vm_share']:.4f} / {y['overload_vm_share']:.4f} "
            f"| {x['migrations']} / {y['migrations']} "
            f"| {x['gib_copied']:.0f} / {y['gib_copied']:.0f} "
            f"| {'yes' if _wins(x, y) else 'no'} | {y['reasons']} |"
        )
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
    ap.add_argument("--seeds", default="0,1,2", help="comma-separated simulation seeds")
    ap.add_argument("--steps", type=int, default=None, help="steps per day (quick runs)")
    ap.add_argument("--out", type=Path, default=HERE / "results.json")
    ap.add_argument("--doc", type=Path, default=DOC)
    ap.add_argument("--render", action="store_true", help="only render --out into the doc")
    ap.add_argument("--no-doc", action="store_true", help="do not write the doc")
    args = ap.parse_args(argv)
    if not args.render:
        try:
            seeds = [int(x) for x in args.seeds.split(",") if x.strip()]
        except ValueError:
            ap.error(f"--seeds {args.seeds!r}: comma-separated integers, e.g. 0,1,2")
        if not seeds or min(seeds) < 0:
            ap.error(f"--seeds {args.seeds!r}: at least one seed, none negative")
        with ProcessPoolExecutor(max_workers=2) as pool:
            futures = [
                pool.submit(
                    one, n, args.traces, args.hosts, args.days, args.report_days, args.steps, s
                )
                for s in seeds
                for n in POLICIES
            ]
            runs = []
            for f in futures:
                runs.append(f.result())
                r = runs[-1]
                print(
                    f"done: {r['policy']} seed {r['seed']}: overload {r['overload_host_share']:.4f}"
                    f", {r['migrations']} migrations",
                    file=sys.stderr,
                    flush=True,
                )
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
