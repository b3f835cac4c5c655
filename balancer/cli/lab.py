"""``balancer lab up|status|down`` and ``balancer cpu report``: thin wrappers around
:mod:`balancer.lab` and :meth:`balancer.libvirt.LibvirtBackend.cpu_report`."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import click

from balancer.cli.common import handle_errors, json_option, print_json, print_table
from balancer.errors import InputError

state_dir_option = click.option(
    "--state-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Lab state directory (default $BALANCER_LAB_DIR or /var/lib/balancer-lab).",
)


def _print_status(as_json: bool, state_dir: Path | None) -> None:
    from balancer.lab import Lab

    status = Lab(state_dir).status()
    if as_json:
        print_json(status.to_json())
        return
    print_table(
        f"lab in {status.state_dir}",
        ["host", "uri", "libvirtd", "vms"],
        [
            (h.name, h.uri, "running" if h.running else "stopped", ", ".join(h.vms))
            for h in status.hosts
        ],
    )
    linux = [g for g in status.guests if g.os == "linux"]
    if linux:
        print_table(
            f"Linux guests on bridge {status.bridge}",
            ["guest", "on", "mac", "address", "echo port", "disk"],
            [
                (
                    g.name,
                    ", ".join(h.name for h in status.hosts if g.name in h.vms) or "-",
                    g.mac,
                    g.address,
                    g.echo_port,
                    g.disk.url if g.disk else "-",
                )
                for g in linux
            ],
        )


@click.group()
def lab() -> None:
    """A local multi-host libvirt/KVM lab (root, libvirtd, qemu)."""


@lab.command()
@click.option("--hosts", type=click.IntRange(1, 9), default=3, show_default=True)
@click.option("--vms", type=click.IntRange(0, 64), default=2, show_default=True)
@click.option(
    "--busy", type=click.IntRange(0, 64), default=None, help="How many guests spin (default: half)."
)
@click.option("--memory-mib", type=click.IntRange(16, 4096), default=128, show_default=True)
@click.option(
    "--accel",
    type=click.Choice(["auto", "kvm", "tcg"]),
    default="auto",
    show_default=True,
    help="kvm, tcg (plain emulation) or auto.",
)
@click.option(
    "--guest",
    type=click.Choice(["bootsector", "linux"]),
    default="bootsector",
    show_default=True,
    help="bootsector: tiny guests (fast); linux: real Linux guests on the lab bridge.",
)
@state_dir_option
@json_option
@handle_errors
def up(
    hosts: int,
    vms: int,
    busy: int | None,
    memory_mib: int,
    accel: str,
    guest: str,
    state_dir: Path | None,
    as_json: bool,
) -> None:
    """Start N lab hosts and M guests (tiny boot-sector guests, or real Linux ones)."""
    from balancer.lab import Lab

    Lab.up(
        hosts,
        vms,
        busy=busy,
        state_dir=state_dir,
        memory_mib=memory_mib,
        accel=accel,
        guest=guest,
    )
    _print_status(as_json, state_dir)


@lab.command()
@state_dir_option
@json_option
@handle_errors
def status(state_dir: Path | None, as_json: bool) -> None:
    """Show the lab hosts, their URIs and the guests running on each."""
    _print_status(as_json, state_dir)


@lab.command()
@state_dir_option
@handle_errors
def down(state_dir: Path | None) -> None:
    """Stop every guest and lab host; leave no process, mount or file behind."""
    from balancer.lab import Lab

    lab_ = Lab(state_dir)
    where = lab_.state_dir
    lab_.down()
    click.echo(f"lab in {where} is down")


if TYPE_CHECKING:
    from balancer.libvirt.backend import CpuReport


@click.group()
def cpu() -> None:
    """CPU compatibility across hosts ("EVC for libvirt")."""


@cpu.command()
@click.option(
    "--uri",
    "uris",
    multiple=True,
    help="A host's libvirt URI (repeat); default: the lab's hosts.",
)
@state_dir_option
@click.option(
    "--config",
    "config_path",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Settings file: the hosts of its libvirt (or lab) backend.",
)
@json_option
@handle_errors
def report(
    uris: tuple[str, ...], state_dir: Path | None, config_path: Path | None, as_json: bool
) -> None:
    """The cluster CPU baseline, the hosts that hold it down, the VMs that cannot go
    everywhere."""
    from balancer.lab import Lab
    from balancer.libvirt import LibvirtBackend, backend_for_uris

    if config_path is not None:
        if uris:
            raise InputError("--uri and --config: give the hosts one way")
        from balancer.service.runtime import make_port
        from balancer.settings import load_settings

        settings = load_settings(config_path)
        if settings.backend.kind == "simulated":
            raise InputError(f"{config_path}: a simulated backend has no CPUs to report on")
        port, _, close = make_port(settings, start_lab=False)
        assert isinstance(port, LibvirtBackend)
        try:
            rep = port.cpu_report()
        finally:
            close()
        _print_report(rep, as_json)
        return
    backend = backend_for_uris(uris) if uris else Lab(state_dir).backend()
    try:
        rep = backend.cpu_report()
    finally:
        backend.close()
    _print_report(rep, as_json)


def _print_report(rep: CpuReport, as_json: bool) -> None:
    if as_json:
        print_json(
            {
                "baseline": {
                    "model": rep.baseline_model,
                    "features": sorted(rep.baseline_features),
                },
                "hosts": [
                    {
                        "name": h.name,
                        "model": h.model,
                        "features": sorted(h.features),
                        "lacks": sorted(h.lacks),
                    }
                    for h in rep.hosts
                ],
                "hosts_below": list(rep.hosts_below),
                "vms_not_everywhere": [
                    {
                        "vm": f.vm,
                        "host": f.host,
                        "model": f.model,
                        "required": sorted(f.required),
                        "incompatible_hosts": list(f.incompatible_hosts),
                    }
                    for f in rep.vms_not_everywhere
                ],
                "unreachable": list(rep.unreachable),
            }
        )
        return
    click.echo(f"baseline: {rep.baseline_model or '-'} with {len(rep.baseline_features)} features")
    print_table(
        "hosts",
        ["host", "model", "features", "lacks (holds the baseline down)"],
        [(h.name, h.model, len(h.features), ", ".join(sorted(h.lacks)) or "-") for h in rep.hosts],
    )
    print_table(
        "VMs that would not run on every host",
        ["vm", "on", "model", "requires", "incompatible with"],
        [
            (f.vm, f.host, f.model, ", ".join(sorted(f.required)), ", ".join(f.incompatible_hosts))
            for f in rep.vms_not_everywhere
        ],
    )
    if rep.unreachable:
        click.echo(f"unreachable: {', '.join(rep.unreachable)}")


def register(cli: click.Group) -> None:
    cli.add_command(lab)
    cli.add_command(cpu)
