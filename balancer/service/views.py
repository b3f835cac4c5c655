"""What the service shows: plain values built from its state, turned into JSON by the API."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any


@dataclass(frozen=True, slots=True, kw_only=True)
class AgentSampleView:
    """The newest sample the host's agent posted (``POST /ingest/host``)."""

    at: datetime
    cpu_used_cores: float
    memory_used_mib: int
    net_rx_bps: float | None
    net_tx_bps: float | None
    #: pressure stall information, ``psi_<cpu|memory|io>_<some|full>_<avg10|avg60|avg300>``
    psi: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True, slots=True, kw_only=True)
class HostForecastView:
    """A host's expected CPU peak within the horizon of the last predictive balance cycle."""

    host: str
    present_load: float
    peak_load: float
    peak_cores: float
    peak_at: datetime
    horizon_minutes: int
    quantile: float


@dataclass(frozen=True, slots=True, kw_only=True)
class VMForecastView:
    name: str
    present_cores: float
    #: the demand the last cycle planned against (present when the VM has no forecast yet)
    planned_cores: float
    peak_at: datetime | None


@dataclass(frozen=True, slots=True, kw_only=True)
class ForecastView:
    #: the policy's predictive section is on
    enabled: bool
    #: the service keeps a demand history (collectors.history.enabled)
    history: bool
    history_series: int
    history_oldest: datetime | None
    at: datetime | None
    horizon_minutes: int | None
    quantile: float | None
    weight: float | None
    hosts: list[HostForecastView]
    vms: list[VMForecastView]
    #: VMs planned on their present demand (too little history for a forecast)
    fallback_vms: int


@dataclass(frozen=True, slots=True, kw_only=True)
class HealthSignalView:
    """A host health signal raised now (balancer.service.hostwatch)."""

    signal: str
    since: datetime
    detail: str


@dataclass(frozen=True, slots=True, kw_only=True)
class HostView:
    name: str
    state: str
    cpu_cores: int
    memory_mib: int
    cpu_load: float
    memory_load: float
    vm_count: int
    labels: dict[str, str] = field(default_factory=dict)
    agent: AgentSampleView | None = None
    #: the expected peak of the last predictive balance cycle (None: reactive)
    forecast: HostForecastView | None = None
    #: the health signals raised now (empty: healthy, or the policy watches no health)
    health: list[HealthSignalView] = field(default_factory=list)


@dataclass(frozen=True, slots=True, kw_only=True)
class VMView:
    name: str
    host: str
    vcpus: int
    memory_mib: int
    cpu_used_cores: float


@dataclass(frozen=True, slots=True, kw_only=True)
class HoldView:
    vm: str
    reason: str
    until: datetime | None
    detail: str


@dataclass(frozen=True, slots=True, kw_only=True)
class BreakerView:
    reason: str
    detail: str


@dataclass(frozen=True, slots=True, kw_only=True)
class PolicyView:
    digest: str | None
    path: str
    automation: str | None
    automation_override: str | None
    threshold: int | None
    cooldown_minutes: int | None
    #: the ceiling of the adaptive cooldown (a VM moved again within its cooldown doubles it)
    cooldown_max_minutes: int | None
    loaded_at: datetime | None
    last_error: str | None
    last_error_at: datetime | None
    #: when soft-rule violations are repaired: repair | when_balancing
    soft_rules: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class ClusterLeaderView:
    """One cluster of a high-availability deployment as this instance sees it."""

    cluster: str
    #: this instance's role for the cluster: leader | standby
    role: str
    #: the instance holding the lease (None: nobody now)
    leader: str | None
    epoch: int | None
    since: datetime | None


@dataclass(frozen=True, slots=True, kw_only=True)
class StatusView:
    time: datetime
    backend: str
    hosts: list[HostView]
    vms: list[VMView]
    imbalance: float | None
    max_cpu_load: float | None
    max_memory_load: float | None
    snapshot_digest: str | None
    last_collect: datetime | None
    last_collect_error: str | None
    policy: PolicyView
    automation: str | None
    paused: bool
    pause_reasons: list[BreakerView]
    mandatory_allowed: bool
    holds: list[HoldView]
    pending_recommendations: int
    migrations_active: int
    last_plan_id: str | None
    stopping: bool
    #: high availability: each cluster's leader instance, epoch and since when (balancer.ha)
    clusters: list[ClusterLeaderView] = field(default_factory=list)
    #: the last balance plan's status (moves, balanced, partial, infeasible)
    last_plan_status: str | None = None
    #: hard rules the last balance plan leaves violated, each with its cause
    violations: list[ViolationView] = field(default_factory=list)
    #: why balancing moves are held now by the policy's windows ("frozen by X until ..."),
    #: None when they may run; mandatory moves always run
    window: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class RecommendationView:
    id: int
    created_at: datetime
    plan_id: str
    vm: str
    source: str
    target: str
    reason: str
    gain: float
    state: str
    policy_digest: str
    decided_by: str | None
    decided_at: datetime | None
    migration_id: int | None
    note: str


@dataclass(frozen=True, slots=True, kw_only=True)
class MigrationView:
    id: int
    vm: str
    source: str
    target: str
    state: str
    priority: str
    reason: str
    who: str
    plan_id: str | None
    created_at: datetime
    updated_at: datetime
    fraction: float
    duration_s: float | None
    error: str | None


@dataclass(frozen=True, slots=True, kw_only=True)
class PlannedMove:
    vm: str
    source: str
    target: str
    step: int
    reason: str
    gain: float


@dataclass(frozen=True, slots=True, kw_only=True)
class BlockedVM:
    vm: str
    reason: str
    detail: str = ""
    rule: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class ViolationView:
    """A hard rule a plan leaves violated: the rule, why (``needs_concurrency 3``), who, where."""

    rule: str
    kind: str
    cause: str
    #: the cause as shown: ``needs_concurrency 3`` or the cause
    label: str
    vms: list[str]
    hosts: list[str]
    needed: int = 0
    message: str = ""

    @classmethod
    def of_doc(cls, d: Mapping[str, Any]) -> ViolationView:
        """From a violation as a stored plan document holds it (``plan_io``)."""
        cause, needed = str(d["cause"]), int(d.get("needed", 0))
        return cls(
            rule=str(d["rule"]),
            kind=str(d["kind"]),
            cause=cause,
            label=f"{cause} {needed}" if needed else cause,
            vms=[str(v) for v in d.get("vms", [])],
            hosts=[str(h) for h in d.get("hosts", [])],
            needed=needed,
            message=str(d.get("message", "")),
        )


@dataclass(frozen=True, slots=True, kw_only=True)
class SoftViolationView:
    """A soft rule (should / should_not) a plan's end state still breaks: allowed, shown."""

    rule: str
    kind: str
    mode: str
    vms: list[str]
    hosts: list[str]

    @classmethod
    def of_doc(cls, d: Mapping[str, Any]) -> SoftViolationView:
        """From a soft violation as a stored plan document holds it (``plan_io``)."""
        return cls(
            rule=str(d["rule"]),
            kind=str(d["kind"]),
            mode=str(d["mode"]),
            vms=[str(v) for v in d.get("vms", [])],
            hosts=[str(h) for h in d.get("hosts", [])],
        )


@dataclass(frozen=True, slots=True, kw_only=True)
class PlanView:
    id: str
    created_at: datetime
    kind: str
    status: str
    automation: str
    snapshot_digest: str
    policy_digest: str
    imbalance_before: float
    imbalance_after: float
    solve_seconds: float
    moves: list[PlannedMove]
    blocked: list[BlockedVM]
    executed: list[str]
    recommended: list[str]
    held: list[str]
    note: str
    #: status partial: the hard rules the plan leaves violated, each with its cause
    violations: list[ViolationView] = field(default_factory=list)
    #: the soft rules the plan's end state still breaks (allowed)
    soft_violations: list[SoftViolationView] = field(default_factory=list)


@dataclass(frozen=True, slots=True, kw_only=True)
class PreflightView:
    host: str
    can_enter: bool
    reason: str
    vms: int
    moves: list[PlannedMove]
    blocked: list[BlockedVM]
    other_hosts_in_maintenance: list[str]
    solve_seconds: float


@dataclass(frozen=True, slots=True, kw_only=True)
class VMProgress:
    vm: str
    state: str  # pending | queued | migrating | done | blocked | failed
    target: str | None = None
    fraction: float = 0.0
    migration_id: int | None = None
    attempts: int = 0
    detail: str = ""


@dataclass(frozen=True, slots=True, kw_only=True)
class MaintenanceView:
    id: int
    host: str
    state: str  # evacuating | maintenance | exited
    host_state: str
    who: str
    created_at: datetime
    updated_at: datetime
    finished_at: datetime | None
    total_vms: int
    remaining_vms: int
    done_vms: int
    percent: float
    eta_s: float | None
    stuck: bool
    message: str
    blockers: list[BlockedVM]
    vms: list[VMProgress]
    exited_by: str | None


@dataclass(frozen=True, slots=True, kw_only=True)
class HistoryView:
    at: datetime
    imbalance: float
    max_cpu_load: float
    max_memory_load: float


@dataclass(frozen=True, slots=True, kw_only=True)
class TaskView:
    id: str
    kind: str
    args: dict[str, str]
    who: str
    created_at: datetime | None
    schedule: str
    next_run: datetime | None


@dataclass(frozen=True, slots=True, kw_only=True)
class TaskRunView:
    task_id: str
    at: datetime
    kind: str
    who: str
    result: str
    detail: str


@dataclass(frozen=True, slots=True, kw_only=True)
class ValidationView:
    ok: bool
    digest: str | None
    error: str | None
    findings: list[str]


@dataclass(frozen=True, slots=True, kw_only=True)
class TargetView:
    """A host the VM could move to now (``GET /api/v1/vms/{vm}/targets``), best first."""

    host: str
    #: the host's loads with the VM on it (demand of the last collect cycle)
    cpu_load: float
    memory_load: float
    #: the cluster's imbalance with the VM there
    imbalance: float
    #: soft rules of the VM that moving there would break / repair
    soft_breaks: list[str]
    soft_repairs: list[str]
    #: with a predictive policy: the host's expected CPU peak within the horizon with the VM on
    #: it (both upper-quantile curves added step by step) and when it comes
    forecast_peak_load: float | None = None
    forecast_peak_at: datetime | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class RuledOutView:
    """A host the VM cannot move to now, and why (the same verdict the optimizer uses)."""

    host: str
    #: ``capacity``, ``cpu_features``, ``state``, ``rule:<name>`` ... (see docs/optimizer.md)
    reason: str
    detail: str


@dataclass(frozen=True, slots=True, kw_only=True)
class TargetsView:
    """The migration assistant for one VM on the live cluster."""

    vm: str
    current: str
    #: the snapshot the ranking was made on (the last collect cycle)
    at: datetime
    #: the cluster's imbalance if the VM stays
    imbalance: float
    candidates: list[TargetView]
    ruled_out: list[RuledOutView]
    #: set when the VM runs on a host that lacks its CPU features
    blocked_reason: str | None = None
    blocked_detail: str | None = None
    #: the current host's forecast (predictive policy, after a balance cycle) and the VM's own
    current_forecast: HostForecastView | None = None
    #: the CPU demand the last predictive cycle planned the VM against (None: reactive)
    planned_cores: float | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class PlacementView:
    """Where a new VM should start (``POST /api/v1/placements``), best first; with a domain
    definition also where it was defined (and started)."""

    vm: str
    #: the CPU demand the ranking planned the VM with (cores)
    cpu_demand_cores: float
    candidates: list[TargetView]
    ruled_out: list[RuledOutView]
    placed_on: str | None = None
    started: bool = False


@dataclass(frozen=True, slots=True, kw_only=True)
class GateView:
    """What a host of a rolling maintenance waits for once it is empty."""

    kind: str  # operator | file | command
    path: str | None = None
    command: str | None = None
    timeout_s: float | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class RollingHostView:
    host: str
    position: int
    batch: int
    #: waiting | evacuating | awaiting_gate | done | failed | cancelled
    state: str
    since: datetime
    maintenance_id: int | None
    released_by: str | None
    #: why it does not go on (a stuck evacuation, a refused entry, the gate not met)
    blocker: str


@dataclass(frozen=True, slots=True, kw_only=True)
class RollingView:
    id: int
    state: str  # running | done | failed | cancelled
    who: str
    at_a_time: int
    gate: GateView
    created_at: datetime
    updated_at: datetime
    finished_at: datetime | None
    #: the batch in progress (0-based; None when none is)
    current_batch: int | None
    message: str
    hosts: list[RollingHostView]
