"""The service plans in a worker process: a crash inside the native solver costs one planning
call, never the service."""

from __future__ import annotations

import os
from typing import Any

import pytest

from balancer.errors import PlanningError
from balancer.plan import Plan
from balancer.planner import make_plan
from balancer.service.adapters import IsolatedPlanner
from policies.model import Policy
from tests.factories import small_cluster


def abort_like_a_failed_check(*_args: Any, **_kwargs: Any) -> Plan:
    os.abort()  # what a failed CHECK in OR-Tools does to its process


def crash_once(*args: Any, **kwargs: Any) -> Plan:
    marker = os.environ["BALANCER_TEST_CRASH_MARKER"]
    if not os.path.exists(marker):
        open(marker, "w").close()
        os.abort()
    return make_plan(*args, **kwargs)


def test_a_solver_crash_is_a_planning_error_and_the_next_call_works(
    tmp_path: Any, monkeypatch: Any
) -> None:
    monkeypatch.setenv("BALANCER_TEST_CRASH_MARKER", str(tmp_path / "crashed"))
    planner = IsolatedPlanner(crash_once)
    snap = small_cluster()
    try:
        with pytest.raises(PlanningError, match="solver process died"):
            planner.plan(snap, Policy(), held=frozenset(), seed=0, time_limit_s=1.0)
        plan = planner.plan(snap, Policy(), held=frozenset(), seed=0, time_limit_s=1.0)
        assert plan == make_plan(snap, Policy(), time_limit_s=1.0, seed=0)
    finally:
        planner.close()


def test_every_call_after_crashes_still_answers() -> None:
    planner = IsolatedPlanner(abort_like_a_failed_check)
    try:
        for _ in range(2):
            with pytest.raises(PlanningError):
                planner.plan(small_cluster(), Policy(), held=frozenset(), seed=0, time_limit_s=1.0)
    finally:
        planner.close()


PARENT = """
import os, sys
from balancer.service.adapters import IsolatedPlanner
from policies.model import Policy
from tests.factories import small_cluster

planner = IsolatedPlanner()
planner.plan(small_cluster(), Policy(), held=frozenset(), seed=0, time_limit_s=1.0)
(worker,) = planner._pool._processes  # the worker process's pid
print(worker, flush=True)
sys.stdin.read()  # until killed
"""


def _running(pid: int) -> bool:
    """Alive and not a zombie (an orphan's reaper may be slow, or absent in a container)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def test_the_worker_ends_when_its_service_is_killed() -> None:
    import signal
    import subprocess
    import sys
    import time
    from pathlib import Path

    repo = Path(__file__).resolve().parents[2]
    parent = subprocess.Popen(
        [sys.executable, "-c", PARENT],
        cwd=repo,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert parent.stdout is not None
        worker = int(parent.stdout.readline())
        assert _running(worker)  # alive while its parent is
        parent.send_signal(signal.SIGKILL)  # no shutdown of the pool
        parent.wait(timeout=10)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if not _running(worker):
                break
            time.sleep(0.1)
        else:
            os.kill(worker, signal.SIGKILL)
            raise AssertionError(f"planner worker {worker} outlived its killed parent")
    finally:
        if parent.poll() is None:
            parent.kill()
