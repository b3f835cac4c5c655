"""The executor as a long-lived worker thread for the service.

```python
worker = ExecutorWorker(Executor(port, store, clock=RealClock(), config=cfg, policy=policy))
worker.start()                      # recovers from the journal, then ticks on its own thread
rid = worker.executor.submit(request)
worker.executor.cancel(rid, who="alice")
worker.executor.status()
worker.stop(timeout_s=30)           # drain: start nothing new, wait for what is in flight
worker.stop(timeout_s=5, abort=True)  # and abort what is still running after the time limit
```

The thread sleeps in real time between ticks (``poll_interval_s``) and is woken at once by
:meth:`wake` (``submit`` through the worker does it). A storage or hypervisor error in a tick
does not kill the thread: the in-memory state is dropped and rebuilt from the journal and the
hypervisors (the same recovery as after a crash) on the next round.
"""

from __future__ import annotations

import logging
import threading

from balancer.errors import BalancerError
from balancer.executor.engine import Executor, PlanSubmission
from balancer.executor.types import MigrationRequest
from balancer.plan import Plan

log = logging.getLogger(__name__)


class ExecutorWorker:
    def __init__(self, executor: Executor, *, name: str = "balancer-executor") -> None:
        self.executor = executor
        self._name = name
        self._wake = threading.Event()
        self._halt = threading.Event()
        self._thread: threading.Thread | None = None
        self._needs_recovery = False
        self.last_error: str | None = None

    # -- lifecycle ---------------------------------------------------------------------------
    def start(self) -> None:
        """Recover from the journal (in the caller's thread, so errors surface) and start."""
        if self._thread is not None:
            raise RuntimeError("the executor worker is already running")
        self.executor.recover()
        self._halt.clear()
        self._thread = threading.Thread(target=self._loop, name=self._name, daemon=True)
        self._thread.start()

    def stop(self, *, timeout_s: float = 30.0, abort: bool = False) -> bool:
        """Drain: start no new migration and wait up to ``timeout_s`` for those in flight.
        With ``abort``, whatever still runs then is aborted (and waited for a little).
        Queued work stays queued in the journal for the next start. True when nothing was
        left in flight."""
        ex = self.executor
        ex.stop_dispatch()
        self.wake()
        done = self._wait_idle(timeout_s)
        if not done and abort:
            ex.abort_all(cancel_queued=False)
            self.wake()
            done = self._wait_idle(max(5.0, ex.config.poll_interval_s * 5))
        self._halt.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=max(5.0, ex.config.poll_interval_s * 3))
            self._thread = None
        return done

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def wake(self) -> None:
        self._wake.set()

    # -- convenience: submit and wake the loop -----------------------------------------------
    def submit(self, request: MigrationRequest) -> int:
        rid = self.executor.submit(request)
        self.wake()
        return rid

    def submit_plan(self, plan: Plan, **kw: object) -> PlanSubmission:
        sub = self.executor.submit_plan(plan, **kw)  # type: ignore[arg-type]
        self.wake()
        return sub

    def cancel(self, request_id: int, *, who: str = "balancer") -> bool:
        ok = self.executor.cancel(request_id, who=who)
        self.wake()
        return ok

    # -- the loop ----------------------------------------------------------------------------
    def _loop(self) -> None:
        poll = self.executor.config.poll_interval_s
        while not self._halt.is_set():
            try:
                if self._needs_recovery:
                    self.executor.recover()
                    self._needs_recovery = False
                self.executor.tick()
                self.last_error = None
            except BalancerError as exc:
                # storage or hypervisor trouble: rebuild from the journal on the next round
                self.last_error = str(exc)
                self._needs_recovery = True
                log.error("executor tick failed: %s", exc)
            except Exception as exc:  # a supervisor loop: log it, rebuild, keep the worker alive
                self.last_error = f"{type(exc).__name__}: {exc}"
                self._needs_recovery = True
                log.exception("executor tick failed unexpectedly")
            self._wake.wait(poll)
            self._wake.clear()

    def _wait_idle(self, timeout_s: float) -> bool:
        deadline = threading.Event()
        waited = 0.0
        step = min(0.05, timeout_s) if timeout_s > 0 else 0.0
        while waited < timeout_s:
            if self.executor.idle:
                return True
            deadline.wait(step)
            waited += step
        return self.executor.idle
