from __future__ import annotations

from pathlib import Path

import pytest

from balancer.errors import MigrationError
from balancer.model import HostState
from balancer.port import HypervisorPort, JobState, MigrationOptions
from balancer.sim.clock import ManualClock
from balancer.sim.cluster import SimulatedCluster, migration_cost
from balancer.sim.generator import GeneratorSpec, generate
from tests.factories import make_host, make_snapshot, make_vm, small_cluster

OPTS = MigrationOptions()


def cluster(tmp: Path | None = None) -> tuple[SimulatedCluster, ManualClock]:
    clock = ManualClock()
    return SimulatedCluster(
        small_cluster(), clock=clock, state_path=tmp / "state.json" if tmp else None
    ), clock


def test_is_a_hypervisor_port() -> None:
    c, _ = cluster()
    assert isinstance(c, HypervisorPort)


def test_migration_takes_time_then_moves_the_vm() -> None:
    c, clock = cluster()
    job = c.start_migration("vm1", "h1", "h2", OPTS)
    p = c.progress(job)
    assert p.state is JobState.RUNNING and p.fraction == 0.0
    assert c.locate("vm1") == "h1"
    clock.advance(p.data_total_mib / 1100 / 2)
    mid = c.progress(job)
    assert 0.1 < mid.fraction < 0.9 and mid.state is JobState.RUNNING
    clock.advance(60)
    done = c.progress(job)
    assert done.state is JobState.SUCCEEDED and done.downtime_ms is not None
    assert c.locate("vm1") == "h2"
    assert c.snapshot().vm("vm1").host == "h2"


def test_migration_time_grows_with_memory_and_dirty_rate() -> None:
    small = migration_cost(2048, 10, 1100, 300)
    big = migration_cost(16384, 10, 1100, 300)
    dirty = migration_cost(2048, 900, 1100, 300)
    assert big.duration_s > small.duration_s
    assert dirty.duration_s > small.duration_s and dirty.rounds > small.rounds


def test_refusals_are_typed_and_name_vm_and_hosts() -> None:
    c, _ = cluster()
    with pytest.raises(MigrationError, match=r"vm1 from h2 to h3.*runs on h1"):
        c.start_migration("vm1", "h2", "h3", OPTS)
    c.start_migration("vm1", "h1", "h2", OPTS)
    with pytest.raises(MigrationError, match="a migration of this VM is running"):
        c.start_migration("vm1", "h1", "h3", OPTS)


def test_cpu_incompatible_target_is_refused() -> None:
    snap = make_snapshot(
        [make_host("new", cpu_features={"avx512f", "avx"}), make_host("old", cpu_features={"avx"})],
        [make_vm("v", "new", cpu_features={"avx512f"})],
    )
    c = SimulatedCluster(snap, clock=ManualClock())
    assert not c.can_run("v", "old") and c.can_run("v", "new")
    with pytest.raises(MigrationError, match="lacks avx512f"):
        c.start_migration("v", "new", "old", OPTS)


def test_target_memory_is_reserved_while_in_flight() -> None:
    snap = make_snapshot(
        [make_host("a", memory_mib=8192), make_host("b", memory_mib=8192)],
        [
            make_vm("v1", "a", memory_mib=4096),
            make_vm("v2", "a", memory_mib=4096),
            make_vm("w", "b", memory_mib=1024),
        ],
    )
    c = SimulatedCluster(snap, clock=ManualClock())
    c.start_migration("v1", "a", "b", OPTS)
    with pytest.raises(MigrationError, match="not enough free memory"):
        c.start_migration("v2", "a", "b", OPTS)


def test_injected_failure_and_stall_and_abort() -> None:
    c, clock = cluster()
    c.inject_failure("vm1", at_fraction=0.5, message="boom")
    j1 = c.start_migration("vm1", "h1", "h2", OPTS)
    c.inject_stall("vm2", at_fraction=0.3)
    j2 = c.start_migration("vm2", "h1", "h3", OPTS)
    clock.advance(120)
    p1 = c.progress(j1)
    assert p1.state is JobState.FAILED and p1.error == "boom"
    assert c.locate("vm1") == "h1"
    p2 = c.progress(j2)
    assert p2.state is JobState.RUNNING and p2.fraction == pytest.approx(0.3)
    c.abort(j2)
    assert c.progress(j2).state is JobState.ABORTED and c.locate("vm2") == "h1"


def test_unreachable_host_fails_its_migrations_and_hides_its_vms() -> None:
    c, _clock = cluster()
    job = c.start_migration("vm1", "h1", "h2", OPTS)
    c.set_reachable("h2", False)
    p = c.progress(job)
    assert p.state is JobState.FAILED and "h2" in (p.error or "")
    assert c.snapshot().host("h2").state is HostState.UNREACHABLE
    assert c.locate("vm5") is None  # vm5 runs on h2
    with pytest.raises(MigrationError, match="unreachable"):
        c.start_migration("vm5", "h2", "h3", OPTS)
    c.set_reachable("h2", True)
    assert c.snapshot().host("h2").state is HostState.ACTIVE and c.locate("vm5") == "h2"


def test_state_file_outlives_the_process(tmp_path: Path) -> None:
    c, clock = cluster(tmp_path)
    job = c.start_migration("vm1", "h1", "h2", OPTS)
    del c
    again = SimulatedCluster(small_cluster(), clock=clock, state_path=tmp_path / "state.json")
    assert again.progress(job).state is JobState.RUNNING
    clock.advance(600)  # the hypervisors finish the migration while nobody watches
    assert again.locate("vm1") == "h2"
    third = SimulatedCluster(small_cluster(), clock=clock, state_path=tmp_path / "state.json")
    assert third.progress(job).state is JobState.SUCCEEDED
    assert third.start_migration("vm2", "h1", "h3", OPTS) != job  # job ids never repeat


def test_generator_is_deterministic_and_valid() -> None:
    a = generate(GeneratorSpec(hosts=16, vms=500, seed=7))
    assert a == generate(GeneratorSpec(hosts=16, vms=500, seed=7))
    assert a != generate(GeneratorSpec(hosts=16, vms=500, seed=8))
    hosts = a.host_map()
    for v in a.vms:
        assert v.runs_on(hosts[v.host])
    for load in a.loads().values():
        assert load.memory_load <= 1.0
    assert len({h.cpu_features for h in a.hosts}) == 3


def test_a_cpu_usage_above_a_vms_vcpus_is_refused_and_nothing_is_set() -> None:
    """The premise two service tests once had (7 cores on a 2-vCPU VM): refused where it is
    written, not later by a snapshot file's loader."""
    from balancer.errors import InputError

    snap = make_snapshot(
        [make_host("h1")], [make_vm("a", "h1", vcpus=2), make_vm("b", "h1", vcpus=4)]
    )
    sim = SimulatedCluster(snap, clock=ManualClock())
    with pytest.raises(InputError, match=r"vm a: cpu_used_cores 7 is outside 0\.\.2"):
        sim.set_cpu_usage({"b": 3.0, "a": 7.0})
    with pytest.raises(InputError, match="vm b"):
        sim.set_vm_cpu("b", -1.0)
    assert sim.snapshot().vm("b").cpu_used_cores == snap.vm("b").cpu_used_cores
    sim.set_cpu_usage({"a": 2.0, "b": 4.0})
    assert [v.cpu_used_cores for v in sim.snapshot().vms] == [2.0, 4.0]
