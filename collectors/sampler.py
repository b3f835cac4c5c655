"""The sampler interface and the port sampler.

A sampler returns every sample it can take at ``now`` as one :class:`SampleBatch`. Three exist:

* :class:`PortSampler` samples any :class:`~balancer.port.HypervisorPort` (the libvirt backend
  turns one bulk domain-stats call per host into cores used; the simulated cluster computes
  them);
* :class:`collectors.hostagent.HostAgentSampler` samples the local host with psutil;
* :class:`collectors.trace.TraceSampler` replays utilisation traces for simulations.
"""

from __future__ import annotations

from datetime import datetime
from typing import Protocol

from balancer.model import HostState, Snapshot
from balancer.port import HypervisorPort
from collectors.samples import HostSample, SampleBatch, VMSample


class Sampler(Protocol):
    def sample(self, now: datetime) -> SampleBatch:
        """Every sample this source can take now (``now`` stamps them)."""
        ...


def batch_from_snapshot(snapshot: Snapshot, now: datetime) -> SampleBatch:
    """Samples from a port snapshot (pure).

    Unreachable hosts and their VMs give no sample (their figures are the last known ones, not
    a measurement; the window marks them stale). A host's total use is its VMs' use plus its
    measured own use (``overhead_*``), so the window derives the same unmanaged load back."""
    reachable = {h.name for h in snapshot.hosts if h.state is not HostState.UNREACHABLE}
    vm_cpu: dict[str, float] = dict.fromkeys(reachable, 0.0)
    vm_mem: dict[str, int] = dict.fromkeys(reachable, 0)
    vms: list[VMSample] = []
    for v in snapshot.vms:
        if v.host not in reachable:
            continue
        used = v.memory_used
        vm_cpu[v.host] += v.cpu_used_cores
        vm_mem[v.host] += used
        vms.append(
            VMSample(
                vm=v.name,
                host=v.host,
                time=now,
                cpu_used_cores=v.cpu_used_cores,
                memory_used_mib=used,
                vcpus=v.vcpus,
                memory_mib=v.memory_mib,
            )
        )
    hosts = tuple(
        HostSample(
            host=h.name,
            time=now,
            cpu_cores=h.cpu_cores,
            cpu_used_cores=vm_cpu[h.name] + h.overhead_cpu_cores,
            memory_mib=h.memory_mib,
            memory_used_mib=vm_mem[h.name] + h.overhead_memory_mib,
        )
        for h in snapshot.hosts
        if h.name in reachable
    )
    return SampleBatch(time=now, hosts=hosts, vms=tuple(vms))


class PortSampler:
    """Samples a hypervisor port: one ``snapshot()`` call per cycle."""

    def __init__(self, port: HypervisorPort) -> None:
        self._port = port

    def sample(self, now: datetime) -> SampleBatch:
        return self.sample_with_snapshot(now)[1]

    def sample_with_snapshot(self, now: datetime) -> tuple[Snapshot, SampleBatch]:
        """The port's snapshot and the samples taken from it (so a caller that also needs the
        inventory asks the port once per cycle)."""
        snapshot = self._port.snapshot()
        return snapshot, batch_from_snapshot(snapshot, now)
