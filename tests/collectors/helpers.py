"""Shared helpers for the collectors tests."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from collectors.samples import HostSample, SampleBatch, VMSample
from collectors.settings import CollectorSettings

T0 = datetime(2026, 11, 27, 12, 0, tzinfo=UTC)


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def settings(**kw: float) -> CollectorSettings:
    return CollectorSettings(**kw)  # type: ignore[arg-type]


def vm_batch(t: datetime, cpu: dict[str, float], host: str = "h1", mem: int = 1024) -> SampleBatch:
    return SampleBatch(
        time=t,
        vms=tuple(
            VMSample(
                vm=name,
                host=host,
                time=t,
                cpu_used_cores=c,
                memory_used_mib=mem,
                vcpus=4,
                memory_mib=4096,
            )
            for name, c in cpu.items()
        ),
    )


def host_sample(t: datetime, host: str, cpu_used: float, mem_used: int) -> HostSample:
    return HostSample(
        host=host,
        time=t,
        cpu_cores=32,
        cpu_used_cores=cpu_used,
        memory_mib=131072,
        memory_used_mib=mem_used,
    )
