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
