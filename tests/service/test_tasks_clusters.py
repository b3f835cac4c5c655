"""Scheduled tasks of several services in one process (balancer.ha runs one per cluster): each
task runs against its own service, never the last one started."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from balancer.service.runtime import Runtime
from balancer.service.scheduling import TaskKind
from balancer.settings import load_settings
from tests.service.running import wait_for, write_settings

pytestmark = pytest.mark.timeout(120)


def test_each_cluster_runs_its_own_tasks(tmp_path: Path) -> None:
    runtimes: list[Runtime] = []
    try:
        for name in ("east", "west"):
            root = tmp_path / name
            root.mkdir()
            cfg = write_settings(
                root,
                policy={"automation": "manual"},
                intervals={"collect_s": 1, "balance_s": 3600, "policy_reload_s": 60},
            )
            rt = Runtime.build(load_settings(cfg))
            rt.start()
            runtimes.append(rt)
        east, west = runtimes  # west started last: a module-level service would be west's
        at = datetime.now(UTC) + timedelta(seconds=2)
        for rt, level in ((east, "partial"), (west, "full")):
            rt.scheduler.add_task(
                kind=TaskKind.AUTOMATION, args={"level": level}, who="ops", at=at, cron=None
            )
        for rt, level in ((east, "partial"), (west, "full")):
            runs = wait_for(
                f"the {level} task's run", lambda rt=rt: rt.service.store.task_runs(), timeout_s=60
            )
            assert [(r.kind, r.result) for r in runs] == [("automation", "ok")], runs
            assert rt.service.status().automation == level
    finally:
        for rt in runtimes:
            rt.begin_stop("test")
            rt.drain()
            rt.close()


def test_a_recurring_task_numbers_weekdays_as_cron_does(tmp_path: Path) -> None:
    """``--cron "0 2 * * 1-5"`` runs Monday to Friday (cron's numbering: 0 and 7 are Sunday),
    not Tuesday to Saturday as the scheduler library's own numbering would have it."""
    cfg = write_settings(tmp_path, policy={"automation": "manual"})
    rt = Runtime.build(load_settings(cfg))
    try:
        rt.start()
        for cron, days in (
            ("0 2 * * 1-5", {0, 1, 2, 3, 4}),
            ("0 2 * * 0", {6}),
            ("0 2 * * 6", {5}),
        ):
            view = rt.scheduler.add_task(
                kind=TaskKind.AUTOMATION, args={"level": "manual"}, who="ops", at=None, cron=cron
            )
            assert view.next_run is not None and view.next_run.weekday() in days, (cron, view)
            first = view.next_run
            # the week's runs fall on those days only
            job = rt.scheduler.scheduler.get_job(view.id)
            runs, t = [], first
            for _ in range(7):
                runs.append(t.weekday())
                t = job.trigger.get_next_fire_time(t, t + timedelta(seconds=1))
            assert set(runs) == days, (cron, runs)
    finally:
        rt.begin_stop("test")
        rt.drain()
        rt.close()
