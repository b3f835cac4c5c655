"""The service on PostgreSQL: its own tables, the executor's journal, the audit trail and the
scheduled tasks (APScheduler's SQLAlchemy job store) all on one real server (tests/pg.py)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from balancer.service.runtime import Runtime
from balancer.service.scheduling import TaskKind
from balancer.settings import load_settings
from balancer.sim.clock import RealClock
from balancer.sim.cluster import SimulatedCluster
from balancer.storage import Store
from tests.factories import make_host, make_snapshot, make_vm
from tests.service.running import wait_for, write_settings

pytestmark = [pytest.mark.postgres, pytest.mark.timeout(180)]


def test_maintenance_tasks_and_audit_on_postgresql(tmp_path: Path, postgres_url: str) -> None:
    cfg = write_settings(
        tmp_path,
        policy={"automation": "partial", "threshold": 1, "exclude": []},
        intervals={"collect_s": 0.5, "balance_s": 3600, "policy_reload_s": 60},
    )
    doc = yaml.safe_load(cfg.read_text())
    doc["database"] = postgres_url
    cfg.write_text(yaml.safe_dump(doc))
    (tmp_path / "policies" / "rules.yaml").write_text("rules: []\n")
    hosts = [make_host(f"h{i}", cpu_cores=32, memory_mib=65536) for i in (1, 2, 3)]
    vms = [make_vm(f"vm{h}{j}", f"h{h}", memory_mib=2048) for h in (1, 2, 3) for j in range(3)]
    sim = SimulatedCluster(make_snapshot(hosts, vms), clock=RealClock(), link_mib_s=20000.0)

    rt = Runtime.build(load_settings(cfg), port=sim)
    try:
        rt.start()
        svc = rt.service
        m = svc.enter_maintenance("h1", who="carol")
        assert m.state == "evacuating"
        wait_for(
            "h1 in maintenance",
            lambda: svc.maintenance_status("h1").state == "maintenance",
            timeout_s=60,
        )
        task = rt.scheduler.add_task(
            kind=TaskKind.MAINTENANCE_EXIT,
            args={"host": "h1", "move_back": "true"},
            who="carol",
            at=None,
            cron="0 4 * * 0",
        )
        assert [t.id for t in rt.scheduler.tasks()] == [task.id]
        plan = svc.balance(who="carol")
        assert svc.policy is not None and plan.policy_digest == svc.policy.digest
        assert svc.history(1.0)
    finally:
        rt.begin_stop("test")
        rt.drain()
        rt.close()

    # a second start on the same database finds the request, the host state and the task
    sim2 = SimulatedCluster(sim.snapshot(), clock=RealClock(), link_mib_s=20000.0)
    rt = Runtime.build(load_settings(cfg), port=sim2)
    try:
        rt.start()
        assert rt.service.maintenance_status("h1").state == "maintenance"
        assert rt.service.status().hosts[0].state == "maintenance"
        assert [t.who for t in rt.scheduler.tasks()] == ["carol"]
    finally:
        rt.begin_stop("test")
        rt.drain()
        rt.close()
    store = Store.open(postgres_url)
    try:
        assert store.verify() > 0
    finally:
        store.close()
