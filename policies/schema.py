"""The policy file schema (pydantic, at the edge). Converted to pure values by the loader.

Every number is finite and bounded (listed in docs/input-hardening.md): weights 0..100,
headroom 0..0.9, limits, cooldown up to a week, migration bandwidth up to 1 000 000 MiB/s,
downtime up to 60 s, stall timeout up to a day, time limit up to a week. Values are strict:
``threshold: "3"`` or ``threshold: true`` is refused, not converted. Names are 1..253
characters.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationInfo,
    field_validator,
    model_validator,
)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True, allow_inf_nan=False)


#: a VM, host or label name (DNS names are at most 253 characters)
Name = Annotated[str, Field(min_length=1, max_length=253)]
#: the largest weight of a resource in the balance objective
MAX_WEIGHT = 100.0


class SelectorDoc(_Strict):
    names: list[Name] = Field(default_factory=list)
    labels: dict[Name, Annotated[str, Field(max_length=253)]] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _not_empty(self) -> SelectorDoc:
        if not self.names and not self.labels:
            raise ValueError("a selector needs names or labels")
        return self


class ResourcesDoc(_Strict):
    cpu: float = Field(ge=0.0, le=MAX_WEIGHT)
    memory: float = Field(ge=0.0, le=MAX_WEIGHT)


class HeadroomDoc(_Strict):
    cpu: float = Field(default=0.10, ge=0.0, lt=0.9)
    memory: float = Field(default=0.05, ge=0.0, lt=0.9)


class LimitsDoc(_Strict):
    moves_per_cycle: int = Field(default=32, ge=0, le=10000)
    concurrent_per_host: int = Field(default=2, ge=1, le=64)
    concurrent_total: int = Field(default=8, ge=1, le=1024)


class MigrationDoc(_Strict):
    bandwidth_mib_s: int = Field(default=0, ge=0, le=1_000_000)
    max_downtime_ms: int = Field(default=300, ge=1, le=60000)
    auto_converge: bool = True
    post_copy: bool = False
    allow_storage_copy: bool = False
    #: encrypt the migration stream: off, preferred (when both hosts can) or required
    tls: Literal["off", "preferred", "required"] = "off"
    stall_timeout_s: float = Field(default=60.0, gt=0, le=86400.0)
    time_limit_s: float = Field(default=1800.0, gt=0, le=7 * 86400.0)


class PredictiveDoc(_Strict):
    #: how far ahead to plan: the peak of the forecast within this many minutes counts
    horizon_minutes: int = Field(default=60, ge=5, le=24 * 60)
    #: the upper quantile of the forecast planned against (0.5 = the median)
    quantile: float = Field(default=0.9, ge=0.5, le=0.99)
    #: 0 = reactive (present demand only), 1 = the forecast only
    weight: float = Field(default=1.0, ge=0.0, le=1.0)


class WindowDoc(_Strict):
    """A time window for balancing moves: ``allow`` (balancing only inside an allow window,
    when any exists) or ``freeze`` (no balancing inside). ``cron`` is when it starts (5 fields,
    in the policy's ``timezone``); it lasts ``duration_minutes``."""

    name: str = Field(min_length=1, max_length=253, pattern=r"^[A-Za-z0-9_.:-]+$")
    mode: Literal["allow", "freeze"]
    cron: str = Field(min_length=1, max_length=200)
    duration_minutes: int = Field(ge=1, le=7 * 24 * 60)


#: a pressure threshold in percent of time stalled (null: not watched)
PsiPercent = Annotated[float, Field(gt=0.0, le=100.0)] | None


class PsiThresholdsDoc(_Strict):
    cpu: PsiPercent = 80.0
    memory: PsiPercent = 40.0
    io: PsiPercent = 60.0


class HealthDoc(_Strict):
    """Host health signals and the automatic quarantine (balancer.service.hostwatch)."""

    enabled: bool = True
    connection_failures: int = Field(default=3, ge=1, le=1000)
    migration_failures: int = Field(default=3, ge=1, le=1000)
    window_minutes: int = Field(default=10, ge=1, le=7 * 24 * 60)
    psi_some_avg60: PsiThresholdsDoc = Field(default_factory=PsiThresholdsDoc)
    sustained_minutes: int = Field(default=5, ge=1, le=7 * 24 * 60)
    hardware_errors: bool = True
    #: null: a host quarantined by the service is released by an operator only
    release_after_healthy_minutes: int | None = Field(default=30, ge=1, le=30 * 24 * 60)
    max_quarantined: int = Field(default=1, ge=0, le=1000)


NamesOrSelector = list[Name] | SelectorDoc
#: VM-VM rules: hard (must, the default) or soft (should); must_not / should_not are refused
GROUP_KINDS = ("affinity", "anti_affinity")
GROUP_MODES = ("must", "should")


class RuleDoc(_Strict):
    name: str = Field(min_length=1, max_length=253, pattern=r"^[A-Za-z0-9_.:-]+$")
    kind: Literal["affinity", "anti_affinity", "vm_host"]
    vms: NamesOrSelector
    hosts: NamesOrSelector | None = None
    mode: Literal["must", "should", "must_not", "should_not"] | None = None

    @field_validator("mode")
    @classmethod
    def _group_mode(cls, v: str | None, info: ValidationInfo) -> str | None:
        kind = info.data.get("kind")
        if v is not None and kind in GROUP_KINDS and v not in GROUP_MODES:
            raise ValueError(
                f"an {kind} rule takes mode must (hard, the default) or should (soft), not {v}"
            )
        return v

    @model_validator(mode="after")
    def _shape(self) -> RuleDoc:
        if self.kind == "vm_host":
            if self.hosts is None:
                raise ValueError("a vm_host rule needs 'hosts'")
            if self.mode is None:
                raise ValueError("a vm_host rule needs 'mode' (must, should, must_not, should_not)")
        else:
            if self.hosts is not None:
                raise ValueError(f"an {self.kind} rule takes no 'hosts'")
            if isinstance(self.vms, list) and len(self.vms) < 2:
                raise ValueError(f"an {self.kind} rule needs at least two VMs")
        return self


class PolicyDoc(_Strict):
    """One policy file. In a directory, each setting may be given by one file only; ``rules``
    and ``exclude`` are concatenated."""

    automation: Literal["manual", "partial", "full"] | None = None
    threshold: int | None = Field(default=None, ge=1, le=5)
    goal: Literal["balance", "consolidate"] | None = None
    balance: ResourcesDoc | None = None
    headroom: HeadroomDoc | None = None
    limits: LimitsDoc | None = None
    cooldown_minutes: int | None = Field(default=None, ge=0, le=7 * 24 * 60)
    #: the ceiling of the adaptive cooldown (it doubles for a VM moved again soon); >= the base
    cooldown_max_minutes: int | None = Field(default=None, ge=1, le=7 * 24 * 60)
    #: when soft-rule violations are repaired: in any cycle that may balance (repair, the
    #: default) or only in cycles that balance anyway (when_balancing)
    soft_rules: Literal["repair", "when_balancing"] | None = None
    migration: MigrationDoc | None = None
    #: plan against the demand forecast over a horizon (see balancer.forecast)
    predictive: PredictiveDoc | None = None
    #: the time zone of the windows' cron expressions (an IANA name; default UTC)
    timezone: str | None = Field(default=None, min_length=1, max_length=100)
    #: when balancing moves may run (mandatory moves always run); concatenated like rules
    windows: list[WindowDoc] = Field(default_factory=list)
    #: host health signals; a host crossing them is quarantined (off when absent)
    health: HealthDoc | None = None
    rules: list[RuleDoc] = Field(default_factory=list)
    exclude: list[Name | SelectorDoc] = Field(default_factory=list)

    @field_validator("balance")
    @classmethod
    def _weights(cls, v: ResourcesDoc | None) -> ResourcesDoc | None:
        if v is not None and v.cpu + v.memory <= 0:
            raise ValueError("at least one of cpu and memory must have a weight above zero")
        return v
