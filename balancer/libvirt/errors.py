"""Translate ``libvirt.libvirtError`` into the balancer's exception tree (cause chained by
the caller: ``raise translate_migration_error(exc, ...) from exc``)."""

from __future__ import annotations

from dataclasses import dataclass

import libvirt

from balancer.errors import HostUnreachableError, MigrationError

#: error codes that mean "the connection to the host is gone or never came up"
CONNECTION_CODES = frozenset(
    {
        libvirt.VIR_ERR_NO_CONNECT,
        libvirt.VIR_ERR_INVALID_CONN,
        libvirt.VIR_ERR_RPC,
        libvirt.VIR_ERR_AUTH_FAILED,
        libvirt.VIR_ERR_AUTH_UNAVAILABLE,
    }
)
CONNECTION_DOMAINS = frozenset({libvirt.VIR_FROM_RPC, libvirt.VIR_FROM_REMOTE})


@dataclass(frozen=True, slots=True, kw_only=True)
class LibvirtFault:
    """What libvirt said: error code, the module that raised it, and its message."""

    code: int
    domain: int
    message: str

    @classmethod
    def of(cls, exc: libvirt.libvirtError) -> LibvirtFault:
        return cls(
            code=int(exc.get_error_code() or 0),
            domain=int(exc.get_error_domain() or 0),
            message=(exc.get_error_message() or str(exc) or "unknown libvirt error").strip(),
        )

    @property
    def code_name(self) -> str:
        for name in dir(libvirt):
            if name.startswith("VIR_ERR_") and getattr(libvirt, name) == self.code:
                return name
        return f"code {self.code}"

    def describe(self) -> str:
        return f"{self.message} ({self.code_name})"


def is_connection_error(exc: libvirt.libvirtError) -> bool:
    fault = LibvirtFault.of(exc)
    if fault.code in CONNECTION_CODES:
        return True
    return bool(fault.code == libvirt.VIR_ERR_SYSTEM_ERROR and fault.domain in CONNECTION_DOMAINS)


def is_aborted(exc: libvirt.libvirtError) -> bool:
    return bool(LibvirtFault.of(exc).code == libvirt.VIR_ERR_OPERATION_ABORTED)


def translate_migration_error(
    exc: libvirt.libvirtError, vm: str, source: str, target: str
) -> MigrationError:
    """A MigrationError naming the VM, both hosts and what libvirt said."""
    fault = LibvirtFault.of(exc)
    detail = f"libvirt: {fault.describe()}"
    if fault.code == libvirt.VIR_ERR_OPERATION_ABORTED:
        detail = f"aborted; {detail}"
    elif is_connection_error(exc):
        detail = f"lost the connection between the hosts; {detail}"
    return MigrationError(vm, source, target, detail)


def translate_host_error(exc: libvirt.libvirtError, host: str) -> HostUnreachableError:
    return HostUnreachableError(host, f"libvirt: {LibvirtFault.of(exc).describe()}")
