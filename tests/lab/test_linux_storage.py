"""A Linux guest on a local (not shared) disk: copied with the migration when allowed, its
records verifying on the target; refused with ``storage_not_shared`` naming the disk when not."""

from __future__ import annotations

import pytest

from balancer.errors import MigrationError
from balancer.lab import Lab
from balancer.libvirt import LibvirtBackend
from balancer.port import JobState, MigrationOptions

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
        check = lab.verify_disk("local-linux")  # the target's copy, while the guest writes on
        assert check.count >= seq_after
    finally:
        lab.remove_vm("local-linux")
