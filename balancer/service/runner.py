"""``balancer serve``: the service with its HTTP API, and the clean stop.

Signals (like uvicorn): the first SIGTERM/SIGINT stops taking new work (jobs paused, the
executor starts nothing new, queued work stays in the journal for the next start) and waits
for the migrations in flight, up to ``service.drain_timeout_s``; a second signal aborts them
(the VMs stay on their sources) and exits. Each step is in the log and the audit trail.
"""

from __future__ import annotations

import signal
import threading
from types import FrameType

import uvicorn

from balancer.errors import ServiceError
from balancer.service.listen import bind
from balancer.service.logs import log, setup_logging
from balancer.service.runtime import Runtime
from balancer.settings import Settings


def serve(settings: Settings, *, lab: bool = False) -> int:
    """Run until signalled; returns the exit code."""
    from balancer.api.app import create_app

    if settings.ha is not None or settings.clusters is not None:
        from balancer.ha.serve import serve_ha

        return serve_ha(settings, lab=lab)
    setup_logging(as_json=settings.log_json)
    sock = bind(settings.api.host, settings.api.port)
    rt = Runtime.build(settings, lab=lab)
    signals: list[str] = []
    got = threading.Event()
    second = threading.Event()

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        signals.append(signal.Signals(signum).name)
        if len(signals) == 1:
            got.set()
        else:
            second.set()

    old = {s: signal.signal(s, on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
    server: uvicorn.Server | None = None
    thread: threading.Thread | None = None
    try:
        rt.start()
        app = create_app(rt)
        config = uvicorn.Config(
            app, log_level="warning", access_log=False, lifespan="off", timeout_graceful_shutdown=3
        )
        server = uvicorn.Server(config)
        thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, name="api")
        thread.start()
        log.info(
            "serving on http://%s:%d/ (backend %s, policy %s)",
            settings.api.host,
            settings.api.port,
            rt.service.backend_name,
            (rt.service.policy.digest[:12] if rt.service.policy else "-"),
        )
        while not got.wait(0.5):
            if not thread.is_alive():
                raise ServiceError("the HTTP server stopped unexpectedly")
        log.info("%s: stopping (a second signal aborts migrations in flight)", signals[0])
        rt.begin_stop(signals[0])
        drained: list[bool] = []
        drainer = threading.Thread(target=lambda: drained.append(rt.drain()), name="drain")
        drainer.start()
        while drainer.is_alive():
            if second.wait(0.2):
                rt.abort(f"second signal ({signals[-1]})")
                break
        drainer.join(timeout=15)
        if drained and not drained[0]:
            log.warning("drain limit reached; the next start recovers what is still in flight")
        return 0
    finally:
        if server is not None:
            server.should_exit = True
        if thread is not None:
            thread.join(timeout=10)
        rt.close()
        sock.close()
        for s, h in old.items():
            signal.signal(s, h)
        log.info("stopped")
