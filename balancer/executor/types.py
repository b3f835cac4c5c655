"""Values of the executor: priority classes, requests, configuration, results and status."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from enum import IntEnum, StrEnum

from balancer.plan import MoveReason
from balancer.port import MigrationOptions
from policies.model import Policy


class PriorityClass(IntEnum):
    """Highest first: a higher class overtakes queued lower work (never work in flight, unless
    the request asks to preempt)."""

    EVACUATION = 60  # maintenance, quarantine
    RULE_REPAIR = 50
    MANUAL_HIGH = 40
    BALANCE = 30
    MANUAL_NORMAL = 20
    MANUAL_LOW = 10

    @property
    def label(self) -> str:
        return self.name.lower()

    @classmethod
    def for_reason(cls, reason: MoveReason, rule: str | None = None) -> PriorityClass:
        """The class of a plan move by its reason (a manual move is ``manual_normal``; a move
        that makes room has the class of what it serves: a rule repair, else an evacuation)."""
        if reason in (MoveReason.MAINTENANCE, MoveReason.QUARANTINE):
            return cls.EVACUATION
        if reason is MoveReason.RULE or (reason is MoveReason.MAKE_ROOM and rule):
            return cls.RULE_REPAIR
        if reason is MoveReason.MAKE_ROOM:
            return cls.EVACUATION
        if reason is MoveReason.MANUAL:
            return cls.MANUAL_NORMAL
        return cls.BALANCE

    @classmethod
    def from_label(cls, label: str) -> PriorityClass:
        try:
            return cls[label.upper()]
        except KeyError:
            raise ValueError(f"unknown priority class {label!r}") from None


class Result(StrEnum):
    """The one final outcome of every request."""

    SUCCEEDED = "succeeded"
    FAILED = "failed"
    ABORTED = "aborted"
    SKIPPED = "skipped"
    SUPERSEDED = "superseded"


class SkipReason(StrEnum):
    """Why the pre-start re-check (or the operator) did not start a move."""

    VM_GONE = "vm_gone"  # the VM is on no reachable host
    VM_MOVED = "vm_moved"  # the VM no longer runs on the move's source
    ALREADY_ON_TARGET = "already_on_target"
    SOURCE_UNREACHABLE = "source_unreachable"
    TARGET_UNKNOWN = "target_unknown"
    TARGET_NOT_ACTIVE = "target_not_active"  # maintenance, quarantined or unreachable
    CPU_INCOMPATIBLE = "cpu_incompatible"
    NO_ROOM = "no_room"  # the target lacks memory, counting migrations in flight to it
    ANTI_AFFINITY = "anti_affinity"  # a member of the VM's anti-affinity group is on the target
    #: the VM's disks are not shared with the target and the policy forbids copying them
    STORAGE_NOT_SHARED = "storage_not_shared"
    CANCELLED = "cancelled"


class AbortReason(StrEnum):
    STALL = "stall"  # no progress for ``stall_timeout_s``
    TIME_LIMIT = "time_limit"  # running longer than ``time_limit_s``
    CANCELLED = "cancelled"
    PREEMPTED = "preempted"  # made room for a higher class that asked to preempt (requeued)
    SHUTDOWN = "shutdown"  # abort_all / stop with abort


@dataclass(frozen=True, slots=True, kw_only=True)
class MigrationRequest:
    """One thing that moves a VM: a plan step, an evacuation, a manual or scheduled request."""

    vm: str
    source: str
    target: str
    priority: PriorityClass
    reason: MoveReason
    rule: str | None = None
    #: the authenticated user, or ``balancer`` (plan moves get ``balancer plan <id>``)
    who: str = "balancer"
    gain: float = 0.0
    policy_digest: str = ""
    #: on failure, try once more on the next best target (from the target chooser)
    allow_retry: bool = False
    #: abort lower-class migrations in flight when the limits leave no slot for this one
    preempt: bool = False


@dataclass(frozen=True, slots=True, kw_only=True)
class ExecutorConfig:
    concurrent_per_host: int = 2
    concurrent_total: int = 8
    stall_timeout_s: float = 60.0
    time_limit_s: float = 1800.0
    poll_interval_s: float = 1.0
    #: how often a running migration's progress is written to the journal
    progress_every_s: float = 10.0
    #: a plan older than this (relative to the snapshot it was made for) is superseded
    max_plan_age_s: float = 900.0
    #: compare a plan's premises (placement, host states) with the live cluster at submission
    check_premises: bool = True
    options: MigrationOptions = field(default_factory=MigrationOptions)

    def __post_init__(self) -> None:
        if self.concurrent_per_host < 1 or self.concurrent_total < 1:
            raise ValueError("concurrency limits must be at least 1")
        if self.poll_interval_s <= 0:
            raise ValueError("poll_interval_s must be positive")

    @classmethod
    def from_policy(cls, policy: Policy, **overrides: object) -> ExecutorConfig:
        m = policy.migration
        base: dict[str, object] = {
            "concurrent_per_host": policy.limits.concurrent_per_host,
            "concurrent_total": policy.limits.concurrent_total,
            "stall_timeout_s": m.stall_timeout_s,
            "time_limit_s": m.time_limit_s,
            "options": MigrationOptions(
                bandwidth_mib_s=m.bandwidth_mib_s,
                max_downtime_ms=m.max_downtime_ms,
                auto_converge=m.auto_converge,
                post_copy=m.post_copy,
                copy_storage=m.allow_storage_copy,
                tls=m.tls,
            ),
        }
        base.update(overrides)
        return cls(**base)  # type: ignore[arg-type]


@dataclass(frozen=True, slots=True, kw_only=True)
class MigrationResult:
    """A request's final outcome as the CLI, the API and the tests see it."""

    request_id: int
    vm: str
    source: str
    target: str
    result: Result
    plan_id: str | None = None
    priority: PriorityClass = PriorityClass.BALANCE
    attempt: int = 1
    duration_s: float | None = None
    downtime_ms: float | None = None
    data_copied_mib: float | None = None
    skip_reason: str | None = None
    error: str | None = None
    ended_at: datetime | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class QueuedView:
    request_id: int
    vm: str
    source: str
    target: str
    priority: PriorityClass
    plan_id: str | None
    step: int | None
    #: why it is not running yet: "" (next tick), "limit", "plan_order", "anti_affinity", ...
    waiting_for: str = ""


@dataclass(frozen=True, slots=True, kw_only=True)
class RunningView:
    request_id: int
    vm: str
    source: str
    target: str
    priority: PriorityClass
    job_id: str | None
    started_at: datetime
    fraction: float
    aborting: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class ExecutorStatus:
    queued: tuple[QueuedView, ...]
    running: tuple[RunningView, ...]
    finished: int
    stopping: bool = False
