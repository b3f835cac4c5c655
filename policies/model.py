"""Pure policy values: what the optimizer, planner, executor and service read.

Built from policy files by :mod:`policies.loader`; never parsed here. No I/O.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum


class Automation(StrEnum):
    MANUAL = "manual"  # recommend only
    PARTIAL = "partial"  # execute mandatory moves only (maintenance, quarantine, rule repair)
    FULL = "full"  # execute everything


class Goal(StrEnum):
    BALANCE = "balance"
    CONSOLIDATE = "consolidate"


class RuleKind(StrEnum):
    AFFINITY = "affinity"
    ANTI_AFFINITY = "anti_affinity"
    VM_HOST = "vm_host"


class SoftRules(StrEnum):
    """When soft-rule violations are repaired (``soft_rules`` in the policy)."""

    #: in any cycle of a threshold that balances (2..5)
    REPAIR = "repair"
    #: only in cycles that balance anyway (the cluster is outside the threshold's target)
    WHEN_BALANCING = "when_balancing"


class RuleMode(StrEnum):
    MUST = "must"
    SHOULD = "should"
    MUST_NOT = "must_not"
    SHOULD_NOT = "should_not"

    @property
    def hard(self) -> bool:
        return self in (RuleMode.MUST, RuleMode.MUST_NOT)

    @property
    def positive(self) -> bool:
        return self in (RuleMode.MUST, RuleMode.SHOULD)


@dataclass(frozen=True, slots=True, kw_only=True)
class Selector:
    """Selects VMs or hosts by name or by labels (all given labels must match)."""

    names: frozenset[str] = frozenset()
    labels: Mapping[str, str] = field(default_factory=dict)

    def matches(self, name: str, labels: Mapping[str, str]) -> bool:
        if name in self.names:
            return True
        if self.labels:
            return all(labels.get(k) == v for k, v in self.labels.items())
        return False

    def describe(self) -> str:
        parts = sorted(self.names)
        if self.labels:
            parts.append("labels " + ",".join(f"{k}={v}" for k, v in sorted(self.labels.items())))
        return " | ".join(parts)


@dataclass(frozen=True, slots=True, kw_only=True)
class Rule:
    name: str
    kind: RuleKind
    vms: Selector
    hosts: Selector = field(default_factory=Selector)
    mode: RuleMode = RuleMode.MUST
    #: where it was written, for messages: "policies/web.yaml:12"
    origin: str = ""

    @property
    def hard(self) -> bool:
        # every kind follows its mode: affinity / anti_affinity take must (the default) or
        # should, vm_host rules any of the four
        return self.mode.hard

    @property
    def group(self) -> bool:
        """A VM-VM rule (affinity or anti_affinity)."""
        return self.kind is not RuleKind.VM_HOST


class WindowMode(StrEnum):
    ALLOW = "allow"  # balancing only inside (when any allow window exists)
    FREEZE = "freeze"  # no balancing inside


@dataclass(frozen=True, slots=True, kw_only=True)
class Window:
    """A time window for balancing moves (``windows`` in the policy; see policies/windows.py).
    Mandatory moves (maintenance, quarantine, hard-rule repair) ignore windows."""

    name: str
    mode: WindowMode
    #: when it starts: 5-field cron in the policy's time zone
    cron: str
    duration_minutes: int
    origin: str = ""


@dataclass(frozen=True, slots=True, kw_only=True)
class Resources:
    cpu: float
    memory: float


@dataclass(frozen=True, slots=True, kw_only=True)
class Limits:
    moves_per_cycle: int = 32
    concurrent_per_host: int = 2
    concurrent_total: int = 8


@dataclass(frozen=True, slots=True, kw_only=True)
class MigrationSettings:
    bandwidth_mib_s: int = 0  # 0 = unlimited
    max_downtime_ms: int = 300
    auto_converge: bool = True
    post_copy: bool = False
    allow_storage_copy: bool = False
    tls: str = "off"  # off | preferred | required (the migration stream's encryption)
    stall_timeout_s: float = 60.0
    time_limit_s: float = 1800.0


@dataclass(frozen=True, slots=True, kw_only=True)
class Predictive:
    """Plan against the demand expected over the next ``horizon_minutes`` (issue 18): each VM's
    planning demand is ``(1 - weight) x present + weight x peak``, where ``peak`` is the
    forecast's ``quantile`` upper quantile at its highest point within the horizon. Off
    (``weight`` 0, the default) the balancer is reactive."""

    horizon_minutes: int = 60
    quantile: float = 0.9
    weight: float = 0.0

    @property
    def enabled(self) -> bool:
        return self.weight > 0


@dataclass(frozen=True, slots=True, kw_only=True)
class PsiThresholds:
    """Pressure (PSI ``some`` avg60, percent) above which a host is under sustained pressure;
    None: that resource is not watched."""

    cpu: float | None = 80.0
    memory: float | None = 40.0
    io: float | None = 60.0


@dataclass(frozen=True, slots=True, kw_only=True)
class Health:
    """Host health and proactive evacuation (issue 13; see balancer.service.hostwatch): a host
    whose health signals cross these limits is quarantined by the service. Off unless the
    policy has a ``health:`` section (which is on unless it says ``enabled: false``)."""

    enabled: bool = False
    #: failed collects of the host (no answer, timeout) within ``window_minutes``
    connection_failures: int = 3
    #: failed migrations to or from the host within ``window_minutes``
    migration_failures: int = 3
    window_minutes: int = 10
    psi_some_avg60: PsiThresholds = field(default_factory=PsiThresholds)
    #: how long pressure must stay above its threshold
    sustained_minutes: int = 5
    #: a rising EDAC / machine-check error counter is a signal
    hardware_errors: bool = True
    #: a host quarantined by the service returns to active after this long without a signal
    #: (None: only an operator releases it)
    release_after_healthy_minutes: int | None = 30
    #: at most this many hosts quarantined by the service at a time (0: signals only)
    max_quarantined: int = 1


@dataclass(frozen=True, slots=True, kw_only=True)
class Policy:
    automation: Automation = Automation.FULL
    threshold: int = 3
    goal: Goal = Goal.BALANCE
    balance: Resources = field(default_factory=lambda: Resources(cpu=1.0, memory=1.0))
    headroom: Resources = field(default_factory=lambda: Resources(cpu=0.10, memory=0.05))
    limits: Limits = field(default_factory=Limits)
    #: a VM moved for balance is held from balancing this long after the move; moved again
    #: within its cooldown, the next cooldown doubles, up to ``cooldown_max_minutes``
    cooldown_minutes: int = 60
    cooldown_max_minutes: int = 480
    soft_rules: SoftRules = SoftRules.REPAIR
    rules: tuple[Rule, ...] = ()
    exclude: tuple[Selector, ...] = ()
    migration: MigrationSettings = field(default_factory=MigrationSettings)
    predictive: Predictive = field(default_factory=Predictive)
    #: balancing windows and the time zone of their cron expressions
    windows: tuple[Window, ...] = ()
    timezone: str = "UTC"
    health: Health = field(default_factory=Health)
    #: sha256 of the canonical policy content ("" for a policy built in code)
    digest: str = ""

    def excluded(self, name: str, labels: Mapping[str, str]) -> bool:
        return any(s.matches(name, labels) for s in self.exclude)

    def rule(self, name: str) -> Rule:
        for r in self.rules:
            if r.name == name:
                return r
        raise KeyError(name)
