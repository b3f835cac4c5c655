"""Plan values: what the optimizer and planner return, the executor carries out, and the
API, CLI and audit trail show. Reasons are enums, never free text built in many places."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from policies.model import RuleKind, RuleMode


class MoveReason(StrEnum):
    MAINTENANCE = "maintenance"
    RULE = "rule"  # shown as "rule:<name>"
    QUARANTINE = "quarantine"
    BALANCE = "balance"
    CONSOLIDATE = "consolidate"
    MANUAL = "manual"
    TEMPORARY = "temporary"  # a parking move that breaks a swap or a cycle
    #: moved only to make room for an evacuation or a rule repair (shown as
    #: "make_room:<rule>" when it serves a rule); as mandatory as what it serves
    MAKE_ROOM = "make_room"
    #: a balance move planned against the demand forecast (shown as "forecast:<detail>", the
    #: detail naming the source host's expected peak and its time); not mandatory
    FORECAST = "forecast"

    @property
    def mandatory(self) -> bool:
        return self in (
            MoveReason.MAINTENANCE,
            MoveReason.RULE,
            MoveReason.QUARANTINE,
            MoveReason.MAKE_ROOM,
        )


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
    #: feasible moves, but a hard rule stays violated at the end (see ``Plan.violations``)
    PARTIAL = "partial"


class ViolationCause(StrEnum):
    """Why a hard rule stays violated at the end of a plan."""

    #: the repair needs a rule broken for a while (a swap on two hosts, no free host to park on)
    NEEDS_TRANSIENT_VIOLATION = "needs_transient_violation"
    #: an affinity group larger than one step can move (``needed``: the group's size)
    NEEDS_CONCURRENCY = "needs_concurrency"
    CAPACITY = "capacity"  # no allowed host has room (with headroom)
    CPU_FEATURES = "cpu_features"  # no allowed host has the VMs' CPU features
    MOVE_BUDGET = "move_budget"  # limits.moves_per_cycle reached
    EXCLUDED = "excluded"  # a member is excluded by policy from automatic moves
    UNREACHABLE = "unreachable"  # a member's host is unreachable
    NO_TARGET = "no_target"  # every host is in maintenance, quarantined or unreachable


@dataclass(frozen=True, slots=True, kw_only=True)
class Violation:
    """A hard rule violated in a plan's end state, with the reason it could not be repaired."""

    rule: str
    kind: RuleKind
    cause: ViolationCause
    #: the VMs that violate it (the ones that should have moved)
    vms: tuple[str, ...] = ()
    #: the hosts those VMs are on at the end
    hosts: tuple[str, ...] = ()
    #: for needs_concurrency: the concurrent migrations the repair needs
    needed: int = 0
    message: str = ""

    @property
    def cause_label(self) -> str:
        """``needs_concurrency 3`` or the cause's value."""
        if self.cause is ViolationCause.NEEDS_CONCURRENCY and self.needed:
            return f"{self.cause.value} {self.needed}"
        return self.cause.value


#: reasons written with their detail (a rule's name, a forecast's peak) after a colon
_DETAILED = (MoveReason.RULE, MoveReason.MAKE_ROOM, MoveReason.FORECAST)


def reason_label(reason: MoveReason, rule: str | None) -> str:
    """The one way a move's reason is written out: ``rule:<name>``, ``make_room:<name>``,
    ``forecast:<detail>`` or the enum value."""
    if rule and reason in _DETAILED:
        return f"{reason.value}:{rule}"
    return reason.value


def parse_reason_label(label: str) -> tuple[MoveReason, str | None]:
    """The inverse of :func:`reason_label` (ValueError for an unknown reason)."""
    for reason in _DETAILED:
        prefix = f"{reason.value}:"
        if label.startswith(prefix) and len(label) > len(prefix):
            return reason, label[len(prefix) :]
    return MoveReason(label), None


@dataclass(frozen=True, slots=True, kw_only=True)
class Move:
    vm: str
    source: str
    target: str
    step: int
    reason: MoveReason
    #: the rule served (rule, make_room), or the expected peak planned for (forecast)
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
    kind: RuleKind
    mode: RuleMode
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
    #: hard rules still violated at the end, each with its cause (status ``partial``)
    violations: tuple[Violation, ...] = ()
    #: soft rules the end state still breaks (allowed; shown so that nobody is surprised)
    soft_violations: tuple[SoftViolation, ...] = ()

    @property
    def steps(self) -> int:
        return 1 + max((m.step for m in self.moves), default=-1)
