"""``balancer plan`` and ``balancer assist``: thin wrappers around the optimizer and planner."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from balancer.cli.common import SEED, finite, handle_errors, json_option, print_json, print_table
from balancer.errors import InputError
from balancer.optimizer import assist as assist_vm
from balancer.plan import Plan, PlanStatus
from balancer.plan_io import plan_to_dict
from balancer.planner import make_plan
from balancer.snapshot_io import load_snapshot
from policies.loader import load_policy

#: exit code of ``plan`` when the hard rules conflict (the plan JSON is still printed)
EXIT_INFEASIBLE = 3

_snapshot_option = click.option(
    "--snapshot",
    "snapshot_path",
    required=True,
    type=click.Path(dir_okay=False, path_type=Path),
    help="Snapshot file (JSON, format v1).",
)
_policy_option = click.option(
    "--policy",
    "policy_paths",
    required=True,
    multiple=True,
    type=click.Path(path_type=Path),
    help="Policy file or directory (repeatable).",
)


@click.command()
@_snapshot_option
@_policy_option
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
    snapshot_path: Path,
    policy_paths: tuple[Path, ...],
    as_json: bool,
    time_limit: float,
    seed: int,
) -> None:
    """Plan the moves that balance the cluster: ordered steps, reasons, blocked VMs."""
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
@_snapshot_option
@_policy_option
@json_option
@handle_errors
def assist(vm: str, snapshot_path: Path, policy_paths: tuple[Path, ...], as_json: bool) -> None:
    """Migration assistant: the best target hosts for VM, ranked, and why others are out."""
    snap = load_snapshot(snapshot_path)
    pol = load_policy(policy_paths)
    if vm not in snap.vm_map():
        raise InputError(f"{snapshot_path}: unknown VM {vm!r}")
    result = assist_vm(snap, pol, vm)
    if as_json:
        print_json(
            {
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
            | (
                {
                    "blocked": {
                        "reason": result.blocked.reason.value,
                        "detail": result.blocked.detail,
                    }
                }
                if result.blocked
                else {}
            )
        )
        return
    click.echo(f"{result.vm} on {result.current}; imbalance now {result.imbalance:.3f}")
    if result.blocked:
        click.echo(f"blocked: {result.blocked.reason.value}: {result.blocked.detail}")
    print_table(
        "candidates (best first)",
        ["rank", "host", "cpu load", "memory load", "imbalance", "soft rules"],
        [
            [
                i + 1,
                c.host,
                f"{c.cpu_load:.2f}",
                f"{c.memory_load:.2f}",
                f"{c.imbalance:.3f}",
                _soft_label(c.soft_breaks, c.soft_repairs),
            ]
            for i, c in enumerate(result.candidates)
        ],
    )
    print_table(
        "ruled out",
        ["host", "reason", "detail"],
        [[r.host, r.label, r.detail] for r in result.ruled_out],
    )


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
