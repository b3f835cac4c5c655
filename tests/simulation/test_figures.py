"""Figures on hand-made cases (pure)."""

from __future__ import annotations

import numpy as np
import pytest

from balancer.simulation.figures import (
    Flight,
    MigrationRecord,
    TickRecord,
    imbalance,
    pingpong_moves,
    summarize,
    tick_overload,
)


def _tick(load, **kw):  # type: ignore[no-untyped-def]
    base = dict(
        index=0,
        time_s=0.0,
        tick_s=300.0,
        active_hosts=2,
        vms=3,
        overloaded_hosts=0,
        host_overload_s=float(load.host_overload_s.sum()),
        vm_overload_s=float(load.vm_overload_s.sum()),
        imbalance=0.0,
        mean_load=0.0,
        max_load=0.0,
        migrations_started=0,
        migrations_failed=0,
        mib_copied=0.0,
        recommended=0,
        decided=False,
        decide_seconds=0.0,
        power_w=0.0,
        power_all_on_w=0.0,
    )
    base.update(kw)
    return TickRecord(**base)


def test_overload_on_a_two_host_case() -> None:
    # host 0: 2 cores with VMs of 1.5 + 0.8 cores (2.3 > 2: overloaded);
    # host 1: 4 cores with a VM of 1.0 core (fine)
    capacity = np.array([2.0, 4.0])
    placement = np.array([0, 0, 1])
    vm_cpu = np.array([1.5, 0.8, 1.0])
    load = tick_overload(
        capacity=capacity,
        placement=placement,
        vm_cpu=vm_cpu,
        flights=(),
        tick_s=300.0,
        migration_cpu_cores=0.25,
    )
    assert load.host_load.tolist() == pytest.approx([1.15, 0.25])
    assert load.host_overload_s.tolist() == [300.0, 0.0]
    assert load.vm_overload_s.tolist() == [300.0, 300.0, 0.0]
    f = summarize([_tick(load)], [], hosts=2)
    # one of two hosts overloaded the whole time; two of three VMs on it
    assert f.overload_host_share == pytest.approx(0.5)
    assert f.overload_vm_share == pytest.approx(2 / 3)


def test_a_migration_relieves_the_host_when_it_lands_and_loads_both_ends_meanwhile() -> None:
    capacity = np.array([2.0, 4.0])
    placement = np.array([0, 0, 1])
    vm_cpu = np.array([1.5, 0.8, 1.0])
    # VM 1 (0.8 cores) moves 0 -> 1 from t=10 s to t=40 s: host 0 is overloaded until it lands
    # (and more so during the copy); host 1 carries 1.0 + 0.8 + 0.25 = 2.05 < 4 meanwhile
    flight = Flight(vm=1, source=0, target=1, start_s=10.0, end_s=40.0, succeeded=True)
    load = tick_overload(
        capacity=capacity,
        placement=placement,
        vm_cpu=vm_cpu,
        flights=[flight],
        tick_s=300.0,
        migration_cpu_cores=0.25,
    )
    assert load.host_overload_s.tolist() == pytest.approx([40.0, 0.0])
    assert load.vm_overload_s.tolist() == pytest.approx([40.0, 40.0, 0.0])


def test_migration_overhead_can_overload_the_target() -> None:
    capacity = np.array([2.0, 2.0])
    placement = np.array([0, 1])
    vm_cpu = np.array([1.0, 1.0])
    flight = Flight(vm=0, source=0, target=1, start_s=0.0, end_s=30.0, succeeded=False)
    load = tick_overload(
        capacity=capacity,
        placement=placement,
        vm_cpu=vm_cpu,
        flights=[flight],
        tick_s=300.0,
        migration_cpu_cores=0.25,
    )
    # target: 1.0 + 1.0 + 0.25 > 2 during the copy; the failed move leaves VM 0 on host 0
    assert load.host_overload_s.tolist() == pytest.approx([0.0, 30.0])


def test_imbalance_is_the_stddev_of_active_host_loads() -> None:
    loads = np.array([0.2, 0.6, 5.0])
    assert imbalance(loads, np.array([True, True, False])) == pytest.approx(0.2)


def test_pingpong_counts_a_move_back_within_a_day() -> None:
    def m(t: float, s: str, d: str, vm: str = "a") -> MigrationRecord:
        return MigrationRecord(
            time_s=t,
            vm=vm,
            source=s,
            target=d,
            reason="balance",
            duration_s=1.0,
            data_mib=1024.0,
            succeeded=True,
        )

    moves = [
        m(0, "h1", "h2"),
        m(600, "h2", "h1"),
        m(90_000, "h1", "h2"),
        m(100, "h1", "h2", vm="b"),
        m(200, "h2", "h3", vm="b"),
    ]
    # a: h1 -> h2 -> h1 within 10 minutes counts; h1 -> h2 again at 90 000 s reverses the move
    # of 600 s, 89 400 s (more than a day) earlier: not counted. b never goes back.
    assert pingpong_moves(moves) == 1
