"""Foundation commands: ``snapshot`` and ``policy check``."""

from __future__ import annotations

import json
from pathlib import Path

import click

from balancer.cli.common import (
    SEED,
    handle_errors,
    json_option,
    output_path,
    print_json,
    write_output,
)
from balancer.cli.live import live_cluster, live_options
from balancer.errors import InputError
from balancer.model import Snapshot
from balancer.sim.generator import GeneratorSpec, generate
from balancer.snapshot_io import load_snapshot, snapshot_to_dict
from policies.lint import Severity, lint
from policies.loader import load_policy


@click.command()
@click.option(
    "--hosts",
    type=click.IntRange(1, 2000),
    default=8,
    show_default=True,
    help="Simulated cluster: number of hosts.",
)
@click.option(
    "--vms",
    type=click.IntRange(0, 200000),
    default=200,
    show_default=True,
    help="Simulated cluster: number of VMs.",
)
@click.option("--seed", type=SEED, default=1, show_default=True, help="Simulated cluster seed.")
@click.option(
    "--generations",
    type=click.IntRange(1, 3),
    default=3,
    show_default=True,
    help="Simulated cluster: CPU generations.",
)
@click.option(
    "--out",
    "-o",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Write the snapshot to this file (default: standard output).",
)
@live_options
@click.option(
    "--url",
    default=None,
    help="Ask the running service at this URL for the snapshot it decides on "
    "(GET /api/v1/snapshot; --token or $BALANCER_TOKEN).",
)
@click.option("--token", envvar="BALANCER_TOKEN", default=None, help="Bearer token for --url.")
@json_option
@handle_errors
def snapshot(
    hosts: int,
    vms: int,
    seed: int,
    generations: int,
    out: Path | None,
    config_path: Path | None,
    sample_s: float,
    url: str | None,
    token: str | None,
    as_json: bool,
) -> None:
    """Write a snapshot (format v1): of the live cluster (--config: its backend, demand measured
    for --sample-s; --url: the running service's), else of a simulated cluster of a given size
    and seed."""
    if out is not None:
        output_path(out)
    ctx = click.get_current_context()
    given = [
        f"--{n}"
        for n in ("hosts", "vms", "seed", "generations")
        if ctx.get_parameter_source(n) is click.core.ParameterSource.COMMANDLINE
    ]
    if config_path is not None and url is not None:
        raise InputError("--config and --url: give one (the live cluster, or the service's view)")
    if (config_path is not None or url is not None) and given:
        raise InputError(
            f"{', '.join(given)} describe a simulated cluster: not with --config/--url"
        )
    if url is not None:
        from balancer.cli.service import Client
        from balancer.snapshot_io import snapshot_from_dict

        snap = snapshot_from_dict(Client(url, token, None).call("GET", "/snapshot"))
    elif config_path is not None:
        snap, _ = live_cluster(config_path, sample_s)
    else:
        snap = generate(GeneratorSpec(hosts=hosts, vms=vms, seed=seed, generations=generations))
    if out is None:
        print_json(snapshot_to_dict(snap))
        return
    write_output(out, json.dumps(snapshot_to_dict(snap), indent=1))
    if as_json:
        print_json(
            {
                "path": str(out),
                "hosts": len(snap.hosts),
                "vms": len(snap.vms),
                "digest": snap.digest(),
            }
        )
    else:
        click.echo(f"wrote {out}: {len(snap.hosts)} hosts, {len(snap.vms)} VMs")


@click.group()
def policy() -> None:
    """Policy files: check them before they go live."""


@policy.command("check")
@click.argument("paths", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option(
    "--snapshot",
    "snapshot_path",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Also check the rules against this cluster snapshot.",
)
@live_options
@json_option
@handle_errors
def policy_check(
    paths: tuple[Path, ...],
    snapshot_path: Path | None,
    config_path: Path | None,
    sample_s: float,
    as_json: bool,
) -> None:
    """Validate policy files (schema and semantic lint); exit non-zero on errors. With
    --snapshot or --config the rules are also checked against that cluster (--config: the live
    cluster of the settings' backend)."""
    if snapshot_path is not None and config_path is not None:
        raise InputError("--snapshot and --config: give one cluster to lint against")
    pol = load_policy(paths)
    if config_path is not None:
        snap: Snapshot | None = live_cluster(config_path, sample_s)[0]
    else:
        snap = load_snapshot(snapshot_path) if snapshot_path else None
    findings = lint(pol, snap)
    errors = [f for f in findings if f.severity is Severity.ERROR]
    if as_json:
        print_json(
            {
                "ok": not errors,
                "digest": pol.digest,
                "rules": len(pol.rules),
                "findings": [
                    {
                        "severity": f.severity.value,
                        "code": f.code,
                        "message": f.message,
                        "rules": list(f.rules),
                    }
                    for f in findings
                ],
            }
        )
    else:
        for f in findings:
            click.echo(str(f), err=f.severity is Severity.ERROR)
        if not errors:
            click.echo(
                f"ok: {', '.join(map(str, paths))} ({len(pol.rules)} rules, "
                f"digest {pol.digest[:12]})"
            )
    if errors:
        raise InputError(f"{len(errors)} error(s) in {', '.join(map(str, paths))}")


def register(cli: click.Group) -> None:
    cli.add_command(snapshot)
    cli.add_command(policy)


__all__ = ["register"]
