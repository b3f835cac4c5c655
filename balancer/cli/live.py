"""``--config FILE`` on one-shot commands (``snapshot``, ``plan``, ``policy check``): the live
cluster of the deployment's backend as a snapshot (see :mod:`balancer.service.live`)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

from balancer.cli.common import finite
from balancer.model import Snapshot
from balancer.settings import Settings, load_settings

F = TypeVar("F", bound=Callable[..., Any])

#: default of --sample-s (the module's constant, kept here so --help needs no service import)
SAMPLE_S = 10.0


def live_options(func: F) -> F:
    func = click.option(
        "--sample-s",
        type=finite(0.5, 600),
        default=SAMPLE_S,
        show_default=True,
        help="With --config: how long to measure the live cluster's demand (seconds).",
    )(func)
    func = click.option(
        "--config",
        "config_path",
        type=click.Path(dir_okay=False, path_type=Path),
        default=None,
        help="Settings file (balancer.yaml): work on the live cluster of its backend.",
    )(func)
    return func


def live_cluster(config_path: Path, sample_s: float) -> tuple[Snapshot, Settings]:
    """The live snapshot of ``config_path``'s backend; progress and staleness on stderr."""
    from balancer.service.live import live_snapshot
    from balancer.sim.clock import RealClock

    settings = load_settings(config_path)

    def progress(done: int, total: int) -> None:
        click.echo(f"measuring the live cluster: reading {done} of {total}", err=True)

    snap, stale = live_snapshot(settings, RealClock(), sample_s=sample_s, progress=progress)
    if stale:
        click.echo(f"warning: the demand is not fresh enough to balance on: {stale}", err=True)
    return snap, settings
