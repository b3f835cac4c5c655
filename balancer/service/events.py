"""Hypervisor lifecycle events in the service.

Words: an *event* is a lifecycle notice of the backend (libvirt's: a VM defined, undefined,
started, stopped, migrated in or out). The *event watch* subscribes to them when the port
offers a ``subscribe(listener)`` (the libvirt backend does; the simulated cluster has no
events and is read at each collect only) and answers each burst of events with one collect at
once, so the service's view (and what follows from it at every collect: a move made outside
the balancer audited as ``external_migration`` with its hosts, recommendations whose VM moved
or vanished expired, the maintenance progress) changes within about ``DEBOUNCE_S`` of the
event instead of at the next collect interval. The collect never runs on libvirt's event-loop
thread (a libvirt call from there could deadlock): a thread of its own does it.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any, Protocol, runtime_checkable

log = logging.getLogger("balancer.service")

#: events closer together than this are answered by one collect (seconds)
DEBOUNCE_S = 0.3


@runtime_checkable
class EventSource(Protocol):
    def subscribe(self, listener: Callable[[Any], None]) -> Callable[[], None]: ...


class EventWatch:
    """Collect at once on the port's lifecycle events (module docstring)."""

    def __init__(self, port: object, collect: Callable[[], object]) -> None:
        self._port = port
        self._collect = collect
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._unsubscribe: Callable[[], None] | None = None
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        #: events seen and collects they caused (``GET /status`` shows them)
        self.events = 0
        self.collects = 0
        self.last_event: str | None = None

    @property
    def active(self) -> bool:
        return self._unsubscribe is not None

    def start(self) -> bool:
        """Subscribe (when the port has events); whether it did."""
        if not isinstance(self._port, EventSource):
            return False
        self._unsubscribe = self._port.subscribe(self._on_event)
        self._thread = threading.Thread(target=self._run, name="balancer-events", daemon=True)
        self._thread.start()
        log.info("collecting at once on the backend's lifecycle events")
        return True

    def _on_event(self, event: Any) -> None:  # libvirt's event-loop thread: never block here
        with self._lock:
            self.events += 1
            self.last_event = str(getattr(event, "kind", event))
        self._wake.set()

    def _run(self) -> None:
        while not self._stop.is_set():
            self._wake.wait()
            if self._stop.is_set():
                return
            # a burst (a migration is several events on two hosts): one collect after it
            if self._stop.wait(DEBOUNCE_S):
                return
            self._wake.clear()
            try:
                self._collect()
                with self._lock:
                    self.collects += 1
            except Exception as exc:  # a failed collect is logged by the collect itself too
                log.warning("collect on a lifecycle event failed: %s", exc)

    def stop(self) -> None:
        if self._unsubscribe is not None:
            self._unsubscribe()
            self._unsubscribe = None
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
