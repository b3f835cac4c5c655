"""``balancer plan`` and ``balancer assist``: thin wrappers around the optimizer and planner."""

from __future__ import annotations

import sys
import urllib.parse
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any, TypeVar

import click

from balancer.cli.common import SEED, finite, handle_errors, json_option, print_json, print_table
from balancer.cli.live import live_cluster, live_options
from balancer.cli.service import Client, _client_options
from balancer.errors import InputError
from balancer.optimizer import assist as assist_vm
from balancer.plan import Plan, PlanStatus
from balancer.plan_io import plan_to_dict
from balancer.planner import make_plan
from balancer.snapshot_io import load_snapshot
from policies.loader import load_policy

F = TypeVar("F", bound=Callable[..., Any])

#: exit code of ``plan`` when the hard rules conflict (the plan JSON is still printed)
EXIT_INFEASIBLE = 3


def _snapshot_option(help: str) -> Callable[[F], F]:
    """``--snapshot FILE`` (optional: the commands also work on the live cluster)."""
    return click.option(
        "--snapshot",
        "snapshot_path",
        type=click.Path(dir_okay=False, path_type=Path),
        default=None,
        help=help,
    )


def _policy_option(help: str) -> Callable[[F], F]:
    return click.option(
        "--policy", "policy_paths", multiple=True, type=click.Path(path_type=Path), help=help
    )


@click.command()
@_snapshot_option("Snapshot file (JSON, format v1); or --config for the live cluster.")
@_policy_option("Policy file or directory (repeatable); with --config default: the settings'.")
@live_options
@json_option
@click.option(
    "--time-limit",
    "time_limit",
    type=finite(0.1, 3600),
    default=10.0,
    show_default=True,
    help="Solver time limit in seconds.",
)
@click.option("--seed", type=SEED, default=0, show_default=True, help="Solver random seed.")
@handle_errors
def plan(
    snapshot_path: Path | None,
    policy_paths: tuple[Path, ...],
    config_path: Path | None,
    sample_s: float,
    as_json: bool,
    time_limit: float,
    seed: int,
) -> None:
    """Plan the moves that balance the cluster: ordered steps, reasons, blocked VMs. A dry run:
    nothing moves. --config plans on the live cluster of the settings' backend."""
    if (snapshot_path is None) == (config_path is None):
        raise InputError("give --snapshot FILE or --config FILE (the live cluster), one of them")
    if config_path is not None:
        snap, settings = live_cluster(config_path, sample_s)
        pol = load_policy(policy_paths or (Path(settings.policy),))
    else:
        assert snapshot_path is not None
        if not policy_paths:
            raise InputError("--snapshot needs --policy (the rules and headroom to plan under)")
        snap = load_snapshot(snapshot_path)
        pol = load_policy(policy_paths)
    result = make_plan(snap, pol, time_limit_s=time_limit, seed=seed)
    if as_json:
        print_json(plan_to_dict(result))
    else:
        _print_plan(result)
    if result.status is PlanStatus.INFEASIBLE:
        sys.exit(EXIT_INFEASIBLE)


def _print_plan(result: Plan) -> None:
    if result.status is PlanStatus.INFEASIBLE:
        click.echo("infeasible: the hard rules conflict: " + ", ".join(result.conflicts))
        for c in result.causes:
            click.echo(f"  {c.kind.value}: {c.code}: {c.message}")
        return
    b, a = result.before, result.after
    click.echo(
        f"status: {result.status.value}  moves: {len(result.moves)}  steps: {result.steps}  "
        f"solve: {result.solve_seconds:.2f}s"
    )
    click.echo(
        f"imbalance {b.imbalance:.3f} -> {a.imbalance:.3f}   "
        f"max cpu {b.max_cpu_load:.2f} -> {a.max_cpu_load:.2f}   "
        f"max memory {b.max_memory_load:.2f} -> {a.max_memory_load:.2f}"
    )
    if result.moves:
        print_table(
            "moves",
            ["step", "vm", "source", "target", "reason", "gain"],
            [
                [m.step, m.vm, m.source, m.target, m.reason_label, f"{m.gain:.4f}"]
                for m in result.moves
            ],
        )
    if result.blocked:
        print_table(
            "blocked",
            ["vm", "reason", "rule", "detail"],
            [[x.vm, x.reason.value, x.rule or "", x.detail] for x in result.blocked],
        )
    if result.violations:
        print_table(
            "violations (hard rules left violated)",
            ["rule", "kind", "cause", "vms", "hosts", "detail"],
            [
                [v.rule, v.kind.value, v.cause_label, ",".join(v.vms), ",".join(v.hosts), v.message]
                for v in result.violations
            ],
        )
    if result.soft_violations:
        print_table(
            "soft rules still broken (allowed)",
            ["rule", "kind", "mode", "vms", "hosts"],
            [
                [s.rule, s.kind.value, s.mode.value, ",".join(s.vms), ",".join(s.hosts)]
                for s in result.soft_violations
            ],
        )


@click.command()
@click.argument("vm")
@_snapshot_option("Rank on this snapshot file (with --policy) instead of asking the service.")
@_policy_option("Policy file(s) or directory, with --snapshot.")
@_client_options
@json_option
@handle_errors
def assist(
    vm: str,
    snapshot_path: Path | None,
    policy_paths: tuple[Path, ...],
    url: str | None,
    token: str | None,
    config_path: str | None,
    as_json: bool,
) -> None:
    """Migration assistant: the best target hosts for VM, ranked, and why others are out.

    Without --snapshot it asks the running service (GET /api/v1/vms/VM/targets: the live
    cluster, the policy in force and, under a predictive policy, each host's forecast peak)."""
    if snapshot_path is None:
        if policy_paths:
            raise InputError("--policy goes with --snapshot (the service uses its own policy)")
        doc = Client(url, token, config_path).call(
            "GET", f"/vms/{urllib.parse.quote(vm, safe='')}/targets"
        )
        if as_json:
            print_json(doc)
        else:
            _show_targets(doc)
        return
    if not policy_paths:
        raise InputError("--snapshot needs --policy (the rules and headroom to rank under)")
    snap = load_snapshot(snapshot_path)
    pol = load_policy(policy_paths)
    if vm not in snap.vm_map():
        raise InputError(f"{snapshot_path}: unknown VM {vm!r}")
    result = assist_vm(snap, pol, vm)
    doc = {
        "vm": result.vm,
        "current": result.current,
        "imbalance": round(result.imbalance, 6),
        "candidates": [
            {
                "host": c.host,
                "cpu_load": round(c.cpu_load, 6),
                "memory_load": round(c.memory_load, 6),
                "imbalance": round(c.imbalance, 6),
                "soft_breaks": list(c.soft_breaks),
                "soft_repairs": list(c.soft_repairs),
            }
            for c in result.candidates
        ],
        "ruled_out": [
            {"host": r.host, "reason": r.label} | ({"detail": r.detail} if r.detail else {})
            for r in result.ruled_out
        ],
    }
    if result.blocked:
        doc["blocked"] = {"reason": result.blocked.reason.value, "detail": result.blocked.detail}
    if as_json:
        print_json(doc)
    else:
        _show_targets(doc)


def _show_targets(doc: dict[str, Any]) -> None:
    """The assistant's tables, from the snapshot mode's JSON or the service's."""
    click.echo(f"{doc['vm']} on {doc['current']}; imbalance now {doc['imbalance']:.3f}")
    blocked = doc.get("blocked") or (
        {"reason": doc["blocked_reason"], "detail": doc.get("blocked_detail")}
        if doc.get("blocked_reason")
        else None
    )
    if blocked:
        click.echo(f"blocked: {blocked['reason']}: {blocked['detail']}")
    here = doc.get("current_forecast")
    if here:
        click.echo(
            f"forecast: {doc['current']} peaks at "
            f"{_peak_label(here['peak_load'], here['peak_at'])}; "
            f"{doc['vm']} planned at {doc['planned_cores']} cores"
        )
    forecast = any(c.get("forecast_peak_load") is not None for c in doc["candidates"])
    print_table(
        "candidates (best first)",
        ["rank", "host", "cpu load", "memory load", "imbalance", "soft rules"]
        + (["forecast"] if forecast else []),
        [
            [
                i + 1,
                c["host"],
                f"{c['cpu_load']:.2f}",
                f"{c['memory_load']:.2f}",
                f"{c['imbalance']:.3f}",
                _soft_label(tuple(c["soft_breaks"]), tuple(c["soft_repairs"])),
            ]
            + (
                [_peak_label(c.get("forecast_peak_load"), c.get("forecast_peak_at"))]
                if forecast
                else []
            )
            for i, c in enumerate(doc["candidates"])
        ],
    )
    print_table(
        "ruled out",
        ["host", "reason", "detail"],
        [[r["host"], r["reason"], r.get("detail") or ""] for r in doc["ruled_out"]],
    )


def _peak_label(load: float | None, at: str | None) -> str:
    """``62% at 08:00Z``: a host's forecast peak with the VM on it (``-`` without one)."""
    if load is None:
        return "-"
    when = datetime.fromisoformat(at.replace("Z", "+00:00")) if at else None
    return f"{100 * load:.0f}%" + (f" at {when:%H:%MZ}" if when else "")


def _soft_label(breaks: tuple[str, ...], repairs: tuple[str, ...]) -> str:
    """``breaks a, b; repairs c`` (empty when moving there changes no soft rule)."""
    parts = []
    if breaks:
        parts.append("breaks " + ", ".join(breaks))
    if repairs:
        parts.append("repairs " + ", ".join(repairs))
    return "; ".join(parts)


def register(cli: click.Group) -> None:
    cli.add_command(plan)
    cli.add_command(assist)
