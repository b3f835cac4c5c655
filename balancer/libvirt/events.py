"""libvirt's default event loop, run in one daemon thread per process.

It must be registered before connections are opened: it carries domain lifecycle events,
connection-close callbacks and keepalive (which is how a dead host is noticed quickly).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum

import libvirt

_lock = threading.Lock()
_thread: threading.Thread | None = None


def ensure_event_loop() -> None:
    """Register libvirt's default event implementation and run it (once per process)."""
    global _thread
    with _lock:
        if _thread is not None and _thread.is_alive():
            return
        libvirt.virEventRegisterDefaultImpl()

        def run() -> None:
            while True:
                libvirt.virEventRunDefaultImpl()

        _thread = threading.Thread(target=run, name="libvirt-events", daemon=True)
        _thread.start()


class VMEventKind(StrEnum):
    DEFINED = "defined"
    UNDEFINED = "undefined"
    STARTED = "started"
    SUSPENDED = "suspended"
    RESUMED = "resumed"
    STOPPED = "stopped"
    SHUTDOWN = "shutdown"
    PMSUSPENDED = "pmsuspended"
    CRASHED = "crashed"
    #: an incoming migration started on this host (the VM is not running here yet)
    INCOMING = "incoming"
    MIGRATED_IN = "migrated_in"
    MIGRATED_OUT = "migrated_out"
    OTHER = "other"


_LIFECYCLE = {
    libvirt.VIR_DOMAIN_EVENT_DEFINED: VMEventKind.DEFINED,
    libvirt.VIR_DOMAIN_EVENT_UNDEFINED: VMEventKind.UNDEFINED,
    libvirt.VIR_DOMAIN_EVENT_STARTED: VMEventKind.STARTED,
    libvirt.VIR_DOMAIN_EVENT_SUSPENDED: VMEventKind.SUSPENDED,
    libvirt.VIR_DOMAIN_EVENT_RESUMED: VMEventKind.RESUMED,
    libvirt.VIR_DOMAIN_EVENT_STOPPED: VMEventKind.STOPPED,
    libvirt.VIR_DOMAIN_EVENT_SHUTDOWN: VMEventKind.SHUTDOWN,
    libvirt.VIR_DOMAIN_EVENT_PMSUSPENDED: VMEventKind.PMSUSPENDED,
    libvirt.VIR_DOMAIN_EVENT_CRASHED: VMEventKind.CRASHED,
}


def event_kind(event: int, detail: int) -> VMEventKind:
    """Our name for a libvirt lifecycle event (migrations get their own kinds)."""
    if event == libvirt.VIR_DOMAIN_EVENT_STARTED and detail == (
        libvirt.VIR_DOMAIN_EVENT_STARTED_MIGRATED
    ):
        return VMEventKind.INCOMING
    if event == libvirt.VIR_DOMAIN_EVENT_RESUMED and detail in (
        libvirt.VIR_DOMAIN_EVENT_RESUMED_MIGRATED,
        libvirt.VIR_DOMAIN_EVENT_RESUMED_POSTCOPY,
    ):
        return VMEventKind.MIGRATED_IN
    if event == libvirt.VIR_DOMAIN_EVENT_STOPPED and detail == (
        libvirt.VIR_DOMAIN_EVENT_STOPPED_MIGRATED
    ):
        return VMEventKind.MIGRATED_OUT
    return _LIFECYCLE.get(event, VMEventKind.OTHER)


@dataclass(frozen=True, slots=True, kw_only=True)
class VMEvent:
    """Something happened to a VM on a host, seen through libvirt's lifecycle events."""

    host: str
    vm: str
    kind: VMEventKind
    detail: int
    at: datetime

    @property
    def running_here(self) -> bool | None:
        """True when the VM now runs on ``host``, False when it left, None when unchanged."""
        if self.kind in (VMEventKind.STARTED, VMEventKind.MIGRATED_IN, VMEventKind.RESUMED):
            return True
        if self.kind in (
            VMEventKind.STOPPED,
            VMEventKind.MIGRATED_OUT,
            VMEventKind.CRASHED,
            VMEventKind.UNDEFINED,
        ):
            return False
        return None
