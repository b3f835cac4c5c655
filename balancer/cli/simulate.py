"""``balancer simulate``: trace-driven simulation and policy backtesting (thin: parse, call
:func:`balancer.simulation.run.run`, format)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import click
from click.core import ParameterSource
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from balancer.cli.common import (
    SEED,
    finite,
    handle_errors,
    json_option,
    output_path,
    print_json,
    print_table,
)
from balancer.errors import InputError
from balancer.simulation.engine import SimConfig
from balancer.simulation.spec import parse_day_range, parse_duration_s, parse_vm_types


@contextmanager
def _progress(enabled: bool, label: str) -> Iterator[Callable[[int, int], None]]:
    if not enabled:
        yield lambda done, total: None
        return
    bar = Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=Console(stderr=True),
        transient=True,
    )
    with bar:
        task = bar.add_task(label, total=None)

        def update(done: int, total: int) -> None:
            bar.update(task, completed=done, total=total)

        yield update


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in Path(name).name) or "run"


def register(cli: click.Group) -> None:
    @cli.command()
    @click.option(
        "--traces",
        "traces",
        required=True,
        type=click.Path(path_type=Path),
        help="Trace directory (one CSV(.gz) per day; with vms.csv: one continuous trace of "
        "the same VMs) or one trace file.",
    )
    @click.option(
        "--hosts",
        "hosts_spec",
        required=True,
        help="Host spec, e.g. '100x(2c,16G)', '50xG4,50xG5', or a snapshot file.",
    )
    @click.option(
        "--policy",
        "policy",
        default=None,
        help="Policy file or directory, or 'none' (never migrate).",
    )
    @click.option(
        "--compare",
        "compare",
        nargs=2,
        default=None,
        help="Run two policies (files or 'none') on the same traces and compare.",
    )
    @click.option(
        "--days",
        default=None,
        type=click.IntRange(1, 3660),
        help="Days to simulate: day k replays trace file k (default 1; a continuous trace: "
        "its first N days, default all).",
    )
    @click.option(
        "--report-days",
        "report_days",
        default=None,
        metavar="FIRST-LAST",
        help="Report the figures over these simulated days only (e.g. 15-20: days 1-14 are "
        "learning days); every day still appears in the per-day figures.",
    )
    @click.option(
        "--interval",
        default="5m",
        show_default=True,
        help="Decision interval (a multiple of the trace step).",
    )
    @click.option("--seed", default=0, show_default=True, type=SEED)
    @click.option(
        "--vm-types",
        default="paper",
        show_default=True,
        help="VM sizes '(CORESc,MEMORY),...' or 'paper' (the paper's four types); not with "
        "a continuous trace (its sizes come from vms.csv).",
    )
    @click.option(
        "--vm-pick",
        type=click.Choice(["modulo", "random"]),
        default="modulo",
        show_default=True,
        help="VM i gets type i mod k, or a seeded random type.",
    )
    @click.option(
        "--steps",
        type=click.IntRange(1, 10**8),
        default=None,
        help="Simulate only the first N trace steps of each day (quick runs).",
    )
    @click.option(
        "--solve-time",
        default=0.3,
        show_default=True,
        type=finite(0.01, 3600),
        help="Optimizer time limit per decision (deterministic seconds).",
    )
    @click.option(
        "--out",
        "out",
        type=click.Path(path_type=Path),
        default=None,
        help="Write summary.json, CSV time series and PNG plots here.",
    )
    @json_option
    @handle_errors
    def simulate(
        traces: Path,
        hosts_spec: str,
        policy: str | None,
        compare: tuple[str, str] | None,
        days: int | None,
        report_days: str | None,
        interval: str,
        seed: int,
        vm_types: str,
        vm_pick: str,
        steps: int | None,
        solve_time: float,
        out: Path | None,
        as_json: bool,
    ) -> None:
        """Replay utilisation traces through the balancer on a simulated cluster."""
        from balancer.simulation.continuous import is_continuous
        from balancer.simulation.report import (
            compare_doc,
            compare_rows,
            fmt,
            summary_doc,
            write_compare,
            write_outputs,
        )
        from balancer.simulation.run import run

        if (policy is None) == (compare is None):
            raise InputError("give either --policy PATH|none or --compare A B")
        if is_continuous(traces):
            ctx = click.get_current_context()
            for option in ("vm_types", "vm_pick"):
                if ctx.get_parameter_source(option) is not ParameterSource.DEFAULT:
                    flag = "--" + option.replace("_", "-")
                    raise InputError(
                        f"{flag}: {traces} is a continuous trace: its VM sizes come from "
                        "its vms.csv",
                        subject=flag,
                    )
        report_range = parse_day_range(report_days) if report_days is not None else None
        if out is not None:
            output_path(out, directory=True)
        config = SimConfig(
            interval_s=parse_duration_s(interval),
            seed=seed,
            vm_types=parse_vm_types(vm_types),
            vm_pick=vm_pick,
            solve_time_limit_s=solve_time,
            steps=steps,
        )
        policies = [policy] if policy is not None else list(compare or ())
        results = []
        for i, p in enumerate(policies):
            with _progress(not as_json, f"simulating {p}") as update:
                results.append(
                    run(
                        traces,
                        hosts_spec,
                        p,
                        config,
                        days=days,
                        report_days=report_range,
                        progress=update,
                    )
                )
            if out is not None:
                target = out if len(policies) == 1 else out / f"{'ab'[i]}-{_safe(p)}"
                write_outputs(results[-1], target)
        scope = ""
        if report_range is not None:
            scope = f", days {report_range[0]}-{report_range[1]}"
        if len(results) == 1:
            r = results[0]
            if as_json:
                print_json(summary_doc(r))
            else:
                rows = [(k, fmt(float(v))) for k, v in r.figures.as_dict().items()]
                print_table(
                    f"simulate {r.policy} on {r.hosts_spec}{scope}", ["figure", "value"], rows
                )
            return
        a, b = results
        if out is not None:
            write_compare(a, b, out / "compare.json")
        rows5 = compare_rows(a.figures, b.figures)
        if as_json:
            print_json(compare_doc(a, b))
        else:
            print_table(
                f"compare A={a.policy} B={b.policy} on {a.hosts_spec}{scope}",
                ["figure", "A", "B", "B - A", "better"],
                [(k, fmt(x), fmt(y), fmt(d), w) for k, x, y, d, w in rows5],
            )
