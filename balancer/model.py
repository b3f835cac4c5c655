"""The pure cluster model: hosts, VMs and the snapshot that holds them.

No I/O, no clock, no globals. Every type is a frozen, slotted, keyword-only dataclass.
Units are in the names: ``memory_mib``, ``cpu_cores``, ``dirty_rate_mib_s``.

Load definitions (used everywhere, defined once here):

* CPU load of a host = (sum of its VMs' measured ``cpu_used_cores`` + the host's own
  ``overhead_cpu_cores``) / ``cpu_cores``.
* Memory load of a host = (sum of its VMs' configured ``memory_mib`` + ``overhead_memory_mib``)
  / ``memory_mib``. Configured, not used, memory: a live migration must be able to copy every
  page the guest may touch, so memory is never overcommitted.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from enum import StrEnum


class HostState(StrEnum):
    ACTIVE = "active"
    ENTERING_MAINTENANCE = "entering_maintenance"
    MAINTENANCE = "maintenance"
    QUARANTINED = "quarantined"
    UNREACHABLE = "unreachable"

    @property
    def accepts_vms(self) -> bool:
        """Whether a VM may be moved *to* a host in this state."""
        return self is HostState.ACTIVE

    @property
    def must_evacuate(self) -> bool:
        """Whether every VM on the host must leave (mandatory moves)."""
        return self in (HostState.ENTERING_MAINTENANCE, HostState.MAINTENANCE)

    @property
    def can_send(self) -> bool:
        """Whether VMs may be moved *off* the host."""
        return self is not HostState.UNREACHABLE


def _frozen_labels(labels: Mapping[str, str] | None) -> Mapping[str, str]:
    return dict(sorted((labels or {}).items()))


@dataclass(frozen=True, slots=True, kw_only=True)
class Host:
    name: str
    cpu_cores: int
    memory_mib: int
    cpu_features: frozenset[str] = frozenset()
    state: HostState = HostState.ACTIVE
    labels: Mapping[str, str] = field(default_factory=dict)
    #: the host's own measured use beyond its VMs (unmanaged load), counted against capacity
    overhead_cpu_cores: float = 0.0
    overhead_memory_mib: int = 0

    def with_state(self, state: HostState) -> Host:
        return replace(self, state=state)


@dataclass(frozen=True, slots=True, kw_only=True)
class VM:
    name: str
    host: str
    vcpus: int
    memory_mib: int
    cpu_used_cores: float = 0.0
    memory_used_mib: int | None = None
    cpu_features: frozenset[str] = frozenset()
    labels: Mapping[str, str] = field(default_factory=dict)
    dirty_rate_mib_s: float | None = None
    #: learned from this VM's past migrations: GiB really copied / GiB the model expected
    #: (1: nothing learned yet); see balancer.service.copycost
    copy_factor: float = 1.0

    @property
    def memory_used(self) -> int:
        return self.memory_mib if self.memory_used_mib is None else self.memory_used_mib

    def runs_on(self, host: Host) -> bool:
        """CPU compatibility: the VM's required features are a subset of the host's."""
        return self.cpu_features <= host.cpu_features

    def on(self, host: str) -> VM:
        return replace(self, host=host)


@dataclass(frozen=True, slots=True, kw_only=True)
class HostLoad:
    host: str
    cpu_demand_cores: float
    memory_demand_mib: int
    cpu_load: float
    memory_load: float
    vm_count: int


@dataclass(frozen=True, slots=True, kw_only=True)
class Snapshot:
    """An immutable view of the cluster at one moment: the input of every decision."""

    hosts: tuple[Host, ...]
    vms: tuple[VM, ...]
    version: int = 1

    # -- lookups -----------------------------------------------------------------------------
    def host(self, name: str) -> Host:
        for h in self.hosts:
            if h.name == name:
                return h
        raise KeyError(name)

    def vm(self, name: str) -> VM:
        for v in self.vms:
            if v.name == name:
                return v
        raise KeyError(name)

    def host_map(self) -> dict[str, Host]:
        return {h.name: h for h in self.hosts}

    def vm_map(self) -> dict[str, VM]:
        return {v.name: v for v in self.vms}

    def placement(self) -> dict[str, str]:
        return {v.name: v.host for v in self.vms}

    def vms_on(self, host: str) -> tuple[VM, ...]:
        return tuple(v for v in self.vms if v.host == host)

    # -- derived values ----------------------------------------------------------------------
    def loads(self) -> dict[str, HostLoad]:
        cpu: dict[str, float] = {h.name: h.overhead_cpu_cores for h in self.hosts}
        mem: dict[str, int] = {h.name: h.overhead_memory_mib for h in self.hosts}
        count: dict[str, int] = {h.name: 0 for h in self.hosts}
        for v in self.vms:
            cpu[v.host] += v.cpu_used_cores
            mem[v.host] += v.memory_mib
            count[v.host] += 1
        return {
            h.name: HostLoad(
                host=h.name,
                cpu_demand_cores=cpu[h.name],
                memory_demand_mib=mem[h.name],
                cpu_load=cpu[h.name] / h.cpu_cores,
                memory_load=mem[h.name] / h.memory_mib,
                vm_count=count[h.name],
            )
            for h in self.hosts
        }

    # -- derived snapshots -------------------------------------------------------------------
    def with_placement(self, placement: Mapping[str, str]) -> Snapshot:
        """A snapshot where the VMs named in ``placement`` run on the given hosts."""
        return replace(
            self,
            vms=tuple(v.on(placement[v.name]) if v.name in placement else v for v in self.vms),
        )

    def with_host_state(self, host: str, state: HostState) -> Snapshot:
        self.host(host)  # raises KeyError for an unknown host
        return replace(
            self, hosts=tuple(h.with_state(state) if h.name == host else h for h in self.hosts)
        )

    def with_vms(self, vms: Iterable[VM]) -> Snapshot:
        return replace(self, vms=tuple(vms))

    def digest(self) -> str:
        """A stable content hash (sha256 hex) of the snapshot."""
        doc = {
            "hosts": [
                [
                    h.name,
                    h.cpu_cores,
                    h.memory_mib,
                    sorted(h.cpu_features),
                    h.state.value,
                    sorted(h.labels.items()),
                    round(h.overhead_cpu_cores, 6),
                    h.overhead_memory_mib,
                ]
                for h in self.hosts
            ],
            "vms": [
                [
                    v.name,
                    v.host,
                    v.vcpus,
                    v.memory_mib,
                    round(v.cpu_used_cores, 6),
                    v.memory_used_mib,
                    sorted(v.cpu_features),
                    sorted(v.labels.items()),
                    v.dirty_rate_mib_s,
                ]
                for v in self.vms
            ],
        }
        return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()


# -- validation -------------------------------------------------------------------------------
#: documented bounds of a snapshot's figures (``balancer.snapshot_io`` refuses values beyond
#: them; the optimizer's integer scaling stays far inside int64 with these)
MAX_HOST_CPU_CORES = 65_536
MAX_VCPUS = 65_536
#: 1 PiB
MAX_MEMORY_MIB = 2**30
#: 1 TiB/s
MAX_DIRTY_RATE_MIB_S = 1_048_576.0
#: a VM's learned copy factor stays within this (a migration copies at most a few times memory)
MIN_COPY_FACTOR, MAX_COPY_FACTOR = 0.05, 8.0


@dataclass(frozen=True, slots=True, kw_only=True)
class StateProblem:
    """An impossible state in a snapshot: ``hosts[i]`` or ``vms[i]`` (``kind``, ``index``) and
    the field at fault."""

    kind: str
    index: int
    name: str
    field: str
    message: str


def _bad_number(x: float, maximum: float) -> bool:
    return not math.isfinite(x) or x < 0 or x > maximum


def state_problems(snapshot: Snapshot) -> list[StateProblem]:
    """What cannot be true of a real cluster: negative or non-finite figures, a host's own use
    beyond its capacity, a VM using more cores than its vCPUs, more memory than configured, or
    configured with more memory than its host has. (A VM on a host that lacks CPU features it
    needs is real and not a problem here: the optimizer reports it as blocked.)"""
    out: list[StateProblem] = []
    hosts = snapshot.host_map()
    for i, h in enumerate(snapshot.hosts):

        def host(field: str, message: str, i: int = i, h: Host = h) -> None:
            out.append(
                StateProblem(kind="hosts", index=i, name=h.name, field=field, message=message)
            )

        if not 0 < h.cpu_cores <= MAX_HOST_CPU_CORES:
            host("cpu_cores", f"{h.cpu_cores} is outside 1..{MAX_HOST_CPU_CORES}")
        if not 0 < h.memory_mib <= MAX_MEMORY_MIB:
            host("memory_mib", f"{h.memory_mib} is outside 1..{MAX_MEMORY_MIB}")
        if _bad_number(h.overhead_cpu_cores, h.cpu_cores):
            host(
                "overhead_cpu_cores",
                f"{h.overhead_cpu_cores} is outside 0..cpu_cores ({h.cpu_cores})",
            )
        if not 0 <= h.overhead_memory_mib <= h.memory_mib:
            host(
                "overhead_memory_mib",
                f"{h.overhead_memory_mib} is outside 0..memory_mib ({h.memory_mib})",
            )
    for i, v in enumerate(snapshot.vms):

        def vm(field: str, message: str, i: int = i, v: VM = v) -> None:
            out.append(StateProblem(kind="vms", index=i, name=v.name, field=field, message=message))

        if not 0 < v.vcpus <= MAX_VCPUS:
            vm("vcpus", f"{v.vcpus} is outside 1..{MAX_VCPUS}")
        if not 0 < v.memory_mib <= MAX_MEMORY_MIB:
            vm("memory_mib", f"{v.memory_mib} is outside 1..{MAX_MEMORY_MIB}")
        if not math.isfinite(v.cpu_used_cores) or v.cpu_used_cores < 0:
            vm("cpu_used_cores", f"{v.cpu_used_cores} is not a number >= 0")
        elif v.cpu_used_cores > v.vcpus:
            vm(
                "cpu_used_cores",
                f"{v.cpu_used_cores} cores used on {v.vcpus} vCPUs: a VM cannot use more "
                "cores than it has vCPUs",
            )
        if v.memory_used_mib is not None and not 0 <= v.memory_used_mib <= v.memory_mib:
            vm(
                "memory_used_mib",
                f"{v.memory_used_mib} is outside 0..memory_mib ({v.memory_mib})",
            )
        if v.dirty_rate_mib_s is not None and _bad_number(v.dirty_rate_mib_s, MAX_DIRTY_RATE_MIB_S):
            vm("dirty_rate_mib_s", f"{v.dirty_rate_mib_s} is outside 0..{MAX_DIRTY_RATE_MIB_S:g}")
        if not MIN_COPY_FACTOR <= v.copy_factor <= MAX_COPY_FACTOR:
            vm("copy_factor", f"{v.copy_factor} is outside {MIN_COPY_FACTOR}..{MAX_COPY_FACTOR}")
        on = hosts.get(v.host)
        if on is None:
            vm("host", f"unknown host {v.host!r}")
        elif v.memory_mib > on.memory_mib:
            vm(
                "memory_mib",
                f"{v.memory_mib} MiB configured on host {on.name!r} of {on.memory_mib} MiB: "
                "a VM cannot be larger than its host",
            )
    return out


def stddev(values: Iterable[float]) -> float:
    """Population standard deviation (0.0 for fewer than two values)."""
    xs = list(values)
    if len(xs) < 2:
        return 0.0
    mean = sum(xs) / len(xs)
    return math.sqrt(sum((x - mean) ** 2 for x in xs) / len(xs))
