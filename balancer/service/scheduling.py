"""The service's jobs (APScheduler 3) and the operators' scheduled tasks.

* Internal jobs (memory job store): ``collect``, ``balance``, ``policy_reload``. Each has
  ``max_instances=1`` (no job overlaps itself) and ``coalesce=True`` (missed runs collapse).
* Scheduled tasks (SQLAlchemy job store ``tasks`` on the service database, so they survive a
  restart): one-off (``at``) or recurring (``cron``, five fields, UTC) runs of ``migrate``,
  ``maintenance_enter``, ``maintenance_exit``, ``automation`` and ``balance``. The creator is
  stored with the task; every run is recorded in ``svc_task_run`` and in the audit trail.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa
from apscheduler.events import EVENT_JOB_ERROR, JobExecutionEvent
from apscheduler.executors.pool import ThreadPoolExecutor
from apscheduler.jobstores.base import JobLookupError
from apscheduler.jobstores.memory import MemoryJobStore
from apscheduler.jobstores.sqlalchemy import SQLAlchemyJobStore
from apscheduler.schedulers.background import BackgroundScheduler
from apscheduler.triggers.cron import CronTrigger
from apscheduler.triggers.date import DateTrigger
from apscheduler.triggers.interval import IntervalTrigger

from balancer.errors import BalancerError, InputError
from balancer.service.errors import NotFoundError
from balancer.service.logs import fields
from balancer.service.views import TaskRunView, TaskView
from policies.model import Automation
from policies.windows import trigger as cron_trigger

if TYPE_CHECKING:
    from balancer.model import Snapshot
    from balancer.service.core import Service

log = logging.getLogger("balancer.service.tasks")

TASK_STORE = "tasks"
TASK_TABLE = "svc_apscheduler_jobs"


class TaskKind(StrEnum):
    MIGRATE = "migrate"  # args: vm, target, priority (high|normal|low)
    MAINTENANCE_ENTER = "maintenance_enter"  # args: host
    MAINTENANCE_EXIT = "maintenance_exit"  # args: host, move_back (true|false)
    AUTOMATION = "automation"  # args: level (manual|partial|full|policy)
    BALANCE = "balance"  # no args

    @property
    def required(self) -> tuple[str, ...]:
        return {
            TaskKind.MIGRATE: ("vm", "target"),
            TaskKind.MAINTENANCE_ENTER: ("host",),
            TaskKind.MAINTENANCE_EXIT: ("host",),
            TaskKind.AUTOMATION: ("level",),
            TaskKind.BALANCE: (),
        }[self]

    @property
    def optional(self) -> tuple[str, ...]:
        return {
            TaskKind.MIGRATE: ("priority",),
            TaskKind.MAINTENANCE_EXIT: ("move_back",),
        }.get(self, ())

    @property
    def role(self) -> str:
        """The role needed to create a task of this kind."""
        return "admin" if self is TaskKind.AUTOMATION else "operator"


def check_args(kind: TaskKind, args: dict[str, str]) -> None:
    """The arguments' presence and values (an InputError naming ``args.<name>``)."""
    for key in kind.required:
        if not args.get(key):
            raise InputError(f"args.{key}: required for a {kind.value} task")
    extra = set(args) - set(kind.required) - set(kind.optional)
    if extra:
        raise InputError(f"args.{sorted(extra)[0]}: not an argument of a {kind.value} task")
    if kind is TaskKind.MIGRATE and args.get("priority", "normal") not in ("high", "normal", "low"):
        raise InputError("args.priority: one of high, normal, low")
    if kind is TaskKind.AUTOMATION and args["level"] not in ("manual", "partial", "full", "policy"):
        raise InputError("args.level: one of manual, partial, full, policy")
    if kind is TaskKind.MAINTENANCE_EXIT and args.get("move_back", "false") not in (
        "true",
        "false",
    ):
        raise InputError("args.move_back: true or false")


#: the arguments that name something of the cluster, and what
_REFS = {"vm": "VM", "target": "host", "host": "host"}


def check_refs(args: dict[str, str], snapshot: Snapshot) -> None:
    """The VMs and hosts the arguments name exist in the cluster now (an InputError naming
    ``args.<name>`` and the unknown name): a task that could only fail is refused up front."""
    known = {"VM": set(snapshot.vm_map()), "host": set(snapshot.host_map())}
    for key, what in _REFS.items():
        name = args.get(key)
        if name is not None and name not in known[what]:
            raise InputError(f"args.{key}: no {what} {name!r} in the cluster")


#: what the task store keeps as every task's function (APScheduler stores jobs by reference);
#: the store of each service binds the jobs it loads to that service (:class:`TaskStore`)
TASK_FUNC = "balancer.service.scheduling:run_task"


def run_task(task_id: str, kind: str, args: dict[str, str], who: str) -> None:
    """The reference every task is stored with. A job loaded through a :class:`TaskStore` runs
    its service's :meth:`Scheduler.run_task` instead; reaching this means a job was loaded by
    a scheduler that belongs to no service, so it is refused."""
    log.error("task %s (%s): not run: it was not loaded by a service's task store", task_id, kind)


class TaskStore(SQLAlchemyJobStore):  # type: ignore[misc]
    """The durable task store of one service: every task it loads runs against that service.

    There is no module-level "current service": several clusters' schedulers live in one process
    (balancer.ha), and each runs its own tasks."""

    def __init__(self, run: Callable[..., None], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._run = run

    def _reconstitute_job(self, job_state: bytes) -> Any:
        job = super()._reconstitute_job(job_state)
        if job.func_ref == TASK_FUNC:
            job.func = self._run
        return job


def svc_run_task(
    svc: Service, task_id: str, kind: TaskKind, args: dict[str, str], who: str
) -> None:
    now = svc.clock.now()
    runner = f"{who} (task {task_id})"
    try:
        if kind is TaskKind.MIGRATE:
            m = svc.request_migration(
                args["vm"], args["target"], priority=args.get("priority", "normal"), who=runner
            )
            detail = f"migration {m.id}: {m.vm} {m.source} -> {m.target}"
        elif kind is TaskKind.MAINTENANCE_ENTER:
            v = svc.enter_maintenance(args["host"], who=runner)
            detail = f"{v.host} {v.state}: {v.total_vms} VMs"
        elif kind is TaskKind.MAINTENANCE_EXIT:
            v = svc.exit_maintenance(
                args["host"], who=runner, move_back=args.get("move_back") == "true"
            )
            detail = f"{v.host} {v.state}"
        elif kind is TaskKind.AUTOMATION:
            level = args["level"]
            svc.set_automation(None if level == "policy" else Automation(level), who=runner)
            detail = f"automation {level}"
        else:
            p = svc.balance(who=runner)
            detail = f"plan {p.id}: {p.status}, {len(p.moves)} moves"
        result = "ok"
    except BalancerError as exc:
        result, detail = "failed", str(exc)
    svc.store.add_task_run(
        task_id=task_id, at=now, kind=kind.value, who=who, result=result, detail=detail
    )
    svc.audit.record(
        at=now, kind="task", who=runner, result=result, detail=f"{kind.value}: {detail}"
    )
    log.info(
        "task %s (%s) %s: %s",
        task_id,
        kind.value,
        result,
        detail,
        extra=fields(task_id=task_id, user=who),
    )


@dataclass(frozen=True, slots=True, kw_only=True)
class Intervals:
    collect_s: float
    balance_s: float
    policy_reload_s: float
    #: the periodic verification of the audit chain (None: no such job)
    audit_verify_s: float | None = None


#: the breakers' timer: at least every second, and twice per collect interval
BREAKER_TICK_S = 1.0


def breaker_tick_s(collect_s: float) -> float:
    return min(BREAKER_TICK_S, collect_s / 2)


class Scheduler:
    """APScheduler with the service's jobs and the durable task store."""

    def __init__(
        self,
        svc: Service,
        engine: sa.Engine,
        intervals: Intervals,
        audit_check: Callable[[], object] | None = None,
    ) -> None:
        self.svc = svc
        self.intervals = intervals
        self.audit_check = audit_check
        self.scheduler = BackgroundScheduler(
            jobstores={
                "default": MemoryJobStore(),
                TASK_STORE: TaskStore(self.run_task, engine=engine, tablename=TASK_TABLE),
            },
            executors={"default": ThreadPoolExecutor(4)},
            job_defaults={"coalesce": True, "max_instances": 1, "misfire_grace_time": 3600},
            timezone=UTC,
        )
        self.scheduler.add_listener(self._on_error, EVENT_JOB_ERROR)

    def _on_error(self, event: JobExecutionEvent) -> None:
        log.error("job %s failed: %s", event.job_id, event.exception)

    def start(self, *, paused: bool = False) -> None:
        """Start the jobs; ``paused``: a standby (balancer.ha) holds them until it leads."""
        s = self.scheduler
        now = datetime.now(UTC)
        s.add_job(
            self._collect,
            IntervalTrigger(seconds=self.intervals.collect_s),
            id="collect",
            name="collect",
            next_run_time=now,
        )
        # the first balance cycle comes soon after the first samples, not a full period later
        first = min(self.intervals.balance_s, 2 * self.intervals.collect_s)
        s.add_job(
            self._balance,
            IntervalTrigger(seconds=self.intervals.balance_s),
            id="balance",
            name="balance",
            next_run_time=now + timedelta(seconds=first),
        )
        # breakers open and close between collects (metrics going stale is a matter of time):
        # they are evaluated on a timer of their own, so each change is audited when it happens
        s.add_job(
            self._breakers,
            IntervalTrigger(seconds=breaker_tick_s(self.intervals.collect_s)),
            id="breakers",
            name="breakers",
        )
        s.add_job(
            self._reload,
            IntervalTrigger(seconds=self.intervals.policy_reload_s),
            id="policy_reload",
            name="policy reload",
        )
        if self.audit_check is not None and self.intervals.audit_verify_s is not None:
            s.add_job(
                self._audit_verify,
                IntervalTrigger(seconds=self.intervals.audit_verify_s),
                id="audit_verify",
                name="audit verify",
                next_run_time=now,
            )
        s.start(paused=paused)

    def pause(self) -> None:
        """Stop running jobs and tasks (a stopping service takes no new work)."""
        if self.scheduler.running:
            self.scheduler.pause()

    def shutdown(self) -> None:
        if self.scheduler.running:
            self.scheduler.shutdown(wait=False)

    def run_task(self, task_id: str, kind: str, args: dict[str, str], who: str) -> None:
        """Run one scheduled task against this scheduler's service (as leader only)."""
        if not self.svc.leading():
            log.warning("task %s: not run: this instance no longer leads the cluster", task_id)
            return
        svc_run_task(self.svc, task_id, TaskKind(kind), args, who)

    def _collect(self) -> None:
        if self.svc.stopping:
            return
        try:
            self.svc.collect()
        except BalancerError as exc:
            log.warning("collect: %s", exc)

    def _balance(self) -> None:
        if self.svc.stopping:
            return
        try:
            self.svc.balance()
        except BalancerError as exc:
            log.warning("balance: %s", exc)

    def _breakers(self) -> None:
        try:
            self.svc.watch_breakers()
            self.svc.watch_health()
        except BalancerError as exc:
            log.warning("breakers: %s", exc)

    def _reload(self) -> None:
        self.svc.reload_policy()

    def _audit_verify(self) -> None:
        assert self.audit_check is not None
        try:
            self.audit_check()
        except BalancerError as exc:
            log.warning("audit verify: %s", exc)

    def run_soon(self, job_id: str) -> None:
        """Run an internal job now (e.g. a maintenance step after a request)."""
        job = self.scheduler.get_job(job_id)
        if job is not None:
            job.modify(next_run_time=datetime.now(UTC))

    # -- scheduled tasks ---------------------------------------------------------------------
    def add_task(
        self,
        *,
        kind: TaskKind,
        args: dict[str, str],
        who: str,
        at: datetime | None,
        cron: str | None,
    ) -> TaskView:
        check_args(kind, args)
        if any(k in args for k in _REFS):
            check_refs(args, self.svc.snapshot())
        if (at is None) == (cron is None):
            raise InputError("at: give exactly one of at (one-off) and cron (recurring)")
        now = datetime.now(UTC)
        trigger: DateTrigger | CronTrigger
        if at is not None:
            if at.tzinfo is None:
                raise InputError("at: a time zone is required (e.g. 2026-12-01T02:00:00Z)")
            if at <= now:
                raise InputError("at: the time is in the past")
            trigger = DateTrigger(run_date=at, timezone=UTC)
            schedule = f"at {at.astimezone(UTC).isoformat()}"
        else:
            assert cron is not None
            try:
                # weekdays numbered as cron does (0 and 7 Sunday), as in the policy's windows
                trigger = cron_trigger(cron, "UTC")
            except ValueError as exc:
                raise InputError(f"cron: {exc}") from exc
            schedule = f"cron {cron}"
        task_id = f"task-{now:%Y%m%dT%H%M%S}-{kind.value}-{abs(hash((who, now))) % 10**6:06d}"
        job = self.scheduler.add_job(
            TASK_FUNC,
            trigger,
            id=task_id,
            name=f"{kind.value}|{who}|{now.isoformat()}|{schedule}",
            jobstore=TASK_STORE,
            kwargs={"task_id": task_id, "kind": kind.value, "args": dict(args), "who": who},
            replace_existing=False,
        )
        self.svc.audit.record(
            at=now,
            kind="task",
            who=who,
            result="scheduled",
            detail=f"{task_id}: {kind.value} {args} {schedule}",
        )
        return _task_view(job)

    def tasks(self) -> list[TaskView]:
        return [_task_view(j) for j in self.scheduler.get_jobs(jobstore=TASK_STORE)]

    def cancel_task(self, task_id: str, *, who: str) -> None:
        try:
            self.scheduler.remove_job(task_id, jobstore=TASK_STORE)
        except JobLookupError:
            raise NotFoundError(f"task_id: no task {task_id!r}") from None
        self.svc.audit.record(
            at=datetime.now(UTC), kind="task", who=who, result="cancelled", detail=task_id
        )

    def runs(self, limit: int = 100) -> list[TaskRunView]:
        return [
            TaskRunView(
                task_id=r.task_id, at=r.at, kind=r.kind, who=r.who, result=r.result, detail=r.detail
            )
            for r in self.svc.store.task_runs(limit=limit)
        ]


def _task_view(job: Any) -> TaskView:
    kw = job.kwargs
    parts = str(job.name).split("|", 3)
    created: datetime | None = None
    if len(parts) == 4:
        try:
            created = datetime.fromisoformat(parts[2])
        except ValueError:
            created = None
    return TaskView(
        id=job.id,
        kind=kw.get("kind", ""),
        args={str(k): str(v) for k, v in kw.get("args", {}).items()},
        who=kw.get("who", ""),
        created_at=created,
        schedule=parts[3] if len(parts) == 4 else str(job.trigger),
        next_run=getattr(job, "next_run_time", None),
    )
