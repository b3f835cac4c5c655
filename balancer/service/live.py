"""The live cluster as a snapshot, for one-shot commands (``balancer snapshot|plan|policy
check --config FILE``).

Words: a *live snapshot* is what the service would decide on if it collected now: the
configured backend's snapshot (libvirt, the lab, or the simulated cluster), its demand measured
through the collectors' window (the same ``max(EWM, p95)`` as the service, over the samples
taken during ``sample_s``: two readings at least, since CPU use is a rate), and the
administrative host states (maintenance) from the service's database when it has any. Nothing
is written: the database is only read, never created, and no lab is started.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import sqlalchemy as sa

from balancer.errors import StorageError
from balancer.model import HostState, Snapshot
from balancer.port import Clock
from balancer.service.runtime import make_port
from balancer.settings import Settings
from balancer.storage.db import make_engine
from balancer.storage.journal import sqlite_file
from collectors.source import WindowDemandSource


def host_states(database: str) -> dict[str, str]:
    """The administrative host states the service recorded (empty without a database)."""
    path = sqlite_file(database)
    if path is not None and not Path(path).is_file():
        return {}
    engine = make_engine(database)
    try:
        with engine.connect() as conn:
            if not sa.inspect(conn).has_table("svc_host_admin"):
                return {}
            rows = conn.execute(sa.text("SELECT host, state FROM svc_host_admin")).all()
    except sa.exc.SQLAlchemyError as exc:
        raise StorageError(f"cannot read the host states: {exc}") from exc
    finally:
        engine.dispose()
    return {str(r[0]): str(r[1]) for r in rows}


def with_states(snap: Snapshot, states: dict[str, str]) -> Snapshot:
    hosts = []
    for h in snap.hosts:
        s = states.get(h.name)
        ok = s is not None and h.state is not HostState.UNREACHABLE
        hosts.append(h.with_state(HostState(s)) if ok and s is not None else h)
    return replace(snap, hosts=tuple(hosts))


def live_snapshot(
    settings: Settings,
    clock: Clock,
    *,
    sample_s: float,
    progress: Callable[[int, int], None] | None = None,
) -> tuple[Snapshot, str | None]:
    """The live snapshot (module docstring) and why its demand is not fresh enough to balance
    on (None when it is)."""
    collectors = settings.collector_settings()
    readings = max(2, 1 + math.ceil(sample_s / collectors.sample_interval_s))
    step = max(0.5, sample_s / (readings - 1))
    window = collectors.model_copy(
        update={
            "sample_interval_s": step,
            "window_s": max(collectors.window_s, step * readings),
            "stale_after_s": max(collectors.stale_after_s, 3 * step),
        }
    )
    source = WindowDemandSource(window)
    port, _name, close = make_port(settings, start_lab=False)
    try:
        demand: Snapshot | None = None
        stale: str | None = None
        for i in range(readings):
            if i:
                time.sleep(step)
            demand, stale = source.observe(port.snapshot(), clock.now())
            if progress is not None:
                progress(i + 1, readings)
        assert demand is not None
    finally:
        close()
        source.close()
    return with_states(demand, host_states(settings.database)), stale
