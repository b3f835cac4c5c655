"""libvirt statistics to model units (pure)."""

from __future__ import annotations

import pytest

from balancer.libvirt import stats
from balancer.libvirt.stats import CpuSample


def test_cores_used_between_two_samples() -> None:
    a = CpuSample(at_s=10.0, cpu_ns=5_000_000_000)
    b = CpuSample(at_s=12.0, cpu_ns=7_000_000_000)
    assert stats.cores_used(a, b) == pytest.approx(1.0)
    c = CpuSample(at_s=14.0, cpu_ns=7_500_000_000)
    assert stats.cores_used(b, c) == pytest.approx(0.25)


def test_cores_used_needs_a_usable_previous_sample() -> None:
    b = CpuSample(at_s=12.0, cpu_ns=7)
    assert stats.cores_used(None, b) is None
    assert stats.cores_used(CpuSample(at_s=12.0, cpu_ns=1), b) is None  # no time passed
    assert stats.cores_used(CpuSample(at_s=1.0, cpu_ns=99), b) is None  # guest restarted


def test_cpu_time_prefers_the_total_then_sums_vcpus() -> None:
    assert stats.cpu_time_ns({"cpu.time": 42}) == 42
    assert stats.cpu_time_ns({"vcpu.maximum": 2, "vcpu.0.time": 5, "vcpu.1.time": 7}) == 12
    assert stats.cpu_time_ns({}) is None


def test_memory_from_balloon_or_rss() -> None:
    assert stats.memory_mib({"balloon.maximum": 131072}) == 128
    guest = {"balloon.available": 1048576, "balloon.unused": 524288, "balloon.rss": 9}
    assert stats.memory_used_mib(guest) == 512
    assert stats.memory_used_mib({"balloon.rss": 51200}) == 50
    assert stats.memory_used_mib({}) is None


def test_dirty_rate_only_when_measured() -> None:
    assert (
        stats.dirty_rate_mib_s({"dirtyrate.calc_status": 2, "dirtyrate.megabytes_per_second": 12})
        == 12
    )
    assert (
        stats.dirty_rate_mib_s({"dirtyrate.calc_status": 1, "dirtyrate.megabytes_per_second": 0})
        is None
    )
    assert stats.dirty_rate_mib_s({}) is None


def test_job_figures_convert_units() -> None:
    fig = stats.job_figures(
        {
            "time_elapsed": 780,
            "data_total": 128 * stats.MIB,
            "data_processed": 9 * stats.MIB,
            "data_remaining": 0,
            "memory_dirty_rate": 256,
            "memory_page_size": 4096,
            "memory_iteration": 3,
            "downtime": 27,
            "setup_time": 3,
        }
    )
    assert fig.elapsed_s == pytest.approx(0.78)
    assert fig.data_total_mib == 128 and fig.data_processed_mib == 9
    assert fig.dirty_rate_mib_s == pytest.approx(1.0)
    assert fig.iteration == 3 and fig.downtime_ms == 27 and fig.setup_ms == 3
    empty = stats.job_figures({})
    assert empty.downtime_ms is None and empty.elapsed_s == 0


def test_host_busy_time() -> None:
    assert stats.host_busy_ns({"kernel": 3, "user": 4, "idle": 100}) == 7
