"""``balancer serve`` with ``ha:`` or ``clusters:`` in the settings: one API, every cluster.

* The first cluster's API is served at ``/`` (``/api/v1/...``, the dashboard); each further
  cluster's at ``/clusters/<name>/`` (the same API, its own metrics).
* ``GET /api/v1/ha`` (viewer): this instance, the instances of the deployment and each
  cluster's leader, epoch and since when.
* Signals as in :mod:`balancer.service.runner`: the first SIGTERM/SIGINT stops the election and
  hands every cluster over at once (step down, release the lease: a standby takes it within a
  renewal); migrations in flight keep running on the hypervisors and the next leader follows
  them. A second signal exits at once.
"""

from __future__ import annotations

import signal
import threading
from dataclasses import asdict
from datetime import datetime
from types import FrameType
from typing import Any

import uvicorn

from balancer.api.app import Viewer
from balancer.errors import ServiceError, StorageError
from balancer.ha.node import Node
from balancer.ha.status import deployment_status
from balancer.service.listen import bind
from balancer.service.logs import log, setup_logging
from balancer.settings import Settings


def _iso(t: datetime | None) -> str | None:
    return t.isoformat() if t else None


def ha_document(node: Node) -> dict[str, Any]:
    """The deployment as this instance sees it (``GET /api/v1/ha``)."""
    doc: dict[str, Any] = {"instances": [], "leases": []}
    if node.leases is not None:
        try:
            doc = deployment_status(node.leases, alive_s=node.alive_s)
        except StorageError as exc:
            log.warning("ha status: %s", exc)
    return {
        "instance": node.instance,
        "lease_seconds": node.lease_s,
        "leading": sorted(n for n, lead in node.local_roles().items() if lead),
        "clusters": [{**asdict(s), "since": _iso(s.since)} for s in node.cluster_status()],
        **doc,
        "last_error": node.last_error,
    }


def create_ha_app(node: Node) -> Any:
    from fastapi import FastAPI

    from balancer.api.app import create_app

    seats = list(node.seats.values())
    app: FastAPI = create_app(seats[0].runtime)
    for seat in seats[1:]:
        app.mount(f"/clusters/{seat.name}", create_app(seat.runtime))

    @app.get("/api/v1/ha", tags=["status"])
    def ha_status(_p: Viewer) -> dict[str, Any]:
        return ha_document(node)

    @app.get("/api/v1/ha/roles", tags=["status"])
    def ha_roles(_p: Viewer) -> dict[str, Any]:
        """This instance's own belief, cheaply (no database): which clusters it leads."""
        return {"instance": node.instance, "leading": node.local_roles()}

    return app


def serve_ha(settings: Settings, *, lab: bool = False) -> int:
    """Run this instance until signalled; returns the exit code."""
    setup_logging(as_json=settings.log_json)
    sock = bind(settings.api.host, settings.api.port)
    node = Node.build(settings, lab=lab)
    got = threading.Event()
    second = threading.Event()
    names: list[str] = []

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        names.append(signal.Signals(signum).name)
        (second if len(names) > 1 else got).set()

    old = {s: signal.signal(s, on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
    server: uvicorn.Server | None = None
    thread: threading.Thread | None = None
    try:
        node.start()
        app = create_ha_app(node)
        config = uvicorn.Config(
            app, log_level="warning", access_log=False, lifespan="off", timeout_graceful_shutdown=3
        )
        server = uvicorn.Server(config)
        thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, name="api")
        thread.start()
        log.info(
            "instance %s serving on http://%s:%d/ (clusters %s)",
            node.instance,
            settings.api.host,
            settings.api.port,
            ", ".join(node.seats),
        )
        while not got.wait(0.5):
            if not thread.is_alive():
                raise ServiceError("the HTTP server stopped unexpectedly")
        log.info("%s: handing the clusters over and stopping", names[0])
        node.begin_stop()
        node.release_all(f"stopping ({names[0]})")
        return 0
    finally:
        if server is not None:
            server.should_exit = True
        if thread is not None:
            thread.join(timeout=10)
        node.close()
        sock.close()
        for s, h in old.items():
            signal.signal(s, h)
        log.info("stopped")
