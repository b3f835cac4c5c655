"""The executor as the service runs it: a worker thread with the real clock."""

from __future__ import annotations

import time

from balancer.executor import (
    Executor,
    ExecutorConfig,
    ExecutorWorker,
    MigrationRequest,
    PriorityClass,
)
from balancer.plan import MoveReason
from balancer.sim.clock import RealClock
from balancer.sim.cluster import SimulatedCluster
from balancer.storage import Store
from tests.factories import make_host, make_snapshot, make_vm


def _setup(url: str, **cfg: object) -> tuple[SimulatedCluster, Store, Executor]:
    snap = make_snapshot(
        [make_host(f"h{i}") for i in range(1, 4)],
        [make_vm(f"vm{i}", "h1", memory_mib=256, dirty_rate_mib_s=0.0) for i in range(1, 5)],
    )
    clock = RealClock()
    sim = SimulatedCluster(snap, clock=clock)
    store = Store.open(url)
    config = ExecutorConfig(**{"poll_interval_s": 0.05, **cfg})  # type: ignore[arg-type]
    return sim, store, Executor(sim, store, clock=clock, config=config)


def _req(vm: str, target: str) -> MigrationRequest:
    return MigrationRequest(
        vm=vm, source="h1", target=target, priority=PriorityClass.MANUAL_HIGH,
        reason=MoveReason.MANUAL, who="alice",
    )  # fmt: skip


def _wait(cond: object, timeout_s: float = 15.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if cond():  # type: ignore[operator]
            return
        time.sleep(0.02)
    raise AssertionError("timed out")


def test_worker_runs_submissions_and_drains_on_stop(sqlite_url: str) -> None:
    sim, store, ex = _setup(sqlite_url, concurrent_total=2)
    worker = ExecutorWorker(ex)
    worker.start()
    try:
        ids = [worker.submit(_req(f"vm{i}", "h2")) for i in range(1, 4)]
        _wait(lambda: ex.status().finished == 3)
        assert [r.result.value for r in ex.results(ids)] == ["succeeded"] * 3
        assert ex.status().queued == () and ex.status().running == ()
        assert all(sim.locate(f"vm{i}") == "h2" for i in range(1, 4))
    finally:
        assert worker.stop(timeout_s=5)
    assert not worker.running
    store.verify()


def test_stop_with_abort_leaves_queued_work_for_the_next_start(sqlite_url: str) -> None:
    sim, store, ex = _setup(sqlite_url, concurrent_total=1, stall_timeout_s=600)
    sim.inject_stall("vm1", at_fraction=0.1)
    worker = ExecutorWorker(ex)
    worker.start()
    stalled = worker.submit(_req("vm1", "h2"))
    _wait(lambda: len(ex.status().running) == 1)
    waiting = worker.submit(_req("vm2", "h3"))
    assert worker.stop(timeout_s=0.3, abort=True)
    assert store.request(stalled).state == "aborted"
    assert store.request(stalled).abort_reason == "shutdown"
    assert store.request(waiting).state == "queued"
    # the next start (a new process in real life) picks the queued work up
    ex2 = Executor(sim, store, clock=RealClock(), config=ex.config)
    worker2 = ExecutorWorker(ex2)
    worker2.start()
    try:
        _wait(lambda: store.request(waiting).state == "succeeded")
    finally:
        worker2.stop(timeout_s=5)
    assert sim.locate("vm2") == "h3" and sim.locate("vm1") == "h1"
