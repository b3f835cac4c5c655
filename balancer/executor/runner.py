"""Carry one plan file out to the end (``balancer execute``): build the port, open the store,
recover, submit (or resume) the plan, run until nothing is left, return every outcome.

Running the same command again after a crash or kill resumes: the plan id is a digest of the
plan's content, so a plan already in the journal is not queued twice; recovery reconciles what
was in flight with the hypervisors.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from balancer.errors import InputError, LabError
from balancer.executor.engine import Executor, result_of
from balancer.executor.types import ExecutorConfig, ExecutorStatus, MigrationResult
from balancer.model import Snapshot
from balancer.plan_io import read_plan_file
from balancer.port import Clock, HypervisorPort
from balancer.sim.clock import RealClock
from balancer.sim.cluster import DEFAULT_LINK_MIB_S, SimulatedCluster
from balancer.snapshot_io import load_snapshot
from balancer.storage.journal import Store
from policies.model import Policy


@dataclass(frozen=True, slots=True, kw_only=True)
class PlanRun:
    plan_id: str
    resumed: bool
    superseded: str | None
    results: tuple[MigrationResult, ...]
    #: outcomes of other requests recovered from the journal at start (not of this plan)
    recovered_other: tuple[MigrationResult, ...] = ()
    completed: bool = True


def _parse_time(value: object, where: str) -> datetime | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise InputError(f"{where}: a date-time string is required")
    try:
        t = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError as exc:
        raise InputError(f"{where}: not an ISO date-time: {value!r}") from exc
    if t.tzinfo is None:
        raise InputError(f"{where}: the date-time needs a time zone (UTC: ...Z)")
    return t


def lab_port() -> HypervisorPort:
    """The hook for ``--lab``: the libvirt port over the local lab's hosts
    (``balancer.lab.lab.Lab().backend()``, a ``balancer.libvirt.LibvirtBackend``).
    Raises :class:`LabError` while the lab or the libvirt backend is not available."""
    try:
        # imported by name: the lab is optional and type-checked on its own
        lab = importlib.import_module("balancer.lab.lab").Lab()
        if not lab.exists():
            raise LabError("no lab is up: run `balancer lab up` first")
        backend = lab.backend()
    except ImportError as exc:
        raise LabError(f"--lab needs the libvirt backend, which is not available ({exc})") from exc
    if not isinstance(backend, HypervisorPort):
        raise LabError("the lab's libvirt backend does not implement the hypervisor port")
    return backend


def run_plan_file(
    *,
    plan_path: str | Path,
    snapshot_path: str | Path | None,
    db_url: str | None,
    state_path: str | Path | None = None,
    lab: bool = False,
    config: ExecutorConfig | None = None,
    policy: Policy | None = None,
    clock: Clock | None = None,
    link_mib_s: float = DEFAULT_LINK_MIB_S,
    allow_retry: bool = False,
    who: str = "balancer",
    timeout_s: float | None = None,
    on_tick: Callable[[ExecutorStatus], None] | None = None,
    on_start: Callable[[int], None] | None = None,
) -> PlanRun:
    clock = clock or RealClock()
    p = Path(plan_path)
    plan, doc = read_plan_file(p)  # validated: format, version, every item and field
    made_at = _parse_time(doc.get("made_at"), f"{p}: made_at")
    snapshot: Snapshot | None = None
    port: HypervisorPort
    if lab:
        port = lab_port()
    else:
        if snapshot_path is None:
            raise InputError("--snapshot is required (or --lab)")
        snapshot = load_snapshot(snapshot_path)
        port = SimulatedCluster(snapshot, clock=clock, state_path=state_path, link_mib_s=link_mib_s)
    store = Store.open(db_url)
    try:
        cfg = config or (ExecutorConfig.from_policy(policy) if policy else ExecutorConfig())
        ex = Executor(port, store, clock=clock, config=cfg, policy=policy)
        recovered = ex.recover()
        sub = ex.submit_plan(
            plan, who=who, made_at=made_at, plan_snapshot=snapshot, allow_retry=allow_retry
        )
        if on_start is not None:
            on_start(len(sub.request_ids))
        done = ex.run(timeout_s=timeout_s, on_tick=on_tick)
        mine = set(sub.request_ids)
        results = tuple(result_of(store.request(rid)) for rid in sub.request_ids)
        return PlanRun(
            plan_id=sub.plan_id,
            resumed=sub.resumed,
            superseded=sub.superseded,
            results=results,
            recovered_other=tuple(r for r in recovered if r.request_id not in mine),
            completed=done,
        )
    finally:
        store.close()
        close = getattr(port, "close", None)
        if lab and callable(close):
            close()


def outcomes_json(run: PlanRun) -> list[dict[str, object]]:
    """The ``--json`` form of ``balancer execute``: one object per migration of the plan."""
    return [
        {
            "vm": r.vm,
            "source": r.source,
            "target": r.target,
            "outcome": r.result.value,
            "duration_s": r.duration_s,
            "downtime_ms": None if r.downtime_ms is None else round(r.downtime_ms, 1),
        }
        for r in run.results
    ]
