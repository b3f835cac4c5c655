"""Fencing in-process, deterministically: the election thread of the leader stalls while its
executor keeps working (the worst case of a partial pause). The lease lapses, the standby
takes over, and every journal write the old leader's executor still attempts is refused by
the database; when its election thread comes back it steps down. Nothing is started twice."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest
import sqlalchemy as sa

from balancer.ha.node import Node
from balancer.settings import HA, Api, Intervals, ServiceOptions, Settings, SimulatedBackend
from balancer.storage import FINAL_STATES, Store
from tests.ha.harness import POLICY, Postgres, wait_for

pytestmark = [pytest.mark.postgres, pytest.mark.timeout(180)]


def _settings(tmp: Path, db: str, name: str) -> Settings:
    policies = tmp / "policies"
    policies.mkdir(exist_ok=True)
    (policies / "policy.yaml").write_text(POLICY)
    return Settings(
        backend=SimulatedBackend(
            kind="simulated",
            hosts=4,
            vms=24,
            seed=1,
            state_file=str(tmp / "sim.json"),
            link_mib_s=3000.0,
        ),
        policy=str(policies),
        database=db,
        state_dir=str(tmp / f"state-{name}"),
        api=Api(listen="127.0.0.1:1"),
        intervals=Intervals(collect_s=0.5, balance_s=3600, policy_reload_s=60),
        service=ServiceOptions(executor_poll_s=0.1),
        ha=HA(instance=name, lease_seconds=2.0),
    )


def test_stalled_leader_writes_are_refused(ha_postgres: Postgres, tmp_path: Path) -> None:
    db = ha_postgres.create_database()
    a = Node.build(_settings(tmp_path, db, "a"))
    b: Node | None = None
    try:
        a.start()
        seat_a = a.seats["default"]
        wait_for(seat_a.leading, 15, "a leads")
        b = Node.build(_settings(tmp_path, db, "b"))
        b.start()
        seat_b = b.seats["default"]
        svc = seat_a.runtime.service
        snap = svc.snapshot()
        counts = Counter(v.host for v in snap.vms)
        host = next(h for h, _ in counts.most_common() if svc.preflight(h).can_enter)
        svc.enter_maintenance(host, who="test")
        ex_a = seat_a.runtime.executor.executor
        wait_for(lambda: ex_a.in_flight >= 1, 30, "migrations in flight")
        old_epoch = seat_a.term.epoch if seat_a.term else 0
        # the election thread of a stalls; its executor thread keeps going
        a.elect = lambda: None  # type: ignore[method-assign]
        wait_for(seat_b.leading, 10, "b takes over")
        worker_a = seat_a.runtime.executor.worker
        wait_for(
            lambda: "write refused" in (worker_a.last_error or ""),
            20,
            "the old leader's executor is refused",
        )
        assert f"epoch {old_epoch} no longer holds the lease" in (worker_a.last_error or "")
        # its election thread comes back: the renewal fails, it steps down
        del a.elect
        wait_for(lambda: seat_a.term is None, 10, "a steps down")
        assert not seat_a.leading() and ex_a.standby
        # b finishes the evacuation; every migration has exactly one outcome
        svc_b = seat_b.runtime.service
        wait_for(
            lambda: svc_b.maintenance_status(host).state == "maintenance",
            90,
            "b finishes the evacuation",
            interval_s=0.3,
        )
        store = Store.open(db)
        try:
            assert store.verify() > 0
            reqs = store.requests()
            assert reqs and all(r.state in FINAL_STATES for r in reqs)
            with store.engine.connect() as conn:
                outcomes = Counter(
                    r.request_id
                    for r in conn.execute(
                        sa.text("SELECT request_id FROM audit_records WHERE kind = 'outcome'")
                    )
                )
                late = conn.execute(
                    sa.text(
                        "SELECT count(*) FROM journal j JOIN balancer_ha.leases l "
                        "ON l.cluster = 'default' WHERE j.epoch = :e AND j.at > l.acquired_at"
                    ),
                    {"e": old_epoch},
                ).scalar_one()
        finally:
            store.close()
        assert all(outcomes[r.id] == 1 for r in reqs), outcomes
        assert late == 0  # nothing of the old epoch was written after the takeover
        port = seat_b.runtime.service.port
        jobs = port.jobs()  # type: ignore[attr-defined]
        owners = Counter(r.job_id for r in reqs if r.job_id)
        assert all(owners[j.job_id] == 1 for j in jobs), "a migration started twice"
        assert all(v.host != host for v in port.snapshot().vms)
    finally:
        for node in (a, b):
            if node is not None:
                node.close()
