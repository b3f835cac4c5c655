"""A Linux guest on a local (not shared) disk: copied with the migration when allowed, its
records verifying on the target; refused with ``storage_not_shared`` naming the disk when not."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import pytest

from balancer.errors import MigrationError
from balancer.executor import Executor, ExecutorConfig, Result
from balancer.lab import Lab
from balancer.libvirt import LibvirtBackend
from balancer.port import JobState, MigrationOptions
from balancer.sim.clock import RealClock
from balancer.storage import Store
from balancer.storage.audit import AuditQuery
from tests.executor.helpers import make_plan

pytestmark = [pytest.mark.lab, pytest.mark.timeout(300)]


def test_local_disk_guest_is_copied_when_allowed_and_blocked_when_not(
    lab: Lab, backend: LibvirtBackend
) -> None:
    host = lab.host_names()[0]
    target = next(h for h in lab.host_names() if h not in (host, lab.poor_host))
    lab.define_linux_vm("local-linux", host, disk="local", disk_mib=32)
    try:
        lab.wait_guest_ready("local-linux", timeout_s=120)
        backend.snapshot()
        with pytest.raises(MigrationError, match="storage_not_shared") as info:
            backend.start_migration("local-linux", host, target, MigrationOptions())
        assert "vda (/var/lib/libvirt/images/local-linux.qcow2)" in str(info.value)
        assert lab.where("local-linux") == [host]  # untouched
        _, seq_before = lab.guest_status("local-linux")

        record = backend.migrate(
            "local-linux", host, target, MigrationOptions(copy_storage=True), timeout_s=240
        )
        assert record.progress.state is JobState.SUCCEEDED, record.progress.error
        assert lab.where("local-linux") == [target]
        _, seq_after = lab.guest_status("local-linux")
        assert seq_after > seq_before
        copied = lab.disk_path("local-linux")
        assert copied.is_relative_to(lab.state_dir / "hosts" / target)
        # The guest writes with O_DIRECT but never flushes, so the target QEMU may still hold
        # the qcow2 metadata of newly allocated clusters in memory, and a reader of the file
        # would see those records as zeros (seen once: 128 of 135 records). Pausing the guest
        # makes QEMU flush every disk (vm_stop -> bdrv_flush_all); then the file holds every
        # record the guest had written.
        conn = lab.connect(target)
        try:
            dom = conn.lookupByName("local-linux")
            dom.suspend()
            check = lab.verify_disk("local-linux")  # the target's copy
            dom.resume()
        finally:
            conn.close()
        assert check.count >= seq_after
    finally:
        lab.remove_vm("local-linux")


def test_executor_blocks_a_move_of_unshared_disks_with_storage_not_shared(
    lab: Lab, tmp_path: Path
) -> None:
    """Through the executor (policy allow_storage_copy: false): the move is skipped with the
    reason storage_not_shared, the error naming the disk, no retry elsewhere, VM untouched."""
    host = lab.host_names()[0]
    target = next(h for h in lab.host_names() if h not in (host, lab.poor_host))
    image = lab.state_dir / "hosts" / host / "lib" / "images" / "blocked-1.qcow2"
    subprocess.run(
        ["qemu-img", "create", "-q", "-f", "qcow2", str(image), "16M"], check=True, timeout=30
    )
    lab.define_vm("blocked-1", host, extra_disks=["/var/lib/libvirt/images/blocked-1.qcow2"])
    backend = lab.backend()
    store = Store.open(f"sqlite:///{tmp_path / 'b.db'}")
    try:
        clock = RealClock()
        ex = Executor(backend, store, clock=clock, config=ExecutorConfig(poll_interval_s=0.1))
        sub = ex.submit_plan(make_plan([("blocked-1", host, target)]))
        deadline = time.monotonic() + 60
        while not ex.idle:
            assert time.monotonic() < deadline, ex.status()
            ex.tick()
            clock.sleep(0.1)
        (result,) = ex.results(sub.request_ids)
        assert result.result is Result.SKIPPED, result
        assert result.skip_reason == "storage_not_shared"
        assert result.error is not None and "vdb (/var/lib/libvirt/images/blocked-1.qcow2)" in (
            result.error
        )
        (rec,) = [r for r in store.audit(AuditQuery(kind="outcome")) if r.vm == "blocked-1"]
        assert rec.result == "skipped" and rec.detail == "storage_not_shared"
        assert lab.where("blocked-1") == [host]
    finally:
        store.close()
        backend.close()
        lab.remove_vm("blocked-1")
