"""Bind the service's ports to the real optimizer, executor and audit trail.

* :class:`IsolatedPlanner` -> :func:`balancer.planner.make_plan` in a worker process of its
  own, so that a crash inside the native solver costs one planning call, not the service.
* :class:`OverlayPort` -> the hypervisor port with the service's administrative host states
  (maintenance) applied, so the executor's pre-start re-check sees them too.
* :class:`ExecutorAdapter` -> :class:`balancer.executor.Executor` run by an
  :class:`~balancer.executor.ExecutorWorker`, its journal read back for listings.
* :class:`StoreAudit` -> the hash-chained audit trail of :class:`balancer.storage.Store`.
"""

from __future__ import annotations

import multiprocessing
import os
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from concurrent.futures.process import BrokenProcessPool
from dataclasses import replace
from datetime import datetime
from typing import Any

import sqlalchemy as sa

from balancer.errors import PlanningError
from balancer.executor import (
    Executor,
    ExecutorConfig,
    ExecutorWorker,
    MigrationRequest,
    MigrationResult,
    PriorityClass,
)
from balancer.model import HostState, Snapshot
from balancer.plan import Metrics, Plan, PlanStatus
from balancer.planner import make_plan
from balancer.port import HypervisorPort, MigrationOptions, MigrationProgress
from balancer.predictive import Outlook, predictive_plan
from balancer.service.ports import (
    AuditFilter,
    AuditItem,
    Migration,
    MigrationState,
    MoveRequest,
)
from balancer.storage import AuditEntry, Store
from balancer.storage import audit as audit_mod
from balancer.storage.schema import audit_records, requests
from policies.model import Policy

PlanFunction = Callable[..., Plan]


def exit_with_parent(parent_pid: int, every_s: float = 1.0) -> None:
    """In a worker process: end it when the process that started it is gone. A service killed
    with SIGKILL cannot shut its pool down, and the worker would otherwise wait on its queue
    forever (one orphan per killed service, ~100 MiB each)."""

    def watch() -> None:
        while os.getppid() == parent_pid:
            time.sleep(every_s)
        os._exit(0)

    threading.Thread(target=watch, name="exit-with-parent", daemon=True).start()


class IsolatedPlanner:
    """:func:`~balancer.planner.make_plan` in a long-lived worker process (spawned, not forked:
    the service has threads).

    OR-Tools reports some internal errors by aborting the whole process (a failed CHECK in
    CP-SAT's postsolve was seen once in ten simulated PlanetLab days; OR-Tools issues #1981,
    #4169 show the class). Here such a crash, or a solve that overruns its bound, raises a
    :class:`PlanningError` for that one call; the next call starts a fresh worker.
    """

    def __init__(
        self,
        func: PlanFunction = make_plan,
        *,
        predictive: PlanFunction = predictive_plan,
        grace_s: float = 60.0,
    ) -> None:
        self._func = func
        self._predictive = predictive
        self._grace_s = grace_s
        self._lock = threading.Lock()
        self._pool: ProcessPoolExecutor | None = None

    def _worker(self) -> ProcessPoolExecutor:
        if self._pool is None:
            ctx = multiprocessing.get_context("spawn")
            self._pool = ProcessPoolExecutor(
                max_workers=1,
                mp_context=ctx,
                initializer=exit_with_parent,
                initargs=(os.getpid(),),
            )
        return self._pool

    def _discard(self) -> None:
        pool, self._pool = self._pool, None
        if pool is not None:
            for proc in list(getattr(pool, "_processes", {}).values()):
                proc.kill()  # a worker past its bound may still be solving
            pool.shutdown(wait=False, cancel_futures=True)

    def plan(
        self,
        snapshot: Snapshot,
        policy: Policy,
        *,
        held: frozenset[str],
        seed: int,
        time_limit_s: float,
        outlook: Outlook | None = None,
    ) -> Plan:
        with self._lock:
            if outlook is None:
                future = self._worker().submit(
                    self._func, snapshot, policy, held=held, time_limit_s=time_limit_s, seed=seed
                )
            else:
                future = self._worker().submit(
                    self._predictive,
                    snapshot,
                    policy,
                    outlook,
                    held=held,
                    time_limit_s=time_limit_s,
                    seed=seed,
                )
            try:
                return future.result(timeout=4 * time_limit_s + self._grace_s)
            except BrokenProcessPool as exc:
                self._discard()
                raise PlanningError(
                    "the solver process died while planning (a crash inside OR-Tools); "
                    "nothing was decided this time, the next plan starts a new solver process"
                ) from exc
            except FutureTimeout as exc:
                self._discard()
                raise PlanningError(
                    f"planning overran its bound of {4 * time_limit_s + self._grace_s:.0f} s "
                    "and was stopped; nothing was decided this time"
                ) from exc

    def close(self) -> None:
        with self._lock:
            pool, self._pool = self._pool, None
            if pool is not None:
                pool.shutdown(wait=True, cancel_futures=True)


class OverlayPort:
    """A hypervisor port whose snapshot carries the administrative host states."""

    def __init__(self, port: HypervisorPort, states: Callable[[], dict[str, str]]) -> None:
        self._port = port
        self._states = states

    def snapshot(self) -> Snapshot:
        snap = self._port.snapshot()
        states = self._states()
        if not states:
            return snap
        return replace(
            snap,
            hosts=tuple(
                h.with_state(HostState(states[h.name]))
                if h.name in states and h.state is not HostState.UNREACHABLE
                else h
                for h in snap.hosts
            ),
        )

    def can_run(self, vm: str, host: str) -> bool:
        return self._port.can_run(vm, host)

    def start_migration(self, vm: str, source: str, target: str, options: MigrationOptions) -> str:
        return self._port.start_migration(vm, source, target, options)

    def progress(self, job_id: str) -> MigrationProgress:
        return self._port.progress(job_id)

    def abort(self, job_id: str) -> None:
        self._port.abort(job_id)

    def locate(self, vm: str) -> str | None:
        return self._port.locate(vm)

    def __getattr__(self, name: str) -> Any:
        # optional capabilities of the wrapped port (e.g. ``find_job`` for recovery)
        return getattr(self._port, name)


def _state(s: str) -> MigrationState:
    try:
        return MigrationState(s)
    except ValueError:
        return MigrationState.FAILED


class ExecutorAdapter:
    """The executor as the service sees it."""

    def __init__(
        self,
        executor: Executor,
        store: Store,
        *,
        on_result: list[Callable[[MigrationResult], None]] | None = None,
    ) -> None:
        self.executor = executor
        self.worker = ExecutorWorker(executor)
        self.store = store
        self._lock = threading.Lock()

    @staticmethod
    def build(
        port: HypervisorPort,
        store: Store,
        *,
        clock: Any,
        policy: Policy | None,
        poll_interval_s: float = 1.0,
        on_result: Callable[[MigrationResult], None] | None = None,
    ) -> ExecutorAdapter:
        cfg = (
            ExecutorConfig.from_policy(policy, poll_interval_s=poll_interval_s)
            if policy
            else ExecutorConfig(poll_interval_s=poll_interval_s)
        )
        ex = Executor(port, store, clock=clock, config=cfg, policy=policy, on_result=on_result)
        return ExecutorAdapter(ex, store)

    def set_policy(self, policy: Policy) -> None:
        """A new policy: new limits and migration settings for work not yet started."""
        ex = self.executor
        with ex._lock:
            ex.policy = policy
            ex.config = ExecutorConfig.from_policy(
                policy, poll_interval_s=ex.config.poll_interval_s
            )

    # -- ExecutorPort ----------------------------------------------------------------------------
    def start(self) -> None:
        self.worker.start()

    def submit(
        self,
        requests_: Sequence[MoveRequest],
        *,
        who: str,
        plan_id: str | None,
        snapshot_digest: str,
        policy_digest: str,
        made_at: datetime,
    ) -> list[int]:
        if not requests_:
            return []
        if plan_id is None or (len(requests_) == 1 and requests_[0].step is None):
            ids = []
            for r in requests_:
                ids.append(
                    self.executor.submit(
                        MigrationRequest(
                            vm=r.vm,
                            source=r.source,
                            target=r.target,
                            priority=PriorityClass.from_label(r.priority.value),
                            reason=r.reason,
                            rule=r.rule,
                            who=who,
                            gain=r.gain,
                            policy_digest=policy_digest,
                            allow_retry=r.allow_retry,
                        )
                    )
                )
            self.worker.wake()
            return ids
        from balancer.plan import Move

        zero = Metrics(
            imbalance=0.0, cpu_stddev=0.0, memory_stddev=0.0, max_cpu_load=0.0, max_memory_load=0.0
        )
        plan = Plan(
            status=PlanStatus.MOVES,
            moves=tuple(
                Move(
                    vm=r.vm,
                    source=r.source,
                    target=r.target,
                    step=r.step or 0,
                    reason=r.reason,
                    rule=r.rule,
                    gain=r.gain,
                )
                for r in requests_
            ),
            blocked=(),
            before=zero,
            after=zero,
            snapshot_digest=snapshot_digest,
            policy_digest=policy_digest,
        )
        sub = self.executor.submit_plan(
            plan,
            who=who,
            made_at=made_at,
            plan_id=plan_id,
            allow_retry=any(r.allow_retry for r in requests_),
        )
        self.worker.wake()
        return list(sub.request_ids)

    def cancel(self, migration_id: int, *, who: str) -> bool:
        return self.worker.cancel(migration_id, who=who)

    def supersede_queued(self, plan_id: str, reason: str) -> list[int]:
        ids = self.executor.supersede_queued(plan_id, reason)
        self.worker.wake()
        return ids

    def migrations(self, *, active_only: bool = False, limit: int = 200) -> list[Migration]:
        stmt = sa.select(requests).order_by(requests.c.id.desc()).limit(limit)
        if active_only:
            stmt = stmt.where(requests.c.state.in_(["queued", "starting", "running", "aborting"]))
        with self.store.engine.connect() as conn:
            rows = list(conn.execute(stmt))
        fractions = {r.request_id: r.fraction for r in self.executor.status().running}
        out = []
        for row in rows:
            r = row._mapping
            st = _state(r["state"])
            out.append(
                Migration(
                    id=int(r["id"]),
                    vm=r["vm"],
                    source=r["source"],
                    target=r["target"],
                    state=st,
                    priority=r["priority_class"],
                    reason=r["reason"],
                    who=r["who"],
                    plan_id=r["plan_id"],
                    created_at=r["created_at"],
                    updated_at=r["updated_at"],
                    fraction=1.0
                    if st is MigrationState.SUCCEEDED
                    else float(fractions.get(int(r["id"]), 0.0) or 0.0),
                    duration_s=r["duration_s"],
                    error=r["error"] or r["skip_reason"],
                )
            )
        return out

    def stop_taking_work(self) -> None:
        self.executor.stop_dispatch()
        self.worker.wake()

    def wait_idle(self, timeout_s: float) -> bool:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.executor.in_flight == 0:
                return True
            time.sleep(0.1)
        return self.executor.in_flight == 0

    def abort_all(self, *, reason: str) -> None:
        self.executor.abort_all(who=f"balancer ({reason})", cancel_queued=False)
        self.worker.wake()

    def close(self) -> None:
        self.worker.stop(timeout_s=5.0, abort=False)


class StoreAudit:
    """The audit trail of the shared store: the service appends its own decisions (policy
    reloads, breakers, approvals, maintenance, API calls) to the same hash chain."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self._lock = threading.Lock()

    def record(
        self,
        *,
        at: datetime,
        kind: str,
        who: str,
        result: str,
        detail: str = "",
        vm: str | None = None,
        source: str | None = None,
        target: str | None = None,
        plan_id: str | None = None,
        reason: str | None = None,
        policy_digest: str | None = None,
        error: str | None = None,
    ) -> None:
        entry = AuditEntry(
            at=at,
            kind=kind[:20],
            who=who[:200],
            plan_id=plan_id,
            vm=vm,
            source=source,
            target=target,
            reason=reason,
            policy_digest=policy_digest,
            result=result[:20],
            error=error,
            detail=detail or None,
        )
        with self._lock, self.store._tx() as conn:  # anchored once committed
            audit_mod.append(conn, entry)

    def query(self, f: AuditFilter) -> list[AuditItem]:
        t = audit_records
        stmt = sa.select(t).order_by(t.c.seq.desc()).limit(f.limit)
        if f.since is not None:
            stmt = stmt.where(t.c.at >= f.since)
        if f.until is not None:
            stmt = stmt.where(t.c.at < f.until)
        if f.vm is not None:
            stmt = stmt.where(t.c.vm == f.vm)
        if f.host is not None:
            stmt = stmt.where(sa.or_(t.c.source == f.host, t.c.target == f.host))
        if f.user is not None:
            stmt = stmt.where(t.c.who == f.user)
        if f.kind is not None:
            stmt = stmt.where(t.c.kind == f.kind)
        with self.store.engine.connect() as conn:
            rows = list(conn.execute(stmt))
        return [
            AuditItem(
                seq=r.seq,
                at=r.at,
                kind=r.kind,
                who=r.who,
                plan_id=r.plan_id,
                request_id=r.request_id,
                vm=r.vm,
                source=r.source,
                target=r.target,
                priority_class=r.priority_class,
                reason=r.reason,
                policy_digest=r.policy_digest,
                result=r.result,
                duration_s=r.duration_s,
                error=r.error,
                detail=r.detail,
            )
            for r in rows
        ]
