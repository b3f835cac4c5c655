"""The executor: one queue, prioritized concurrent live migrations, journal first.

A single-threaded event loop over the hypervisor port. :meth:`Executor.tick` polls the
migrations in flight (progress, stall, time limit, verification, retry) and then fills every
free slot from the queue; :meth:`Executor.run` ticks until nothing is left, sleeping with the
injected clock between ticks (so a :class:`~balancer.sim.clock.ManualClock` makes tests instant
and deterministic). :class:`~balancer.executor.worker.ExecutorWorker` runs the same loop on a
thread for the service.

Every state change is written to the store *before* it is acted on: ``starting`` before the
port is asked to migrate, ``aborting`` before it is asked to abort; outcomes are written once,
with their audit record, in one transaction.
"""

from __future__ import annotations

import hashlib
import json
import threading
from collections import Counter, deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol, runtime_checkable

from balancer.errors import HypervisorError
from balancer.executor.checks import (
    TargetChooser,
    anti_affinity_groups,
    make_policy_chooser,
    premises_digest,
    recheck,
)
from balancer.executor.types import (
    AbortReason,
    ExecutorConfig,
    ExecutorStatus,
    MigrationRequest,
    MigrationResult,
    PriorityClass,
    QueuedView,
    Result,
    RunningView,
    SkipReason,
)
from balancer.model import Snapshot
from balancer.plan import MoveReason, Plan, reason_label
from balancer.port import Clock, HypervisorPort, JobState, MigrationProgress
from balancer.storage import journal as j
from balancer.storage.journal import NewPlan, NewRequest, Outcome, RequestRow, Store
from policies.model import Policy


@runtime_checkable
class JobFinder(Protocol):
    """Optional port capability used by recovery: find the job of a migration that was started
    but whose job id was not written down (the balancer was killed in between)."""

    def find_job(self, vm: str, *, target: str, since: datetime) -> str | None: ...


@dataclass(frozen=True, slots=True, kw_only=True)
class PlanSubmission:
    plan_id: str
    request_ids: tuple[int, ...]
    #: the reason when the plan was superseded instead of queued
    superseded: str | None = None
    #: True when the plan was already in the journal (resumed, nothing new queued)
    resumed: bool = False


@dataclass(slots=True, kw_only=True)
class _Work:
    """A request the executor holds in memory: queued, or in flight."""

    request_id: int
    vm: str
    source: str
    target: str
    priority: PriorityClass
    plan_id: str | None
    step: int | None
    allow_retry: bool
    preempt: bool
    attempt: int = 1
    tried: frozenset[str] = frozenset()
    notes: str = ""
    waiting_for: str = ""
    # in flight
    job_id: str | None = None
    started_at: datetime | None = None
    memory_mib: int = 0
    last_mark: tuple[float, int] = (-1.0, -1)
    last_change_at: datetime | None = None
    last_written_at: datetime | None = None
    fraction: float = 0.0
    abort_reason: AbortReason | None = None
    abort_sent_at: datetime | None = None
    errors: int = 0
    last_error: str = ""

    @classmethod
    def from_row(cls, r: RequestRow) -> _Work:
        return cls(
            request_id=r.id,
            vm=r.vm,
            source=r.source,
            target=r.target,
            priority=PriorityClass(r.priority),
            plan_id=r.plan_id,
            step=r.step,
            allow_retry=r.allow_retry,
            preempt=r.preempt,
            attempt=r.attempt,
            tried=frozenset({r.requested_target} - {r.target}),
            job_id=r.job_id,
            started_at=r.started_at,
            abort_reason=AbortReason(r.abort_reason) if r.abort_reason else None,
        )


def plan_digest(plan: Plan) -> str:
    """A content id for a plan (its moves and the snapshot it was made for): submitting the same
    plan twice resumes it instead of running it twice."""
    doc = {
        "snapshot": plan.snapshot_digest,
        "policy": plan.policy_digest,
        "moves": [
            [m.vm, m.source, m.target, m.step, m.reason.value, m.rule or ""] for m in plan.moves
        ],
    }
    return hashlib.sha256(json.dumps(doc, separators=(",", ":")).encode()).hexdigest()[:24]


def result_of(r: RequestRow) -> MigrationResult:
    return MigrationResult(
        request_id=r.id,
        vm=r.vm,
        source=r.source,
        target=r.target,
        result=Result(r.state),
        plan_id=r.plan_id,
        priority=PriorityClass(r.priority),
        attempt=r.attempt,
        duration_s=r.duration_s,
        downtime_ms=r.downtime_ms,
        data_copied_mib=r.data_copied_mib,
        skip_reason=r.skip_reason,
        error=r.error,
        ended_at=r.ended_at,
    )


class Executor:
    """Carries migration requests and plans out on a hypervisor port, journal first.

    Thread-safe: every public method takes one lock, so a service may call ``submit``/``cancel``
    /``status`` from its API threads while :class:`ExecutorWorker` ticks on its own thread."""

    def __init__(
        self,
        port: HypervisorPort,
        store: Store,
        *,
        clock: Clock,
        config: ExecutorConfig | None = None,
        policy: Policy | None = None,
        chooser: TargetChooser | None = None,
        on_result: Callable[[MigrationResult], None] | None = None,
    ) -> None:
        self.port = port
        self.store = store
        self.clock = clock
        self.config = config or ExecutorConfig()
        self.policy = policy
        # a retry goes only where the policy in force allows (rules, headroom): the assistant
        self.chooser = chooser or make_policy_chooser(lambda: self.policy, port.can_run)
        self._on_result = on_result
        self._lock = threading.RLock()
        self._queue: dict[int, _Work] = {}
        self._inflight: dict[int, _Work] = {}
        self._plans: dict[str, datetime] = {}
        self._finished = 0
        self._recent: deque[MigrationResult] = deque(maxlen=1000)
        self._recovered = False
        self._stopping = False
        #: a standby (high availability): requests are written to the journal, never run here
        self._standby = False

    # -- public API --------------------------------------------------------------------------
    def recover(self) -> list[MigrationResult]:
        """Reconcile the journal with the hypervisors (call once at start): every migration
        that was in flight is asked after and its real outcome recorded (or it is followed
        on); queued work is queued again. Returns the outcomes recorded now."""
        with self._lock:
            self._standby = False
            self._queue.clear()
            self._inflight.clear()
            before = len(self._recent)
            now = self.clock.now()
            for r in self.store.unfinished():
                if r.plan_id and r.plan_id not in self._plans:
                    p = self.store.plan(r.plan_id)
                    if p is not None:
                        self._plans[r.plan_id] = p.made_at
                self._recover_one(r, now)
            self._recovered = True
            # settle at once what ended while we were away (outcome, verification, retry)
            self._poll(now)
            return list(self._recent)[before:]

    def submit(self, request: MigrationRequest) -> int:
        """Queue one request (written to the journal first); returns its id."""
        with self._lock:
            self._ensure_recovered()
            now = self.clock.now()
            rid = self.store.add_request(_new_request(request), at=now)
            if self._standby:
                return rid  # the leader takes it from the journal
            self._queue[rid] = _Work(
                request_id=rid,
                vm=request.vm,
                source=request.source,
                target=request.target,
                priority=request.priority,
                plan_id=None,
                step=None,
                allow_retry=request.allow_retry,
                preempt=request.preempt,
            )
            return rid

    def submit_plan(
        self,
        plan: Plan,
        *,
        who: str = "balancer",
        made_at: datetime | None = None,
        plan_snapshot: Snapshot | None = None,
        plan_id: str | None = None,
        allow_retry: bool = False,
    ) -> PlanSubmission:
        """Queue every move of a plan, or supersede the whole plan when it is older than
        ``max_plan_age_s`` relative to ``made_at`` (the time of the snapshot it was made for)
        or its premises changed (``plan_snapshot`` vs the live cluster; without it, every
        VM must still be on the source of its first move). A plan already in the journal is
        resumed, not run twice."""
        with self._lock:
            self._ensure_recovered()
            now = self.clock.now()
            pid = plan_id or plan_digest(plan)
            if self.store.plan(pid) is not None:
                rows = self.store.requests(plan_id=pid)
                return PlanSubmission(
                    plan_id=pid, request_ids=tuple(r.id for r in rows), resumed=True
                )
            made = made_at or now
            superseded = self._superseded_reason(plan, made, now, plan_snapshot)
            classes = [PriorityClass.for_reason(m.reason, m.rule) for m in plan.moves]
            top = max(classes, default=PriorityClass.BALANCE)
            reqs = [
                NewRequest(
                    vm=m.vm,
                    source=m.source,
                    target=m.target,
                    priority=(top if m.reason is MoveReason.TEMPORARY else c).value,
                    priority_class=(top if m.reason is MoveReason.TEMPORARY else c).label,
                    who=who,
                    reason=m.reason_label,
                    rule=m.rule,
                    gain=m.gain,
                    policy_digest=plan.policy_digest,
                    allow_retry=allow_retry,
                    plan_id=pid,
                    step=m.step,
                )
                for m, c in zip(plan.moves, classes, strict=True)
            ]
            ids = self.store.add_plan(
                NewPlan(
                    id=pid,
                    who=who,
                    made_at=made,
                    snapshot_digest=plan.snapshot_digest,
                    policy_digest=plan.policy_digest,
                    expected_gain=sum(m.gain for m in plan.moves),
                ),
                reqs,
                at=now,
                superseded=superseded,
            )
            if superseded:
                for rid in ids:
                    self._note_result(result_of(self.store.request(rid)))
            elif not self._standby:
                self._plans[pid] = made
                for rid, req in zip(ids, reqs, strict=True):
                    self._queue[rid] = _Work(
                        request_id=rid,
                        vm=req.vm,
                        source=req.source,
                        target=req.target,
                        priority=PriorityClass(req.priority),
                        plan_id=pid,
                        step=req.step,
                        allow_retry=allow_retry,
                        preempt=False,
                    )
            return PlanSubmission(plan_id=pid, request_ids=tuple(ids), superseded=superseded)

    def cancel(self, request_id: int, *, who: str = "balancer") -> bool:
        """Cancel queued work (outcome ``skipped``/cancelled) or abort work in flight (outcome
        ``aborted``). Returns False when the request is not active."""
        with self._lock:
            now = self.clock.now()
            w = self._queue.get(request_id)
            if w is not None:
                self._finish(
                    w,
                    Outcome(
                        result=Result.SKIPPED.value,
                        skip_reason=SkipReason.CANCELLED.value,
                        error=f"cancelled by {who}",
                    ),
                    now,
                )
                return True
            w = self._inflight.get(request_id)
            if w is not None and w.abort_reason is None:
                self._abort(w, AbortReason.CANCELLED, now, f"cancelled by {who}")
                return True
            if self._standby and self.store.request(request_id).state == j.QUEUED:
                # the leader's start is conditional on ``queued``: it will not start it
                return self.store.finish(
                    request_id,
                    Outcome(
                        result=Result.SKIPPED.value,
                        skip_reason=SkipReason.CANCELLED.value,
                        error=f"cancelled by {who}",
                    ),
                    at=now,
                )
            return False

    def stand_by(self) -> None:
        """Become a standby (high availability: another instance leads the cluster): forget
        the in-memory queue and flights, which the leader owns, and only write new requests to
        the journal for the leader to take. :meth:`recover` makes this a leader again."""
        with self._lock:
            self._queue.clear()
            self._inflight.clear()
            self._plans.clear()
            self._recovered = True
            self._standby = True

    @property
    def standby(self) -> bool:
        return self._standby

    def adopt_queued(self) -> int:
        """Queue the requests another process wrote to the journal since the recovery (a
        standby took them from its API); returns how many."""
        with self._lock:
            if self._standby or not self._recovered:
                return 0
            added = 0
            for r in self.store.requests(states={j.QUEUED}):
                if r.id in self._queue or r.id in self._inflight:
                    continue
                if r.plan_id and r.plan_id not in self._plans:
                    p = self.store.plan(r.plan_id)
                    if p is not None:
                        self._plans[r.plan_id] = p.made_at
                self._queue[r.id] = _Work.from_row(r)
                added += 1
            return added

    def cancel_plan(self, plan_id: str, *, who: str = "balancer") -> int:
        with self._lock:
            ids = [
                w.request_id
                for w in (*self._queue.values(), *self._inflight.values())
                if w.plan_id == plan_id
            ]
            return sum(self.cancel(rid, who=who) for rid in ids)

    def supersede_queued(self, plan_id: str, reason: str) -> list[int]:
        """Finish the plan's requests not started yet as ``superseded`` (its premises broke:
        e.g. a VM moved outside the balancer); those in flight run on, the planner's pre-start
        checks still guard them. Returns the superseded request ids."""
        with self._lock:
            now = self.clock.now()
            done = []
            for w in [w for w in self._queue.values() if w.plan_id == plan_id]:
                self._finish(w, Outcome(result=Result.SUPERSEDED.value, error=reason), now)
                done.append(w.request_id)
            return done

    def abort_all(self, *, who: str = "balancer", cancel_queued: bool = True) -> None:
        """Abort every migration in flight (and cancel the queue unless told otherwise)."""
        with self._lock:
            now = self.clock.now()
            if cancel_queued:
                for rid in list(self._queue):
                    self.cancel(rid, who=who)
            for w in list(self._inflight.values()):
                if w.abort_reason is None:
                    self._abort(w, AbortReason.SHUTDOWN, now, f"abort all by {who}")

    def reconfigure(
        self, *, policy: Policy | None = None, config: ExecutorConfig | None = None
    ) -> None:
        """A new policy and/or configuration (limits, timeouts, migration options): applies to
        work not yet started; migrations in flight keep their options."""
        with self._lock:
            if policy is not None:
                self.policy = policy
            if config is not None:
                self.config = config

    def stop_dispatch(self) -> None:
        """Start no new migration (queued work stays queued in the journal)."""
        with self._lock:
            self._stopping = True

    def resume_dispatch(self) -> None:
        with self._lock:
            self._stopping = False

    def status(self) -> ExecutorStatus:
        with self._lock:
            return ExecutorStatus(
                queued=tuple(
                    QueuedView(
                        request_id=w.request_id,
                        vm=w.vm,
                        source=w.source,
                        target=w.target,
                        priority=w.priority,
                        plan_id=w.plan_id,
                        step=w.step,
                        waiting_for=w.waiting_for,
                    )
                    for w in sorted(self._queue.values(), key=_order)
                ),
                running=tuple(
                    RunningView(
                        request_id=w.request_id,
                        vm=w.vm,
                        source=w.source,
                        target=w.target,
                        priority=w.priority,
                        job_id=w.job_id,
                        started_at=w.started_at or self.clock.now(),
                        fraction=w.fraction,
                        aborting=w.abort_reason.value if w.abort_reason else None,
                    )
                    for w in sorted(self._inflight.values(), key=_order)
                ),
                finished=self._finished,
                stopping=self._stopping,
            )

    def recent_results(self) -> list[MigrationResult]:
        with self._lock:
            return list(self._recent)

    def results(self, request_ids: Iterable[int]) -> list[MigrationResult]:
        return [result_of(self.store.request(rid)) for rid in request_ids]

    @property
    def idle(self) -> bool:
        with self._lock:
            return not self._inflight and (self._stopping or not self._queue)

    @property
    def in_flight(self) -> int:
        with self._lock:
            return len(self._inflight)

    def tick(self) -> None:
        """One pass: follow the migrations in flight, then fill the free slots."""
        with self._lock:
            self._ensure_recovered()
            now = self.clock.now()
            self._poll(now)
            if not self._stopping and self._queue:
                self._dispatch(now)

    def run(
        self,
        *,
        timeout_s: float | None = None,
        on_tick: Callable[[ExecutorStatus], None] | None = None,
    ) -> bool:
        """Tick until nothing is queued or in flight; True when done, False on the timeout."""
        start = self.clock.now()
        while True:
            self.tick()
            if on_tick is not None:
                on_tick(self.status())
            if self.idle:
                return True
            if timeout_s is not None and (self.clock.now() - start).total_seconds() >= timeout_s:
                return False
            self.clock.sleep(self.config.poll_interval_s)

    # -- recovery ----------------------------------------------------------------------------
    def _ensure_recovered(self) -> None:
        if not self._recovered:
            self.recover()

    def _recover_one(self, r: RequestRow, now: datetime) -> None:
        w = _Work.from_row(r)
        if r.state == j.QUEUED:
            self._queue[r.id] = w
            return
        if r.state == j.STARTING:
            job = None
            if isinstance(self.port, JobFinder) and r.started_at is not None:
                job = self.port.find_job(r.vm, target=r.target, since=r.started_at)
            if job is not None:
                self.store.transition(
                    r.id,
                    "started",
                    at=now,
                    expect={j.STARTING},
                    state=j.RUNNING,
                    job_id=job,
                    detail="recovered: the job was found on the hypervisor",
                )
                w.job_id = job
                self._adopt(w, now)
                return
            loc = self._locate(r.vm)
            if loc == r.target and not isinstance(self.port, JobFinder):
                self._finish(
                    w,
                    Outcome(
                        result=Result.SUCCEEDED.value,
                        detail="recovered: the VM runs on the target (job figures unknown)",
                    ),
                    now,
                )
                return
            self.store.transition(
                r.id,
                "requeued",
                at=now,
                expect={j.STARTING},
                state=j.QUEUED,
                started_at=None,
                detail=f"recovered: the migration never started (VM on {loc or 'no host'})",
            )
            self._queue[r.id] = w
            return
        # running or aborting: the job id is known
        assert r.job_id is not None
        try:
            self.port.progress(r.job_id)
        except HypervisorError as exc:
            loc = self._locate(r.vm)
            if loc == r.target:
                out = Outcome(
                    result=Result.SUCCEEDED.value,
                    detail=f"recovered: job lost ({exc}); the VM runs on the target",
                )
            else:
                out = Outcome(
                    result=Result.FAILED.value,
                    error=f"job {r.job_id} lost ({exc}); the VM runs on {loc or 'no host'}",
                )
            self._finish(w, out, now)
            return
        self.store.transition(
            r.id, "recovered", at=now, expect={j.RUNNING, j.ABORTING}, detail="following the job"
        )
        self._adopt(w, now)

    def _adopt(self, w: _Work, now: datetime) -> None:
        try:
            w.memory_mib = self.port.snapshot().vm(w.vm).memory_mib
        except KeyError:
            w.memory_mib = 0
        w.started_at = w.started_at or now
        w.last_change_at = now
        w.last_written_at = now
        self._inflight[w.request_id] = w

    # -- following migrations in flight ------------------------------------------------------
    def _poll(self, now: datetime) -> None:
        cfg = self.config
        for w in sorted(self._inflight.values(), key=_order):
            assert w.job_id is not None and w.started_at is not None
            try:
                p = self.port.progress(w.job_id)
            except HypervisorError as exc:
                w.errors += 1
                w.last_error = str(exc)
                if w.errors >= 3:
                    self._settle_lost(w, now)
                continue
            w.errors = 0
            if p.state.final:
                self._complete(w, p, now)
                continue
            mark = (round(p.data_processed_mib, 3), p.iteration)
            if mark != w.last_mark:
                w.last_mark = mark
                w.last_change_at = now
            w.fraction = p.fraction
            running_s = (now - w.started_at).total_seconds()
            still_s = (now - (w.last_change_at or now)).total_seconds()
            if w.abort_reason is None:
                if running_s >= cfg.time_limit_s:
                    self._abort(
                        w,
                        AbortReason.TIME_LIMIT,
                        now,
                        f"running {running_s:.0f} s, limit {cfg.time_limit_s:.0f} s",
                    )
                elif still_s >= cfg.stall_timeout_s:
                    self._abort(
                        w,
                        AbortReason.STALL,
                        now,
                        f"no progress for {still_s:.0f} s at {100 * p.fraction:.0f}%",
                    )
                elif (now - (w.last_written_at or now)).total_seconds() >= cfg.progress_every_s:
                    self.store.transition(
                        w.request_id,
                        "progress",
                        at=now,
                        expect={j.RUNNING},
                        fraction=round(p.fraction, 4),
                        detail=f"{p.data_processed_mib:.0f}/{p.data_total_mib:.0f} MiB, "
                        f"iteration {p.iteration}",
                    )
                    w.last_written_at = now
            elif w.abort_sent_at is not None and (
                (now - w.abort_sent_at).total_seconds() >= max(cfg.poll_interval_s * 5, 5.0)
            ):
                self._send_abort(w, now)

    def _complete(self, w: _Work, p: MigrationProgress, now: datetime) -> None:
        dur = round(p.elapsed_s, 3)
        data = round(p.data_processed_mib, 3)
        if p.state is JobState.SUCCEEDED:
            loc = self._locate(w.vm)
            if loc == w.target and self._only_on(w.vm, w.target):
                self._finish(
                    w,
                    Outcome(
                        result=Result.SUCCEEDED.value,
                        downtime_ms=p.downtime_ms,
                        detail="; ".join(x for x in (w.notes, transport_note(p)) if x),
                        duration_s=dur,
                        data_copied_mib=data,
                    ),
                    now,
                )
            else:
                self._finish(
                    w,
                    Outcome(
                        result=Result.FAILED.value,
                        error=f"verification failed: the job succeeded but {w.vm} runs on "
                        f"{loc or 'no reachable host'}, not only on {w.target}",
                        duration_s=dur,
                        data_copied_mib=data,
                    ),
                    now,
                )
        elif p.state is JobState.FAILED:
            error = p.error or "the migration failed"
            if not self._retry(w, now, error):
                self._finish(
                    w,
                    Outcome(
                        result=Result.FAILED.value,
                        error=error,
                        detail=w.notes,
                        duration_s=dur,
                        data_copied_mib=data,
                    ),
                    now,
                )
        else:  # aborted
            if w.abort_reason is AbortReason.PREEMPTED:
                self.store.transition(
                    w.request_id,
                    "requeued",
                    at=now,
                    expect={j.ABORTING},
                    state=j.QUEUED,
                    job_id=None,
                    started_at=None,
                    abort_reason=None,
                    detail="preempted by higher-priority work; queued again",
                )
                del self._inflight[w.request_id]
                _reset(w)
                self._queue[w.request_id] = w
                return
            why = w.abort_reason.value if w.abort_reason else "aborted outside the balancer"
            self._finish(
                w,
                Outcome(
                    result=Result.ABORTED.value,
                    error=f"{why}: {p.error}" if p.error else why,
                    detail=w.notes,
                    duration_s=dur,
                    data_copied_mib=data,
                ),
                now,
            )

    def _settle_lost(self, w: _Work, now: datetime) -> None:
        """The port no longer answers for the job: decide from where the VM is."""
        loc = self._locate(w.vm)
        if loc == w.target:
            out = Outcome(
                result=Result.SUCCEEDED.value,
                detail=f"job lost ({w.last_error}); the VM runs on the target",
            )
        else:
            out = Outcome(
                result=Result.FAILED.value,
                error=f"job lost ({w.last_error}); the VM runs on {loc or 'no reachable host'}",
            )
        self._finish(w, out, now)

    def _abort(self, w: _Work, reason: AbortReason, now: datetime, detail: str) -> None:
        ok = self.store.transition(
            w.request_id,
            "aborting",
            at=now,
            expect={j.RUNNING},
            state=j.ABORTING,
            abort_reason=reason.value,
            detail=f"{reason.value}: {detail}",
        )
        if ok:
            w.abort_reason = reason
            self._send_abort(w, now)

    def _send_abort(self, w: _Work, now: datetime) -> None:
        w.abort_sent_at = now
        if w.job_id is None:
            return
        try:
            self.port.abort(w.job_id)
        except HypervisorError as exc:
            w.last_error = str(exc)

    def _retry(self, w: _Work, now: datetime, error: str) -> bool:
        """Queue a second attempt on the next best target when the request allows it."""
        if not w.allow_retry or w.attempt >= 2:
            return False
        snap = self.port.snapshot()
        reserved = Counter[str]()
        for o in self._inflight.values():
            if o.request_id != w.request_id:
                reserved[o.target] += o.memory_mib
        exclude = frozenset({*w.tried, w.target, w.source})
        new = self.chooser(snap, w.vm, exclude, reserved)
        if new is None:
            w.notes = f"attempt {w.attempt} to {w.target} failed; no other target for a retry"
            return False
        note = f"attempt {w.attempt} to {w.target} failed: {error}; retried on {new}"
        ok = self.store.transition(
            w.request_id,
            "retrying",
            at=now,
            expect={j.STARTING, j.RUNNING},
            state=j.QUEUED,
            target=new,
            attempt=w.attempt + 1,
            job_id=None,
            started_at=None,
            detail=note,
        )
        if not ok:
            return False
        self._inflight.pop(w.request_id, None)
        _reset(w)
        w.tried = w.tried | {w.target}
        w.target = new
        w.attempt += 1
        w.notes = note
        self._queue[w.request_id] = w
        return True

    # -- dispatch ----------------------------------------------------------------------------
    def _dispatch(self, now: datetime) -> None:
        cfg = self.config
        snap = self.port.snapshot()
        groups = anti_affinity_groups(snap, self.policy)
        host_count = Counter[str]()
        reserved = Counter[str]()
        outbound = Counter[str]()
        inbound_vms: dict[str, set[str]] = {}
        busy_vms: set[str] = set()
        busy_groups: set[str] = set()
        for w in self._inflight.values():
            self._count(w, host_count, reserved, outbound, inbound_vms, busy_vms)
            busy_groups |= {g for g, m in groups.items() if w.vm in m}
        min_step: dict[str, int] = {}
        for w in (*self._queue.values(), *self._inflight.values()):
            if w.plan_id is not None and w.step is not None:
                min_step[w.plan_id] = min(min_step.get(w.plan_id, w.step), w.step)
        held: set[str] = set()  # hosts kept for higher work that waits for a slot
        for w in sorted(self._queue.values(), key=_order):
            made = self._plans.get(w.plan_id) if w.plan_id else None
            if made is not None and (now - made).total_seconds() > cfg.max_plan_age_s:
                age = (now - made).total_seconds()
                self._finish(
                    w,
                    Outcome(
                        result=Result.SUPERSEDED.value,
                        error=f"the plan is {age:.0f} s older than its snapshot "
                        f"(limit {cfg.max_plan_age_s:.0f} s)",
                    ),
                    now,
                )
                continue
            if w.plan_id is not None and w.step is not None and w.step > min_step[w.plan_id]:
                w.waiting_for = "plan_order"
                continue
            if w.vm in busy_vms:
                w.waiting_for = "vm_busy"
                continue
            mine = {g for g, m in groups.items() if w.vm in m}
            if mine & busy_groups:
                w.waiting_for = "anti_affinity"
                continue
            hosts = {w.source, w.target}
            if (
                len(self._inflight) >= cfg.concurrent_total
                or any(host_count[h] >= cfg.concurrent_per_host for h in hosts)
                or hosts & held
            ):
                if w.preempt:
                    self._preempt(w, host_count, now)
                held |= hosts
                w.waiting_for = "limit"
                continue
            verdict = recheck(
                snap,
                vm=w.vm,
                source=w.source,
                target=w.target,
                reserved_mib=reserved,
                outbound_mib=outbound,
                groups=groups,
                inbound_vms={k: frozenset(v) for k, v in inbound_vms.items()},
                can_run=self.port.can_run,
            )
            if verdict.skip is not None:
                self._finish(
                    w,
                    Outcome(
                        result=Result.SKIPPED.value,
                        skip_reason=verdict.skip.value,
                        error=verdict.detail,
                        detail=w.notes,
                    ),
                    now,
                )
                continue
            if verdict.wait is not None:
                held |= hosts
                w.waiting_for = verdict.wait
                continue
            w.memory_mib = snap.vm(w.vm).memory_mib
            if self._start(w, now):
                self._count(w, host_count, reserved, outbound, inbound_vms, busy_vms)
                busy_groups |= mine

    @staticmethod
    def _count(
        w: _Work,
        host_count: Counter[str],
        reserved: Counter[str],
        outbound: Counter[str],
        inbound_vms: dict[str, set[str]],
        busy_vms: set[str],
    ) -> None:
        host_count[w.source] += 1
        host_count[w.target] += 1
        reserved[w.target] += w.memory_mib
        outbound[w.source] += w.memory_mib
        inbound_vms.setdefault(w.target, set()).add(w.vm)
        busy_vms.add(w.vm)

    def _preempt(self, w: _Work, host_count: Counter[str], now: datetime) -> None:
        """Abort one lower-class migration in flight that holds a slot ``w`` needs."""
        cfg = self.config
        if any(o.abort_reason is AbortReason.PREEMPTED for o in self._inflight.values()):
            return  # one at a time: wait for the last preemption to free its slot
        total_full = len(self._inflight) >= cfg.concurrent_total
        full = {h for h in (w.source, w.target) if host_count[h] >= cfg.concurrent_per_host}
        victims = [
            o
            for o in self._inflight.values()
            if o.priority < w.priority
            and o.abort_reason is None
            and (total_full or {o.source, o.target} & full)
        ]
        if victims:
            victim = min(victims, key=lambda o: (o.priority, -o.request_id))
            self._abort(
                victim,
                AbortReason.PREEMPTED,
                now,
                f"making room for request {w.request_id} ({w.priority.label})",
            )

    def _start(self, w: _Work, now: datetime) -> bool:
        ok = self.store.transition(
            w.request_id,
            "starting",
            at=now,
            expect={j.QUEUED},
            state=j.STARTING,
            started_at=now,
            target=w.target,
            detail=f"attempt {w.attempt}",
        )
        if not ok:  # finished elsewhere (e.g. cancelled by another process)
            self._queue.pop(w.request_id, None)
            return False
        try:
            job = self.port.start_migration(w.vm, w.source, w.target, self.config.options)
        except HypervisorError as exc:
            del self._queue[w.request_id]
            w.started_at = now
            self._inflight[w.request_id] = w  # so that a retry or the outcome takes it out
            if str(getattr(exc, "detail", "")).startswith(SkipReason.STORAGE_NOT_SHARED.value):
                # blocked, not failed: no other target would see the disks either
                self._finish(
                    w,
                    Outcome(
                        result=Result.SKIPPED.value,
                        skip_reason=SkipReason.STORAGE_NOT_SHARED.value,
                        error=str(exc),
                        detail=w.notes,
                    ),
                    now,
                )
                return False
            if not self._retry(w, now, str(exc)):
                self._finish(
                    w,
                    Outcome(result=Result.FAILED.value, error=str(exc), detail=w.notes),
                    now,
                )
            return False
        self.store.transition(
            w.request_id,
            "started",
            at=now,
            expect={j.STARTING},
            state=j.RUNNING,
            job_id=job,
        )
        del self._queue[w.request_id]
        w.job_id = job
        w.started_at = now
        w.last_change_at = now
        w.last_written_at = now
        w.waiting_for = ""
        self._inflight[w.request_id] = w
        return True

    # -- helpers -----------------------------------------------------------------------------
    def _finish(self, w: _Work, outcome: Outcome, now: datetime) -> None:
        self._queue.pop(w.request_id, None)
        self._inflight.pop(w.request_id, None)
        if self.store.finish(w.request_id, outcome, at=now):
            self._note_result(result_of(self.store.request(w.request_id)))

    def _note_result(self, result: MigrationResult) -> None:
        self._finished += 1
        self._recent.append(result)
        if self._on_result is not None:
            self._on_result(result)

    def _locate(self, vm: str) -> str | None:
        try:
            return self.port.locate(vm)
        except HypervisorError:
            return None

    def _only_on(self, vm: str, host: str) -> bool:
        try:
            snap = self.port.snapshot()
        except HypervisorError:
            return False
        return [v.host for v in snap.vms if v.name == vm] == [host]

    def _superseded_reason(
        self, plan: Plan, made: datetime, now: datetime, plan_snapshot: Snapshot | None
    ) -> str | None:
        age = (now - made).total_seconds()
        if age > self.config.max_plan_age_s:
            return (
                f"the plan is {age:.0f} s older than its snapshot "
                f"(limit {self.config.max_plan_age_s:.0f} s)"
            )
        if not self.config.check_premises:
            return None
        live = self.port.snapshot()
        if plan_snapshot is not None:
            if premises_digest(plan_snapshot) != premises_digest(live):
                return (
                    "the plan's premises changed: placement or host states differ from its snapshot"
                )
            return None
        placement = live.placement()
        seen: set[str] = set()
        for m in sorted(plan.moves, key=lambda m: m.step):
            if m.vm in seen:
                continue
            seen.add(m.vm)
            if placement.get(m.vm) != m.source:
                return (
                    f"the plan's premises changed: {m.vm} runs on "
                    f"{placement.get(m.vm) or 'no host'}, not on {m.source}"
                )
        return None


def _order(w: _Work) -> tuple[int, int]:
    return (-w.priority.value, w.request_id)


def _reset(w: _Work) -> None:
    w.job_id = None
    w.started_at = None
    w.abort_reason = None
    w.abort_sent_at = None
    w.last_mark = (-1.0, -1)
    w.errors = 0
    w.fraction = 0.0


def _new_request(r: MigrationRequest) -> NewRequest:
    return NewRequest(
        vm=r.vm,
        source=r.source,
        target=r.target,
        priority=r.priority.value,
        priority_class=r.priority.label,
        who=r.who,
        reason=reason_label(r.reason, r.rule),
        rule=r.rule,
        gain=r.gain,
        policy_digest=r.policy_digest,
        allow_retry=r.allow_retry,
        preempt=r.preempt,
    )


def transport_note(p: MigrationProgress) -> str:
    """How the stream and the disks moved, for the audit record: e.g. ``stream: TLS; storage:
    shared`` (empty when the hypervisor did not say)."""
    parts = []
    if p.encrypted is not None:
        parts.append(f"stream: {'TLS' if p.encrypted else 'unencrypted'}")
    if p.storage:
        parts.append(f"storage: {p.storage}")
    return "; ".join(parts)
