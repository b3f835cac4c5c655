"""``balancer execute`` and ``balancer audit list|verify|export`` (thin: parse, call, format)."""

from __future__ import annotations

import re
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

import click

from balancer.cli.common import (
    finite,
    handle_errors,
    json_option,
    output_path,
    print_json,
    print_table,
    write_output,
)
from balancer.errors import InputError
from balancer.executor.runner import PlanRun, outcomes_json, run_plan_file
from balancer.executor.types import ExecutorConfig, ExecutorStatus, Result
from balancer.storage import audit as audit_mod
from balancer.storage.audit import AuditQuery
from balancer.storage.db import normalize_url
from balancer.storage.journal import Store, sqlite_file

db_option = click.option(
    "--db",
    "db_url",
    metavar="URL",
    default=None,
    help="SQLAlchemy URL of the store (sqlite:///path, postgresql://...). "
    "Default: $BALANCER_DB or an SQLite file under $BALANCER_STATE_DIR (./state).",
)


def _time(value: str | None, name: str) -> datetime | None:
    if value is None:
        return None
    try:
        t = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise InputError(f"{name}: not an ISO date or date-time: {value!r}") from None
    return t if t.tzinfo else t.replace(tzinfo=UTC)


@contextmanager
def _progress(enabled: bool) -> Iterator[tuple[object, object]]:
    """A rich progress bar on stderr (only when it is a terminal)."""
    if not enabled:
        yield (None, None)
        return
    from rich.console import Console
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    prog = Progress(
        TextColumn("[bold]executing[/]"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total} done, {task.fields[running]} running"),
        TimeElapsedColumn(),
        console=Console(stderr=True),
        transient=True,
    )
    with prog:
        task = prog.add_task("plan", total=None, running=0)
        yield (prog, task)


@click.command("execute")
@click.option(
    "--snapshot",
    "snapshot_path",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Snapshot file: the simulated cluster to run the plan on.",
)
@click.option(
    "--plan",
    "plan_path",
    type=click.Path(dir_okay=False, path_type=Path),
    required=True,
    help="The plan (the JSON of `balancer plan --json`).",
)
@db_option
@click.option(
    "--state",
    "state_path",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Keep the simulated cluster's state in this file (it outlives the process).",
)
@click.option("--lab", is_flag=True, help="Run on the libvirt lab's hosts instead.")
@click.option(
    "--policy",
    "policy_paths",
    multiple=True,
    type=click.Path(path_type=Path),
    help="Policy file(s): limits, migration settings, anti-affinity groups.",
)
@click.option("--per-host", type=click.IntRange(1, 1000), help="Migrations at once per host.")
@click.option("--total", type=click.IntRange(1, 10000), help="Migrations at once in all.")
@click.option("--retry", is_flag=True, help="Retry a failed migration once on another target.")
@click.option(
    "--max-age",
    type=finite(0, 10**9),
    help="Supersede the plan when it is older than this (seconds) relative to its snapshot.",
)
@click.option("--poll", type=finite(0.01, 60), default=0.5, show_default=True, hidden=True)
@click.option("--link-mib-s", type=finite(1, 10**7), default=None, hidden=True)
@json_option
@handle_errors
def execute(
    snapshot_path: Path | None,
    plan_path: Path,
    db_url: str | None,
    state_path: Path | None,
    lab: bool,
    policy_paths: tuple[Path, ...],
    per_host: int | None,
    total: int | None,
    retry: bool,
    max_age: float | None,
    poll: float,
    link_mib_s: float | None,
    as_json: bool,
) -> None:
    """Carry a plan out through the executor and print every migration's outcome.

    Running it again with the same plan and --db resumes the plan after a crash: nothing done
    twice, nothing lost. Exit status 1 when a migration failed or was aborted."""
    from balancer.sim.cluster import DEFAULT_LINK_MIB_S

    # outputs: their directories must exist (the default store under ./state is created)
    if state_path is not None:
        output_path(state_path)
    db_file = sqlite_file(normalize_url(db_url)) if db_url else None
    if db_file is not None:
        output_path(Path(db_file))
    policy = None
    if policy_paths:
        from policies.loader import load_policy

        policy = load_policy(list(policy_paths))
    base = ExecutorConfig.from_policy(policy) if policy else ExecutorConfig()
    overrides: dict[str, object] = {"poll_interval_s": poll}
    if per_host is not None:
        overrides["concurrent_per_host"] = per_host
    if total is not None:
        overrides["concurrent_total"] = total
    if max_age is not None:
        overrides["max_plan_age_s"] = max_age
    cfg = replace(base, **overrides)  # type: ignore[arg-type]
    show = not as_json and sys.stderr.isatty()
    with _progress(show) as (prog, task):

        def on_start(n: int) -> None:
            if prog is not None:
                prog.update(task, total=n)  # type: ignore[attr-defined]

        def on_tick(st: ExecutorStatus) -> None:
            if prog is not None:
                prog.update(task, completed=st.finished, running=len(st.running))  # type: ignore[attr-defined]

        run = run_plan_file(
            plan_path=plan_path,
            snapshot_path=snapshot_path,
            db_url=db_url,
            state_path=state_path,
            lab=lab,
            config=cfg,
            policy=policy,
            link_mib_s=link_mib_s or DEFAULT_LINK_MIB_S,
            allow_retry=retry,
            on_tick=on_tick,
            on_start=on_start,
        )
    _print_run(run, as_json)
    if any(r.result in (Result.FAILED, Result.ABORTED) for r in run.results):
        sys.exit(1)


def _print_run(run: PlanRun, as_json: bool) -> None:
    if as_json:
        print_json(outcomes_json(run))
        return
    title = f"plan {run.plan_id}" + (" (resumed)" if run.resumed else "")
    if run.superseded:
        title += f" superseded: {run.superseded}"
    print_table(
        title,
        ["vm", "source", "target", "outcome", "duration s", "downtime ms", "why"],
        [
            (
                r.vm,
                r.source,
                r.target,
                r.result.value,
                None if r.duration_s is None else f"{r.duration_s:.1f}",
                None if r.downtime_ms is None else f"{r.downtime_ms:.0f}",
                r.skip_reason or r.error or "",
            )
            for r in run.results
        ],
    )


@click.group("audit")
def audit() -> None:
    """The audit trail: list, verify and export."""


@audit.command("list")
@click.option("--since", help="From this UTC date or date-time (inclusive).")
@click.option("--until", help="Up to this UTC date or date-time (exclusive).")
@click.option("--vm", help="Only records of this VM.")
@click.option("--host", help="Only records with this host as source or target.")
@click.option("--user", help="Only records of this user (`balancer` for automatic moves).")
@click.option(
    "--kind",
    help="Record kind: plan, request, outcome (the executor's), service, policy, maintenance, "
    "pause, breaker, recommendation, task, external_migration, ...",
)
@db_option
@json_option
@handle_errors
def audit_list(
    since: str | None,
    until: str | None,
    vm: str | None,
    host: str | None,
    user: str | None,
    kind: str | None,
    db_url: str | None,
    as_json: bool,
) -> None:
    """List audit records (oldest first)."""
    if kind is not None and not re.fullmatch(r"[a-z_]{1,20}", kind):
        raise InputError(f"--kind {kind!r}: a record kind, e.g. outcome or external_migration")
    q = AuditQuery(
        since=_time(since, "--since"),
        until=_time(until, "--until"),
        vm=vm,
        host=host,
        user=user,
        kind=kind,
    )
    store = Store.open_existing(db_url)
    try:
        records = store.audit(q)
    finally:
        store.close()
    if as_json:
        print_json([r.to_dict() for r in records])
        return
    print_table(
        None,
        ["#", "time (UTC)", "kind", "who", "vm", "move", "why", "result"],
        [
            (
                r.seq,
                audit_mod.format_time(r.at)[:19].replace("T", " "),
                r.kind,
                r.who,
                r.vm,
                f"{r.source}->{r.target}" if r.source else "",
                r.reason,
                r.result,
            )
            for r in records
        ],
    )


@audit.command("verify")
@db_option
@click.option(
    "--anchor",
    "anchor_path",
    type=click.Path(dir_okay=False, path_type=Path),
    help="The anchor file the service writes the chain head to (settings audit.anchor): "
    "also detect deleted newest records and a rewound head.",
)
@json_option
@handle_errors
def audit_verify(db_url: str | None, anchor_path: Path | None, as_json: bool) -> None:
    """Verify the hash chain; exit non-zero naming the first bad record."""
    store = Store.open_existing(db_url)
    try:
        count = store.verify(anchor_path)
    finally:
        store.close()
    if as_json:
        print_json({"ok": True, "records": count, "anchor": str(anchor_path or "") or None})
    elif anchor_path is not None:
        click.echo(f"audit trail ok: {count} records, reaches the anchor {anchor_path}")
    else:
        click.echo(f"audit trail ok: {count} records")


@audit.command("export")
@click.option(
    "--format", "fmt", type=click.Choice(["csv", "json"]), default="json", show_default=True
)
@click.option("--output", "-o", type=click.Path(dir_okay=False, path_type=Path))
@db_option
@handle_errors
def audit_export(fmt: str, output: Path | None, db_url: str | None) -> None:
    """Export every audit record (with its hashes) as CSV or JSON."""
    if output is not None:
        output_path(output)
    store = Store.open_existing(db_url)
    try:
        records = store.audit()
    finally:
        store.close()
    text = audit_mod.export_csv(records) if fmt == "csv" else audit_mod.export_json(records) + "\n"
    if output is None:
        click.echo(text, nl=False)
    else:
        write_output(output, text)


def register(cli: click.Group) -> None:
    cli.add_command(execute)
    cli.add_command(audit)
