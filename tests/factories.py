"""Factories for hosts, VMs, snapshots and policies used across the tests."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from balancer.model import VM, Host, HostState, Snapshot

FEATURES = frozenset({"sse4_2", "avx", "avx2"})


def make_host(
    name: str,
    *,
    cpu_cores: int = 32,
    memory_mib: int = 131072,
    state: HostState | str = HostState.ACTIVE,
    cpu_features: Iterable[str] = FEATURES,
    labels: dict[str, str] | None = None,
    **kw: Any,
) -> Host:
    return Host(
        name=name,
        cpu_cores=cpu_cores,
        memory_mib=memory_mib,
        state=HostState(state),
        cpu_features=frozenset(cpu_features),
        labels=labels or {},
        **kw,
    )


def make_vm(
    name: str,
    host: str,
    *,
    vcpus: int = 2,
    memory_mib: int = 4096,
    cpu_used_cores: float = 1.0,
    cpu_features: Iterable[str] = (),
    labels: dict[str, str] | None = None,
    dirty_rate_mib_s: float | None = 10.0,
    **kw: Any,
) -> VM:
    return VM(
        name=name,
        host=host,
        vcpus=vcpus,
        memory_mib=memory_mib,
        cpu_used_cores=cpu_used_cores,
        cpu_features=frozenset(cpu_features),
        labels=labels or {},
        dirty_rate_mib_s=dirty_rate_mib_s,
        **kw,
    )


def make_snapshot(hosts: Iterable[Host], vms: Iterable[VM]) -> Snapshot:
    return Snapshot(hosts=tuple(hosts), vms=tuple(vms))


def small_cluster(n_hosts: int = 3, vms_per_host: int = 4) -> Snapshot:
    hosts = [make_host(f"h{i + 1}") for i in range(n_hosts)]
    vms = [
        make_vm(f"vm{h * vms_per_host + j + 1}", f"h{h + 1}")
        for h in range(n_hosts)
        for j in range(vms_per_host)
    ]
    return make_snapshot(hosts, vms)
