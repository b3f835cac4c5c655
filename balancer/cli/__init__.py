"""The ``balancer`` command line. Each sub-module registers its commands on :data:`cli`."""

from __future__ import annotations

import importlib
import sys
from typing import Any

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
    "balancer.cli.forecast",  # forecast backtest   (demand forecasting)
    "balancer.cli.place",  # place                  (initial placement, a client)
)


class BalancerGroup(click.Group):
    """The top-level group: a usage error (bad option, bad value, missing argument) is one line
    on stderr and exit 2, like every other bad input; never click's multi-line usage block."""

    def main(
        self,
        args: Any = None,
        prog_name: str | None = None,
        complete_var: str | None = None,
        standalone_mode: bool = True,
        **extra: Any,
    ) -> Any:
        if not standalone_mode:
            return super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        try:
            rv = super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        except click.exceptions.NoArgsIsHelpError as exc:
            exc.show()  # a group without its command: its help, as click does
            sys.exit(exc.exit_code)
        except click.UsageError as exc:
            where = f"{exc.ctx.command_path}: " if exc.ctx is not None else ""
            hint = f" (see '{exc.ctx.command_path} --help')" if exc.ctx is not None else ""
            msg = " ".join(exc.format_message().split())
            click.echo(f"error: {where}{msg}{hint}", err=True)
            sys.exit(exc.exit_code)
        except click.ClickException as exc:
            click.echo(f"error: {' '.join(exc.format_message().split())}", err=True)
            sys.exit(exc.exit_code)
        except click.Abort:
            click.echo("error: aborted", err=True)
            sys.exit(1)
        except (EOFError, KeyboardInterrupt):
            click.echo("error: interrupted", err=True)
            sys.exit(130)
        sys.exit(rv if isinstance(rv, int) else 0)


@click.group(cls=BalancerGroup, context_settings={"help_option_names": ["-h", "--help"]})
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
