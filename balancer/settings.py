"""Service settings (``config/balancer.yaml``), validated with pydantic at the edge.

Errors name the file, line and field (:class:`balancer.errors.SettingsError`). Tokens are never
written inline in a committed file: each comes from an environment variable or a file.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from balancer.errors import SettingsError
from balancer.inputs import SETTINGS, TOKEN, read_text
from balancer.yamlfile import validate_yaml
from collectors.settings import CollectorSettings


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True, allow_inf_nan=False)


#: upper bounds of durations (every number of the file is finite and bounded)
HOUR_S = 3600.0
DAY_S = 24 * HOUR_S


class SimulatedBackend(_Strict):
    kind: Literal["simulated"]
    hosts: int = Field(default=8, ge=1, le=2000)
    vms: int = Field(default=200, ge=0, le=200000)
    seed: int = Field(default=1, ge=0, le=2**32 - 1)
    #: a snapshot file to start from instead of the generator
    snapshot: str | None = None
    #: where the simulated hypervisors keep their state (survives a restart of the service)
    state_file: str | None = None
    #: how fast simulated time runs against the wall clock for migrations (1 = real time)
    link_mib_s: float = Field(default=1100.0, gt=0, le=1_000_000.0)


LabelKey = Annotated[str, Field(min_length=1, max_length=63, pattern=r"^[A-Za-z0-9_./-]+$")]
LabelValue = Annotated[str, Field(max_length=253)]
#: one entry of the host's SMBIOS data as libvirt reports it: SECTION.ENTRY (chassis.asset)
SysinfoField = Annotated[
    str, Field(pattern=r"^(bios|system|baseBoard|chassis)\.[a-z_]{1,40}$", max_length=60)
]


class LibvirtDefaults(_Strict):
    """Cluster-wide values of every libvirt host; a host's own entry overrides them (its labels
    are merged over these, key by key)."""

    timeout_s: float = Field(default=5.0, gt=0, le=HOUR_S)
    #: host labels, for the policy's label selectors (``hosts: {labels: {rack: r1}}``)
    labels: dict[LabelKey, LabelValue] = Field(default_factory=dict, max_length=64)
    #: labels read from each host's own SMBIOS data, label key -> SECTION.ENTRY
    #: (``{rack: chassis.asset}``); its OEM strings ``kvm-balancer:KEY=VALUE`` are labels too
    labels_from_sysinfo: dict[LabelKey, SysinfoField] = Field(default_factory=dict, max_length=16)
    #: the hosts' QEMU have migration TLS certificates (for ``migration: {tls: ...}``)
    migration_tls: bool = False
    #: guest type the hosts' CPU models are read for: kvm, or qemu (plain emulation)
    virt_type: Literal["kvm", "qemu"] = "kvm"
    #: disk paths under these prefixes are on storage every host shares (no storage copy)
    shared_storage: list[Annotated[str, Field(min_length=1, max_length=4096)]] = Field(
        default_factory=list, max_length=64
    )
    #: count the host's own CPU and memory use (outside its VMs) against its capacity
    measure_host_overhead: bool = True


class LibvirtHost(_Strict):
    name: str = Field(min_length=1)
    uri: str = Field(pattern=r"^qemu(\+(ssh|tls|tcp|unix))?://")
    timeout_s: float | None = Field(default=None, gt=0, le=HOUR_S)
    #: the host's address on a dedicated migration network (migration traffic leaves the
    #: management network): VIR_MIGRATE_PARAM_URI tcp://ADDRESS and the listen address
    migration_address: str | None = Field(default=None, min_length=1, max_length=255)
    #: the host's QEMU has migration TLS certificates (for migration: {tls: ...})
    migration_tls: bool | None = None
    labels: dict[LabelKey, LabelValue] = Field(default_factory=dict, max_length=64)
    labels_from_sysinfo: dict[LabelKey, SysinfoField] = Field(default_factory=dict, max_length=16)
    virt_type: Literal["kvm", "qemu"] | None = None
    shared_storage: list[Annotated[str, Field(min_length=1, max_length=4096)]] | None = Field(
        default=None, max_length=64
    )
    measure_host_overhead: bool | None = None


class DirtyRate(_Strict):
    """libvirt's dirty-rate measurement (one second of page sampling per VM), which feeds the
    migration cost the optimizer weighs: never on a host while a migration involves it."""

    enabled: bool = True
    #: measurements started per host and collect (the least recently measured VMs first)
    per_host: int = Field(default=2, ge=0, le=1000)


class LibvirtBackend(_Strict):
    kind: Literal["libvirt"]
    defaults: LibvirtDefaults = Field(default_factory=LibvirtDefaults)
    dirty_rate: DirtyRate = Field(default_factory=DirtyRate)
    hosts: list[LibvirtHost] = Field(min_length=1)

    @model_validator(mode="after")
    def _unique_names(self) -> LibvirtBackend:
        names = [h.name for h in self.hosts]
        twice = sorted({n for n in names if names.count(n) > 1})
        if twice:
            raise ValueError(f"hosts: {', '.join(twice)} given more than once")
        return self

    def resolved_hosts(self) -> list[LibvirtHost]:
        """Every host with the defaults filled in (no field left None but the address)."""
        d = self.defaults

        def pick(own: object, default: object) -> object:
            return default if own is None else own

        return [
            h.model_copy(
                update={
                    "timeout_s": pick(h.timeout_s, d.timeout_s),
                    "migration_tls": pick(h.migration_tls, d.migration_tls),
                    "labels": {**d.labels, **h.labels},
                    "labels_from_sysinfo": {**d.labels_from_sysinfo, **h.labels_from_sysinfo},
                    "virt_type": h.virt_type or d.virt_type,
                    "shared_storage": list(
                        d.shared_storage if h.shared_storage is None else h.shared_storage
                    ),
                    "measure_host_overhead": pick(h.measure_host_overhead, d.measure_host_overhead),
                }
            )
            for h in self.hosts
        ]


class LabBackend(_Strict):
    kind: Literal["lab"]
    state_dir: str | None = None


Backend = Annotated[SimulatedBackend | LibvirtBackend | LabBackend, Field(discriminator="kind")]


class Token(_Strict):
    user: str = Field(min_length=1)
    role: Literal["agent", "viewer", "operator", "admin"]
    token_env: str | None = None
    token_file: str | None = None

    @model_validator(mode="after")
    def _one_source(self) -> Token:
        if (self.token_env is None) == (self.token_file is None):
            raise ValueError("give exactly one of token_env and token_file")
        return self

    def secret(self) -> str | None:
        """The token's value, or None when its variable or file is absent or unusable."""
        if self.token_env is not None:
            return os.environ.get(self.token_env) or None
        assert self.token_file is not None
        try:  # never blocks on a FIFO, never reads more than 64 KiB (balancer.inputs)
            return read_text(self.token_file, TOKEN).strip() or None
        except SettingsError:
            return None


class Api(_Strict):
    listen: str = Field(default="127.0.0.1:8080", pattern=r"^[^:]+:\d{1,5}$")
    tokens: list[Token] = Field(default_factory=list)
    #: requests without a token get the ``viewer`` role (a read-only dashboard); off by default
    anonymous_viewer: bool = False
    #: a request body above this is refused with 413 before it is read whole (default 1 MiB)
    max_body_bytes: int = Field(default=1_048_576, ge=1024, le=1_073_741_824)
    #: a JSON body nested deeper than this is refused with 422 before it is parsed
    max_json_depth: int = Field(default=32, ge=4, le=256)

    @property
    def host(self) -> str:
        return self.listen.rsplit(":", 1)[0]

    @property
    def port(self) -> int:
        return int(self.listen.rsplit(":", 1)[1])


class Intervals(_Strict):
    collect_s: float = Field(default=20.0, gt=0, le=DAY_S)
    balance_s: float = Field(default=300.0, gt=0, le=DAY_S)
    policy_reload_s: float = Field(default=10.0, gt=0, le=DAY_S)


class Breakers(_Strict):
    """When automation pauses by itself (see docs/service.md)."""

    #: metrics older than this stop automatic balancing (default: 3 collect intervals)
    stale_after_s: float | None = Field(default=None, gt=0, le=DAY_S)
    #: this many failed migrations within ``failure_window_s`` pause automatic balancing
    failure_limit: int = Field(default=3, ge=1, le=10_000)
    failure_window_s: float = Field(default=900.0, gt=0, le=7 * DAY_S)
    #: mandatory moves (maintenance, quarantine, rule repair) continue while paused
    allow_mandatory: bool = True


class ServiceOptions(_Strict):
    """Behaviour of the long-running service beyond the job intervals."""

    #: a VM that went A -> B -> A within this many hours is held from balancing
    pingpong_window_h: float = Field(default=24.0, gt=0, le=31 * 24.0)
    #: the first SIGTERM/SIGINT waits this long for migrations in flight before exiting
    drain_timeout_s: float = Field(default=120.0, ge=0, le=DAY_S)
    #: time limit of one optimizer run and its seed
    plan_time_limit_s: float = Field(default=10.0, gt=0, le=HOUR_S)
    plan_seed: int = Field(default=0, ge=0, le=2**31 - 1)
    #: a pending recommendation expires after this long even if nothing changed
    recommendation_ttl_s: float = Field(default=3600.0, gt=0, le=31 * DAY_S)
    #: how much imbalance history the service keeps (and the dashboard shows)
    history_h: float = Field(default=6.0, gt=0, le=31 * 24.0)
    #: how often the executor follows migrations in flight
    executor_poll_s: float = Field(default=1.0, gt=0, le=HOUR_S)


class AuditOptions(_Strict):
    """The audit trail's anchor and its periodic verification (docs/executor.md, audit)."""

    #: the append-only file the chain head is written to as it advances: ``auto`` (next to an
    #: SQLite database: ``<db file>.anchor``; else ``<state_dir>/audit-<digest of the database
    #: URL>.anchor``), ``off``, or a path
    anchor: str = Field(default="auto", min_length=1, max_length=4096)
    #: how often the service verifies the whole chain (and the anchor): the audit metrics
    verify_interval_s: float = Field(default=300.0, ge=1.0, le=7 * 86400.0)


class HA(_Strict):
    """High availability (docs/deployment.md): several instances share the database (it must be
    PostgreSQL); each cluster is led by the instance holding its lease."""

    #: this instance's name, unique in the deployment (e.g. the host name)
    instance: str = Field(min_length=1, max_length=100, pattern=r"^[A-Za-z0-9_.@-]+$")
    #: how long a lease lasts without renewal: a dead leader's clusters move after about this
    lease_seconds: float = Field(default=15.0, ge=1.0, le=3600.0)
    #: how often the leases are renewed and free ones sought (default: a quarter of the lease)
    renew_seconds: float | None = Field(default=None, gt=0, le=HOUR_S)
    #: an instance counts as alive (for spreading the clusters) when seen within this long
    #: (default: one lease; instances are seen at every renewal)
    alive_seconds: float | None = Field(default=None, gt=0, le=DAY_S)

    @model_validator(mode="after")
    def _renew_within_lease(self) -> HA:
        if self.renew_seconds is not None and self.renew_seconds >= self.lease_seconds / 2:
            raise ValueError("renew_seconds must be under half of lease_seconds")
        return self

    @property
    def renew_s(self) -> float:
        return self.renew_seconds or self.lease_seconds / 4

    @property
    def alive_s(self) -> float:
        return self.alive_seconds or self.lease_seconds


class ClusterSettings(_Strict):
    """One cluster of a deployment that serves several (``clusters:``)."""

    #: the cluster's name; its journal, audit trail and service tables live in the PostgreSQL
    #: schema ``cluster_<name>``
    name: str = Field(pattern=r"^[a-z][a-z0-9_]{0,40}$")
    backend: Backend
    policy: str = "config/policies"


#: the name of the one cluster of a settings file without ``clusters:``
DEFAULT_CLUSTER = "default"


class Settings(_Strict):
    #: the hypervisors (required unless ``clusters`` lists them per cluster)
    backend: Backend = None  # type: ignore[assignment]
    policy: str = "config/policies"
    database: str = "sqlite:///state/balancer.db"
    api: Api = Field(default_factory=Api)
    intervals: Intervals = Field(default_factory=Intervals)
    state_dir: str = "state"
    log_json: bool = False
    breakers: Breakers = Field(default_factory=Breakers)
    service: ServiceOptions = Field(default_factory=ServiceOptions)
    audit: AuditOptions = Field(default_factory=AuditOptions)
    #: sample window, demand and staleness (docs/collectors.md); by default the window samples
    #: at the collect interval
    collectors: CollectorSettings | None = None
    #: several instances with leader election (absent: one instance, no election)
    ha: HA | None = None
    #: several clusters in one deployment (absent: one cluster, ``default``, from ``backend``
    #: and ``policy`` above)
    clusters: list[ClusterSettings] | None = Field(default=None, min_length=1)

    @model_validator(mode="after")
    def _clusters_and_ha(self) -> Settings:
        if self.clusters is None and self.backend is None:
            raise ValueError("backend: required (or list the clusters under clusters:)")
        if self.clusters is not None:
            names = [c.name for c in self.clusters]
            dup = sorted({n for n in names if names.count(n) > 1})
            if dup:
                raise ValueError(f"clusters: the name {dup[0]!r} is used twice")
        postgres = self.database.startswith(("postgresql://", "postgres://"))
        if self.ha is not None and not postgres:
            raise ValueError("ha: needs database: postgresql://... (shared by the instances)")
        if self.clusters is not None and len(self.clusters) > 1 and not postgres:
            raise ValueError("clusters: several clusters need database: postgresql://...")
        return self

    def cluster_list(self) -> list[ClusterSettings]:
        """The clusters this deployment serves (one, ``default``, unless ``clusters:``)."""
        if self.clusters is not None:
            return list(self.clusters)
        return [ClusterSettings(name=DEFAULT_CLUSTER, backend=self.backend, policy=self.policy)]

    def collector_settings(self) -> CollectorSettings:
        if self.collectors is not None:
            return self.collectors
        interval = self.intervals.collect_s
        return CollectorSettings(
            sample_interval_s=interval,
            window_s=max(3600.0, 2 * interval),
            stale_after_s=max(120.0, 3 * interval),
        )


def load_settings(path: str | Path) -> Settings:
    """Load and validate a settings file. Relative paths in it are resolved from the current
    directory (where ops run the command), as written in the README."""
    p = Path(path)
    text = read_text(p, SETTINGS)
    settings, _ = validate_yaml(text, str(p), Settings, SettingsError)
    return settings
