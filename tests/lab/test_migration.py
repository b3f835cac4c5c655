"""Live migration of real guests between lab hosts."""

from __future__ import annotations

import time

import pytest

from balancer.errors import MigrationError
from balancer.lab import Lab
from balancer.libvirt import LibvirtBackend
from balancer.port import JobState, MigrationOptions

pytestmark = [pytest.mark.lab, pytest.mark.timeout(180)]


def _other(lab: Lab, host: str, *, avoid: str | None = None) -> str:
    return next(h for h in lab.host_names() if h not in (host, avoid))


def test_busy_guest_migrates_live_and_keeps_running(
    lab: Lab, backend: LibvirtBackend, busy_vm: str
) -> None:
    (source,) = lab.where(busy_vm)
    target = _other(lab, source, avoid=lab.poor_host)
    before = lab.read_counter(busy_vm)

    job_id = backend.start_migration(busy_vm, source, target, MigrationOptions())
    deadline = time.monotonic() + 60
    while not (progress := backend.progress(job_id)).state.final:
        assert time.monotonic() < deadline, f"migration still running: {progress}"
        time.sleep(0.05)

    assert progress.state is JobState.SUCCEEDED, progress.error
    assert lab.where(busy_vm) == [target]  # exactly one host runs it: the target
    assert backend.locate(busy_vm) == target
    time.sleep(0.2)
    after = lab.read_counter(busy_vm, host=target)
    assert after > before, "the guest lost its state or stopped running"
    # libvirt's completed job stats: total time and downtime
    assert progress.elapsed_s > 0
    assert progress.downtime_ms is not None and progress.downtime_ms > 0
    assert progress.data_processed_mib > 0
    record = backend.job_record(job_id)
    assert record.wall_s is not None and record.wall_s >= progress.elapsed_s * 0.5
    assert {"time_elapsed", "downtime"} <= set(record.libvirt_stats)


def test_progress_and_abort_keep_the_vm_on_its_source(lab: Lab, backend: LibvirtBackend) -> None:
    vm = "idle-2"
    (source,) = lab.where(vm)
    target = _other(lab, source)
    job_id = backend.start_migration(
        vm, source, target, MigrationOptions(bandwidth_mib_s=1, auto_converge=False)
    )
    deadline = time.monotonic() + 30
    while (progress := backend.progress(job_id)).data_processed_mib <= 0:
        assert not progress.state.final, f"ended before it could be aborted: {progress}"
        assert time.monotonic() < deadline, "no migration progress within 30s"
        time.sleep(0.05)
    assert progress.state is JobState.RUNNING
    assert progress.data_total_mib > 0 and progress.data_remaining_mib > 0
    # mid-migration the target holds a paused incoming copy: the snapshot still shows one VM,
    # on the source, where it runs
    snap = backend.snapshot()
    assert [v.host for v in snap.vms if v.name == vm] == [source]

    backend.abort(job_id)
    final = backend.wait(job_id, timeout_s=30)
    assert final.state is JobState.ABORTED, final
    err = backend.job_error(job_id)
    assert isinstance(err, MigrationError) and err.vm == vm
    assert lab.where(vm) == [source]


def test_vm_with_local_disk_needs_storage_copy(lab: Lab, backend: LibvirtBackend) -> None:
    """A writable disk that only its host sees is reported, never silently skipped."""
    import subprocess

    host = lab.host_names()[0]
    image = lab.state_dir / "hosts" / host / "lib" / "images" / "local-1.qcow2"
    subprocess.run(
        ["qemu-img", "create", "-q", "-f", "qcow2", str(image), "16M"], check=True, timeout=30
    )
    lab.define_vm("local-1", host, extra_disks=["/var/lib/libvirt/images/local-1.qcow2"])
    try:
        with pytest.raises(
            MigrationError, match=r"storage_not_shared.*needs a storage copy"
        ) as info:
            backend.start_migration("local-1", host, _other(lab, host), MigrationOptions())
        assert "vdb" in str(info.value) and info.value.vm == "local-1"
        assert lab.where("local-1") == [host]
    finally:
        lab.remove_vm("local-1")


def test_local_disk_is_copied_when_asked(lab: Lab, backend: LibvirtBackend) -> None:
    import subprocess

    host = lab.host_names()[0]
    target = _other(lab, host)
    image = lab.state_dir / "hosts" / host / "lib" / "images" / "local-2.qcow2"
    subprocess.run(
        ["qemu-img", "create", "-q", "-f", "qcow2", str(image), "16M"], check=True, timeout=30
    )
    lab.define_vm("local-2", host, extra_disks=["/var/lib/libvirt/images/local-2.qcow2"])
    try:
        record = backend.migrate(
            "local-2", host, target, MigrationOptions(copy_storage=True), timeout_s=120
        )
        assert record.progress.state is JobState.SUCCEEDED
        assert lab.where("local-2") == [target]
        assert (lab.state_dir / "hosts" / target / "lib" / "images" / "local-2.qcow2").exists()
    finally:
        lab.remove_vm("local-2")


def test_post_copy_moves_a_guest_that_pre_copy_cannot(lab: Lab, backend: LibvirtBackend) -> None:
    """A guest dirtying memory faster than the link never converges in pre-copy; the backend
    switches to post-copy after the first pass and the guest arrives, still counting."""
    import libvirt

    from balancer.lab import GuestKind

    host = lab.host_names()[0]
    target = _other(lab, host, avoid=lab.poor_host)
    lab.define_vm("dirty-1", host, GuestKind.DIRTY, memory_mib=64)
    try:
        before = lab.wait_counter_running("dirty-1", timeout_s=60)
        backend.snapshot()  # connections and lifecycle events before the migration starts
        record = backend.migrate(
            "dirty-1",
            host,
            target,
            MigrationOptions(post_copy=True, bandwidth_mib_s=16, auto_converge=False),
            timeout_s=120,
        )
        assert record.progress.state is JobState.SUCCEEDED
        assert lab.where("dirty-1") == [target]
        assert lab.read_counter("dirty-1", host=target) > before
        time.sleep(0.2)
        details = [(e.host, e.kind.value, e.detail) for e in backend.events() if e.vm == "dirty-1"]
        # it really switched: the source paused for post-copy, or the target resumed in it
        assert (host, "suspended", libvirt.VIR_DOMAIN_EVENT_SUSPENDED_POSTCOPY) in details or (
            target,
            "migrated_in",
            libvirt.VIR_DOMAIN_EVENT_RESUMED_POSTCOPY,
        ) in details, details
    finally:
        lab.remove_vm("dirty-1")
