"""The libvirt implementation of the hypervisor port (the only place that says "domain").

``LibvirtBackend(hosts)`` implements :class:`balancer.port.HypervisorPort`; it also offers
``cpu_report()``, ``subscribe()``/``events()`` (lifecycle events), ``migrate()`` (start and
wait), ``job_record()`` (libvirt's completed job stats and our wall time).
"""

from __future__ import annotations

from balancer.libvirt.backend import (
    CpuReport,
    HostConfig,
    HostCpu,
    LibvirtBackend,
    MigrationRecord,
    VMCpuFit,
    backend_for_uris,
    backend_from_settings,
)
from balancer.libvirt.events import VMEvent, VMEventKind, ensure_event_loop

__all__ = [
    "CpuReport",
    "HostConfig",
    "HostCpu",
    "LibvirtBackend",
    "MigrationRecord",
    "VMCpuFit",
    "VMEvent",
    "VMEventKind",
    "backend_for_uris",
    "backend_from_settings",
    "ensure_event_loop",
]
