"""The ``balancer`` command line. Each sub-module registers its commands on :data:`cli`."""

from __future__ import annotations

import importlib

import click

from balancer import __version__
from balancer.cli.common import json_option, print_json

#: modules that add commands; each has ``register(cli: click.Group) -> None``
COMMAND_MODULES = (
    "balancer.cli.core",  # snapshot, policy check
    "balancer.cli.plan",  # plan, assist            (optimizer)
    "balancer.cli.execute",  # execute, audit       (executor)
    "balancer.cli.lab",  # lab up/status/down, cpu report (libvirt)
    "balancer.cli.agent",  # agent                  (collectors)
    "balancer.cli.service",  # serve and the API client commands
    "balancer.cli.simulate",  # simulate           (trace-driven simulation)
    "balancer.cli.ha",  # ha status                  (high availability)
)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def cli() -> None:
    """Automatic, explainable resource balancer for KVM/libvirt clusters."""


@cli.command()
@json_option
def version(as_json: bool) -> None:
    """Print the version."""
    if as_json:
        print_json({"version": __version__})
    else:
        click.echo(__version__)


for _name in COMMAND_MODULES:
    try:
        _mod = importlib.import_module(_name)
    except ModuleNotFoundError as _exc:
        if _exc.name != _name:  # a real missing dependency inside the module: do not hide it
            raise
        continue
    _mod.register(cli)


def main() -> None:
    cli(prog_name="balancer")
