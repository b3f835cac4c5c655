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
