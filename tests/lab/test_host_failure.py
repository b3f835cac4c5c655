"""Hosts that stop answering: unreachable and back; a target that dies mid-migration."""

from __future__ import annotations

import time

import pytest

from balancer.errors import MigrationError
from balancer.lab import Lab
from balancer.libvirt import LibvirtBackend
from balancer.model import HostState
from balancer.port import JobState, MigrationOptions

pytestmark = [pytest.mark.lab, pytest.mark.timeout(180)]


def test_stopped_libvirtd_makes_host_unreachable_and_it_comes_back(
    lab: Lab, backend: LibvirtBackend
) -> None:
    host = lab.host_names()[-1]
    before = backend.snapshot()
    vms_before = {v.name for v in before.vms_on(host)}
    lab.stop_host(host)
    try:
        snap = backend.snapshot()
        assert snap.host(host).state is HostState.UNREACHABLE
        # its last known VMs are still listed; the other hosts are unaffected
        assert {v.name for v in snap.vms_on(host)} == vms_before
        assert all(h.state is HostState.ACTIVE for h in snap.hosts if h.name != host)
        assert host in backend.unreachable_hosts()
    finally:
        lab.start_host(host)
    snap = backend.snapshot()
    assert snap.host(host).state is HostState.ACTIVE
    assert {v.name for v in snap.vms_on(host)} == vms_before  # guests kept running
    assert backend.unreachable_hosts() == {}


def test_target_dying_mid_migration_fails_typed_and_vm_stays_on_source(
    lab: Lab, backend: LibvirtBackend
) -> None:
    vm = "idle-3"
    (source,) = lab.where(vm)
    target = next(h for h in lab.host_names() if h != source)
    job_id = backend.start_migration(
        vm, source, target, MigrationOptions(bandwidth_mib_s=1, auto_converge=False)
    )
    deadline = time.monotonic() + 30
    while backend.progress(job_id).data_processed_mib <= 0:
        assert not backend.progress(job_id).state.final, backend.progress(job_id)
        assert time.monotonic() < deadline, "no migration progress within 30s"
        time.sleep(0.05)
    lab.kill_host(target, guests=[vm])  # libvirtd and the incoming QEMU die
    try:
        final = backend.wait(job_id, timeout_s=60)
        assert final.state is JobState.FAILED, final
        err = backend.job_error(job_id)
        assert isinstance(err, MigrationError)
        assert (err.vm, err.source, err.target) == (vm, source, target)
        assert "libvirt" in err.detail
        assert isinstance(err.__cause__, Exception)
        assert lab.where(vm) == [source]
        assert backend.locate(vm) == source
    finally:
        lab.start_host(target)
    assert lab.where(vm) == [source]


def test_out_of_band_start_and_stop_are_seen_as_events(lab: Lab, backend: LibvirtBackend) -> None:
    backend.snapshot()  # connections open, events registered
    host = lab.host_names()[0]
    lab.define_vm("oob-1", host)
    try:
        deadline = time.monotonic() + 10
        while not any(e.vm == "oob-1" and e.running_here for e in backend.events()):
            assert time.monotonic() < deadline, f"no start event: {backend.events()[-5:]}"
            time.sleep(0.05)
    finally:
        lab.remove_vm("oob-1")
    deadline = time.monotonic() + 10
    while not any(e.vm == "oob-1" and e.running_here is False for e in backend.events()):
        assert time.monotonic() < deadline, f"no stop event: {backend.events()[-5:]}"
        time.sleep(0.05)
    assert backend.locate("oob-1") is None


def test_hung_host_times_out_as_unreachable_and_recovers(lab: Lab) -> None:
    """A libvirtd that accepts but never answers costs one timeout, not the whole cycle."""
    backend = lab.backend(timeout_s=2.0, warmup_s=0)
    host = lab.host_names()[1]
    try:
        backend.snapshot()
        lab.freeze_host(host)
        try:
            started = time.monotonic()
            snap = backend.snapshot()
            took = time.monotonic() - started
            assert snap.host(host).state is HostState.UNREACHABLE
            assert all(h.state is HostState.ACTIVE for h in snap.hosts if h.name != host)
            assert took < 6.0, f"a hung host held the snapshot for {took:.1f}s"
        finally:
            lab.thaw_host(host)
        deadline = time.monotonic() + 30
        while backend.snapshot().host(host).state is not HostState.ACTIVE:
            assert time.monotonic() < deadline, "the host did not come back after SIGCONT"
            time.sleep(0.5)
    finally:
        backend.close()
