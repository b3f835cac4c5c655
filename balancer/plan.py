"""Plan values: what the optimizer and planner return, the executor carries out, and the
API, CLI and audit trail show. Reasons are enums, never free text built in many places."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class MoveReason(StrEnum):
    MAINTENANCE = "maintenance"
    RULE = "rule"  # shown as "rule:<name>"
    QUARANTINE = "quarantine"
    BALANCE = "balance"
    CONSOLIDATE = "consolidate"
    MANUAL = "manual"
    TEMPORARY = "temporary"  # a parking move that breaks a swap or a cycle

    @property
    def mandatory(self) -> bool:
        return self in (MoveReason.MAINTENANCE, MoveReason.RULE, MoveReason.QUARANTINE)


class BlockedReason(StrEnum):
    CPU_INCOMPATIBLE = "cpu_incompatible"  # no candidate host has the VM's CPU features
    RULE = "rule"  # a hard rule forbids every candidate
    CAPACITY = "capacity"  # no candidate has room (with headroom, in flight)
    EXCLUDED = "excluded"  # excluded by policy from automatic moves
    COOLDOWN = "cooldown"  # moved for balance too recently / ping-pong hold
    UNREACHABLE = "unreachable"  # its host is unreachable
    MOVE_BUDGET = "move_budget"  # limits.moves_per_cycle exhausted
    NO_TARGET = "no_target"  # every host is in maintenance, quarantined or unreachable
    #: it runs (reality) on a host that lacks CPU features it requires: detail names them
    CPU_FEATURES_MISSING = "cpu_features_missing"


class CauseKind(StrEnum):
    """What makes an input infeasible (or a policy contradictory against a cluster)."""

    RULE = "rule"  # the rules contradict each other whatever the cluster
    HOST_STATE = "host_state"  # the hosts the rules allow cannot take VMs
    CPU_FEATURES = "cpu_features"  # the hosts the rules allow lack the VMs' CPU features
    CAPACITY = "capacity"  # the hosts the rules allow have no room
    MOVE_BUDGET = "move_budget"  # limits.moves_per_cycle is too small for the repair


@dataclass(frozen=True, slots=True, kw_only=True)
class InfeasibilityCause:
    """One reason why no placement satisfies the hard rules: the minimal set of rules found
    in conflict, the VMs concerned, and a message naming the rules (and their origins)."""

    code: str
    kind: CauseKind
    rules: tuple[str, ...]
    vms: tuple[str, ...] = ()
    message: str = ""


class PlanStatus(StrEnum):
    MOVES = "moves"
    BALANCED = "balanced"
    INFEASIBLE = "infeasible"


def reason_label(reason: MoveReason, rule: str | None) -> str:
    """The one way a move's reason is written out: ``rule:<name>`` or the enum value."""
    return f"rule:{rule}" if reason is MoveReason.RULE and rule else reason.value


@dataclass(frozen=True, slots=True, kw_only=True)
class Move:
    vm: str
    source: str
    target: str
    step: int
    reason: MoveReason
    rule: str | None = None
    #: expected decrease of the imbalance metric from this move (>= 0 for balance moves)
    gain: float = 0.0
    memory_mib: int = 0

    @property
    def reason_label(self) -> str:
        return reason_label(self.reason, self.rule)


@dataclass(frozen=True, slots=True, kw_only=True)
class Blocked:
    vm: str
    reason: BlockedReason
    detail: str = ""
    rule: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class SoftViolation:
    """A soft rule (``should`` / ``should_not``) the plan's end state still breaks: allowed,
    reported. ``kind`` and ``mode`` are the rule's (``anti_affinity``, ``should``); ``vms``
    are the members out of place and ``hosts`` the hosts concerned."""

    rule: str
    kind: str
    mode: str
    vms: tuple[str, ...]
    hosts: tuple[str, ...]


@dataclass(frozen=True, slots=True, kw_only=True)
class Metrics:
    imbalance: float
    cpu_stddev: float
    memory_stddev: float
    max_cpu_load: float
    max_memory_load: float


@dataclass(frozen=True, slots=True, kw_only=True)
class Plan:
    status: PlanStatus
    moves: tuple[Move, ...]
    blocked: tuple[Blocked, ...]
    before: Metrics
    after: Metrics
    solve_seconds: float = 0.0
    #: for an infeasible input: the smallest set of rules found in conflict
    conflicts: tuple[str, ...] = ()
    #: for an infeasible input: why, one cause per conflicting rule set (capacity, CPU, ...)
    causes: tuple[InfeasibilityCause, ...] = ()
    snapshot_digest: str = ""
    policy_digest: str = ""
    #: soft rules the end state still breaks (allowed; shown so that nobody is surprised)
    soft_violations: tuple[SoftViolation, ...] = ()

    @property
    def steps(self) -> int:
        return 1 + max((m.step for m in self.moves), default=-1)
