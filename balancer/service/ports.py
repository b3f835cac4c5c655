"""The small interfaces the service needs from the optimizer and the executor.

The service is the imperative shell; it never plans or migrates by itself. It depends on these
protocols only, and :mod:`balancer.service.adapters` binds them to the real optimizer
(:mod:`balancer.planner`) and executor (:mod:`balancer.executor`). Tests may bind fakes.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Protocol

from balancer.model import Snapshot
from balancer.plan import Move, MoveReason, Plan
from balancer.predictive import Outlook
from policies.model import Policy


class Priority(StrEnum):
    """Priority classes of the executor's queue, highest first."""

    EVACUATION = "evacuation"
    RULE_REPAIR = "rule_repair"
    MANUAL_HIGH = "manual_high"
    BALANCE = "balance"
    MANUAL_NORMAL = "manual_normal"
    MANUAL_LOW = "manual_low"

    @staticmethod
    def for_reason(reason: MoveReason, rule: str | None = None) -> Priority:
        if reason in (MoveReason.MAINTENANCE, MoveReason.QUARANTINE, MoveReason.TEMPORARY):
            return Priority.EVACUATION
        if reason is MoveReason.RULE:
            return Priority.RULE_REPAIR
        if reason is MoveReason.MAKE_ROOM:
            # as urgent as what it makes room for: a rule repair, or else an evacuation
            return Priority.RULE_REPAIR if rule else Priority.EVACUATION
        if reason is MoveReason.MANUAL:
            return Priority.MANUAL_NORMAL
        return Priority.BALANCE


class MigrationState(StrEnum):
    QUEUED = "queued"
    STARTING = "starting"
    RUNNING = "running"
    ABORTING = "aborting"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    ABORTED = "aborted"
    SKIPPED = "skipped"
    SUPERSEDED = "superseded"

    @property
    def active(self) -> bool:
        return self in (
            MigrationState.QUEUED,
            MigrationState.STARTING,
            MigrationState.RUNNING,
            MigrationState.ABORTING,
        )


@dataclass(frozen=True, slots=True, kw_only=True)
class MoveRequest:
    """One migration to hand to the executor."""

    vm: str
    source: str
    target: str
    reason: MoveReason
    priority: Priority
    rule: str | None = None
    gain: float = 0.0
    step: int | None = None
    allow_retry: bool = False

    @staticmethod
    def from_move(move: Move, priority: Priority | None = None) -> MoveRequest:
        return MoveRequest(
            vm=move.vm,
            source=move.source,
            target=move.target,
            reason=move.reason,
            priority=priority or Priority.for_reason(move.reason, move.rule),
            rule=move.rule,
            gain=move.gain,
            step=move.step,
            allow_retry=move.reason.mandatory,
        )


@dataclass(frozen=True, slots=True, kw_only=True)
class Migration:
    """What the service shows of one migration request (queued, in flight or finished)."""

    id: int
    vm: str
    source: str
    target: str
    state: MigrationState
    priority: str
    reason: str
    who: str
    plan_id: str | None
    created_at: datetime
    updated_at: datetime
    fraction: float = 0.0
    duration_s: float | None = None
    error: str | None = None


class PlannerPort(Protocol):
    """The optimizer and planner: pure, snapshot and policy in, plan out. With an ``outlook``
    (predictive balancing) the plan is made on its demand and cut to the steps that are safe
    on the snapshot's (:func:`balancer.predictive.predictive_plan`)."""

    def plan(
        self,
        snapshot: Snapshot,
        policy: Policy,
        *,
        held: frozenset[str],
        seed: int,
        time_limit_s: float,
        outlook: Outlook | None = None,
    ) -> Plan: ...


class ExecutorPort(Protocol):
    """The executor's queue and worker, and the journal behind it."""

    def start(self) -> None:
        """Recover what a previous run left in flight, then start the worker."""
        ...

    def submit(
        self,
        requests: Sequence[MoveRequest],
        *,
        who: str,
        plan_id: str | None,
        snapshot_digest: str,
        policy_digest: str,
        made_at: datetime,
    ) -> list[int]:
        """Queue requests (a plan's moves keep their order); returns their ids."""
        ...

    def cancel(self, migration_id: int, *, who: str) -> bool:
        """Cancel queued or running work; False when it was already final."""
        ...

    def supersede_queued(self, plan_id: str, reason: str) -> list[int]:
        """Finish the plan's requests not started yet as superseded; their ids."""
        ...

    def migrations(self, *, active_only: bool = False, limit: int = 200) -> list[Migration]:
        """Newest first."""
        ...

    def stop_taking_work(self) -> None:
        """Start nothing new; what is in flight continues."""
        ...

    def wait_idle(self, timeout_s: float) -> bool:
        """Wait until nothing is in flight; True when that happened within the timeout."""
        ...

    def abort_all(self, *, reason: str) -> None:
        """Abort every migration in flight (the VMs stay on their sources)."""
        ...

    def close(self) -> None: ...


@dataclass(frozen=True, slots=True, kw_only=True)
class AuditItem:
    """One record of the audit trail as the service shows it."""

    seq: int
    at: datetime
    kind: str
    who: str
    plan_id: str | None = None
    request_id: int | None = None
    vm: str | None = None
    source: str | None = None
    target: str | None = None
    priority_class: str | None = None
    reason: str | None = None
    policy_digest: str | None = None
    result: str | None = None
    duration_s: float | None = None
    error: str | None = None
    detail: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class AuditFilter:
    since: datetime | None = None
    until: datetime | None = None
    vm: str | None = None
    host: str | None = None
    user: str | None = None
    kind: str | None = None
    limit: int = 100


class AuditPort(Protocol):
    """The hash-chained audit trail (shared with the executor)."""

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
    ) -> None: ...

    def query(self, f: AuditFilter) -> list[AuditItem]:
        """Matching records, newest first."""
        ...
