"""libvirt errors become our typed errors, naming VM, hosts and what libvirt said."""

from __future__ import annotations

import libvirt

from balancer.errors import HostUnreachableError, MigrationError
from balancer.libvirt.errors import (
    LibvirtFault,
    is_aborted,
    is_connection_error,
    translate_host_error,
    translate_migration_error,
)


def _error(code: int, domain: int, message: str) -> libvirt.libvirtError:
    exc = libvirt.libvirtError(message)
    exc.err = (code, domain, message, 2, None, None, None, 0, 0)
    return exc


def test_migration_error_names_vm_hosts_and_libvirt_message() -> None:
    exc = _error(
        libvirt.VIR_ERR_OPERATION_FAILED,
        libvirt.VIR_FROM_QEMU,
        "operation failed: migration out job: unexpectedly failed",
    )
    err = translate_migration_error(exc, "web-1", "h1", "h2")
    assert isinstance(err, MigrationError)
    assert (err.vm, err.source, err.target) == ("web-1", "h1", "h2")
    assert "migration out job: unexpectedly failed" in err.detail
    assert "VIR_ERR_OPERATION_FAILED" in err.detail
    assert str(err).startswith("migration of web-1 from h1 to h2 failed: libvirt:")
    assert err.exit_code == 4


def test_lost_connection_and_abort_are_said_plainly() -> None:
    lost = _error(libvirt.VIR_ERR_SYSTEM_ERROR, libvirt.VIR_FROM_RPC, "End of file")
    assert is_connection_error(lost)
    assert "lost the connection" in translate_migration_error(lost, "v", "a", "b").detail
    aborted = _error(libvirt.VIR_ERR_OPERATION_ABORTED, libvirt.VIR_FROM_QEMU, "canceled")
    assert is_aborted(aborted) and not is_connection_error(aborted)
    assert translate_migration_error(aborted, "v", "a", "b").detail.startswith("aborted")


def test_host_error_and_fault_without_details() -> None:
    refused = _error(
        libvirt.VIR_ERR_SYSTEM_ERROR,
        libvirt.VIR_FROM_RPC,
        "unable to connect to server at '127.0.0.1:16603': Connection refused",
    )
    err = translate_host_error(refused, "h3")
    assert isinstance(err, HostUnreachableError) and err.host == "h3"
    assert "Connection refused" in str(err)
    bare = libvirt.libvirtError("just text")
    bare.err = None
    fault = LibvirtFault.of(bare)
    assert fault.code == 0 and fault.message == "just text"


def test_backend_from_settings_uses_names_uris_and_timeouts() -> None:
    from balancer.libvirt import backend_from_settings
    from balancer.settings import LibvirtHost

    backend = backend_from_settings(
        [LibvirtHost(name="a", uri="qemu+tcp://127.0.0.1:1/system", timeout_s=1.5)],
        warmup_s=0,
    )
    try:
        assert backend.host_names == ["a"]
        assert backend._state("a").config.timeout_s == 1.5
    finally:
        backend.close()
