"""Pure conversions of libvirt statistics into the model's units.

* CPU: libvirt reports cumulative CPU time in nanoseconds; cores used between two samples is
  ``delta cpu ns / delta wall ns``.
* Memory: configured memory from ``balloon.maximum`` (KiB); used memory from the guest's
  balloon driver (``available - unused``) when it reports, else the QEMU process RSS.
* Dirty rate: ``dirtyrate.megabytes_per_second`` once a calculation has finished.
* Migration jobs: bytes to MiB, milliseconds to seconds, dirty pages/s to MiB/s.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

MIB = 1024 * 1024
#: dirtyrate.calc_status value meaning "measured"
DIRTYRATE_MEASURED = 2

StatsDict = Mapping[str, object]


@dataclass(frozen=True, slots=True, kw_only=True)
class CpuSample:
    """Cumulative CPU time of one guest (or host) at one monotonic instant."""

    at_s: float
    cpu_ns: int


def _num(stats: StatsDict, key: str) -> float | None:
    value = stats.get(key)
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)


def cpu_time_ns(stats: StatsDict) -> int | None:
    """Total CPU time of a guest: ``cpu.time``, else the sum of its vCPUs' times."""
    total = _num(stats, "cpu.time")
    if total is not None:
        return int(total)
    count = _num(stats, "vcpu.maximum") or _num(stats, "vcpu.current")
    if count is None:
        return None
    times = [_num(stats, f"vcpu.{i}.time") for i in range(int(count))]
    known = [t for t in times if t is not None]
    return int(sum(known)) if known else None


def cores_used(prev: CpuSample | None, cur: CpuSample) -> float | None:
    """Cores used between two samples (None without a usable previous sample)."""
    if prev is None:
        return None
    wall_s = cur.at_s - prev.at_s
    if wall_s <= 0 or cur.cpu_ns < prev.cpu_ns:  # restarted guest: counter went back
        return None
    return (cur.cpu_ns - prev.cpu_ns) / (wall_s * 1e9)


def memory_mib(stats: StatsDict) -> int | None:
    kib = _num(stats, "balloon.maximum") or _num(stats, "balloon.current")
    return int(kib // 1024) if kib is not None else None


def memory_used_mib(stats: StatsDict) -> int | None:
    available = _num(stats, "balloon.available")
    unused = _num(stats, "balloon.unused")
    if available is not None and unused is not None and available >= unused:
        return int((available - unused) // 1024)
    rss = _num(stats, "balloon.rss")
    return int(rss // 1024) if rss is not None else None


def vcpus(stats: StatsDict) -> int | None:
    value = _num(stats, "vcpu.current")
    return int(value) if value is not None else None


def dirty_rate_mib_s(stats: StatsDict) -> float | None:
    status = _num(stats, "dirtyrate.calc_status")
    rate = _num(stats, "dirtyrate.megabytes_per_second")
    if rate is None or (status is not None and int(status) != DIRTYRATE_MEASURED):
        return None
    return rate


def host_busy_ns(cpu_stats: Mapping[str, int]) -> int:
    """Busy CPU time of a host from ``virNodeGetCPUStats`` (kernel + user, nanoseconds)."""
    return int(cpu_stats.get("kernel", 0)) + int(cpu_stats.get("user", 0))


@dataclass(frozen=True, slots=True, kw_only=True)
class JobFigures:
    """A migration job's figures in model units (from ``virDomainGetJobStats``)."""

    elapsed_s: float
    data_total_mib: float
    data_processed_mib: float
    data_remaining_mib: float
    dirty_rate_mib_s: float
    iteration: int
    downtime_ms: float | None
    setup_ms: float | None


def job_figures(stats: StatsDict) -> JobFigures:
    page = _num(stats, "memory_page_size") or 4096.0
    dirty_pages = _num(stats, "memory_dirty_rate") or 0.0

    def mib(key: str, fallback: str) -> float:
        v = _num(stats, key)
        if v is None:
            v = _num(stats, fallback)
        return (v or 0.0) / MIB

    return JobFigures(
        elapsed_s=(_num(stats, "time_elapsed") or 0.0) / 1000.0,
        data_total_mib=mib("data_total", "memory_total"),
        data_processed_mib=mib("data_processed", "memory_processed"),
        data_remaining_mib=mib("data_remaining", "memory_remaining"),
        dirty_rate_mib_s=dirty_pages * page / MIB,
        iteration=int(_num(stats, "memory_iteration") or 0),
        downtime_ms=_num(stats, "downtime"),
        setup_ms=_num(stats, "setup_time"),
    )
