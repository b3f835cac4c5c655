"""Real Linux guests in the lab: a held-open TCP connection, the guest's MAC, QEMU's announce
frames, its uptime and its disk records all survive a live migration on shared iSCSI storage,
over plain TCP, over a TLS-encrypted stream with qemu+tls:// management, and with qemu+ssh://
management."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest

from balancer.errors import MigrationError
from balancer.lab import Lab
from balancer.libvirt import LibvirtBackend
from balancer.port import MigrationOptions
from tests.lab.linuxcheck import QEMU_MAGIC, TLS_HANDSHAKE, migrate_with_open_connection
from tests.lab.test_lab_lifecycle import _cli
from tests.service.running import wait_for

pytestmark = [pytest.mark.lab, pytest.mark.timeout(300)]


@pytest.fixture(scope="module")
def linux_vm(lab: Lab) -> Iterator[str]:
    host = lab.host_names()[0]
    lab.define_linux_vm("web-1", host, writer=True)
    try:
        lab.wait_guest_ready("web-1", timeout_s=120)
        yield "web-1"
    finally:
        lab.remove_vm("web-1")


def _rich_other(lab: Lab, vm: str) -> str:
    """A host other than the VM's that has migration certificates (not the weaker one)."""
    (here,) = lab.where(vm)
    return next(h for h in lab.host_names() if h not in (here, lab.poor_host))


def test_connection_mac_uptime_and_writes_survive_a_clear_migration(
    lab: Lab, backend: LibvirtBackend, linux_vm: str
) -> None:
    record, streams = migrate_with_open_connection(
        lab, backend, linux_vm, _rich_other(lab, linux_vm), MigrationOptions()
    )
    assert record.progress.encrypted is False and record.progress.storage == "shared"
    assert any(p.startswith(QEMU_MAGIC) for p in streams.values()), streams  # clear text


def test_tls_stream_and_tls_management(lab: Lab, linux_vm: str) -> None:
    backend = lab.backend(transport="tls")
    try:
        assert all(backend._state(h).config.uri.startswith("qemu+tls://") for h in lab.host_names())
        record, streams = migrate_with_open_connection(
            lab, backend, linux_vm, _rich_other(lab, linux_vm), MigrationOptions(tls="required")
        )
    finally:
        backend.close()
    assert record.progress.encrypted is True
    assert streams, "no migration connection seen"
    assert all(p.startswith(TLS_HANDSHAKE) for p in streams.values()), streams
    assert not any(QEMU_MAGIC in p for p in streams.values())
    assert {"time_elapsed", "downtime"} <= set(record.libvirt_stats)


def test_ssh_management(lab: Lab, linux_vm: str) -> None:
    backend = lab.backend(transport="ssh")
    try:
        record, _ = migrate_with_open_connection(
            lab, backend, linux_vm, _rich_other(lab, linux_vm), MigrationOptions(tls="preferred")
        )
    finally:
        backend.close()
    assert record.progress.encrypted is True  # both hosts have certificates: preferred = TLS


def test_tls_required_to_a_host_without_certificates_is_refused_before_it_starts(
    lab: Lab, backend: LibvirtBackend, linux_vm: str
) -> None:
    assert lab.poor_host is not None
    assert lab.poor_host not in lab.state.migration_tls_hosts
    (here,) = lab.where(linux_vm)
    _, seq = lab.guest_status(linux_vm)
    with pytest.raises(MigrationError, match="migration_tls_unavailable") as info:
        backend.start_migration(linux_vm, here, lab.poor_host, MigrationOptions(tls="required"))
    assert f"{lab.poor_host} has no migration TLS certificates" in str(info.value)
    assert lab.where(linux_vm) == [here]
    wait_for(  # untouched: still running and writing
        "the guest writing on", lambda: lab.guest_status(linux_vm)[1] > seq, timeout_s=30
    )
    # "preferred" goes ahead in clear text to that host; "off" never asks
    assert backend._encrypt(linux_vm, here, lab.poor_host, "preferred") is False


def test_status_lists_mac_address_and_echo_port(lab: Lab, linux_vm: str) -> None:
    env = {"BALANCER_LAB_DIR": str(lab.state_dir)}
    res = _cli("lab", "status", "--json", env=env)
    assert res.returncode == 0, res.stderr
    (entry,) = [g for g in json.loads(res.stdout)["guests"] if g["name"] == linux_vm]
    guest = lab.vm(linux_vm)
    assert entry["mac"] == guest.mac and entry["address"] == guest.address
    assert entry["echo_port"] == 7 and entry["on"] == lab.where(linux_vm)
    assert entry["disk"]["kind"] == "iscsi"
    text = _cli("lab", "status", env=env)
    assert text.returncode == 0, text.stderr
    assert guest.mac in text.stdout and guest.address in text.stdout
