"""Leader election with real service processes: exactly one leader per cluster, sampled every
100 ms, with 2 and 3 instances (and a handover and a kill during the run); 3 instances x 6
clusters: the leases spread and move when an instance dies."""

from __future__ import annotations

import json
import time
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa
from click.testing import CliRunner

from balancer.cli import cli
from balancer.ha.lease import LeaseStore
from balancer.storage import make_engine
from tests.ha.harness import TOKEN, Deployment, Instance, Postgres, wait_for

pytestmark = [pytest.mark.postgres, pytest.mark.timeout(240)]

LEASE_S = 2.0


def _sample(d: Deployment, seconds: float) -> list[dict[str, list[str]]]:
    """Every 100 ms, ask every live instance which clusters it believes it leads."""
    out = []
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        t = time.monotonic()
        out.append(d.leaders())
        time.sleep(max(0.0, 0.1 - (time.monotonic() - t)))
    return out


def _migrate_via(inst: Instance) -> int:
    """Ask ``inst`` to migrate some VM to some host its CPU allows; returns the migration id."""
    status = inst.get("/status")
    for vm in status["vms"]:
        for host in status["hosts"]:
            if host["name"] == vm["host"]:
                continue
            try:
                m = inst.post("/migrations", {"vm": vm["name"], "target": host["name"]})
            except RuntimeError:
                continue
            return int(m["id"])
    raise AssertionError("no migration possible")


@pytest.mark.parametrize("n", [2, 3])
def test_exactly_one_leader(ha_postgres: Postgres, tmp_path: Path, n: int) -> None:
    d = Deployment(tmp_path, ha_postgres.create_database(), instances=n, lease_s=LEASE_S)
    try:
        d.start()
        first = d.leader_of()
        steady = _sample(d, 3.0)
        assert len(steady) >= 20
        assert all(s["default"] == [first.name] for s in steady), Counter(
            tuple(s["default"]) for s in steady
        )
        if n == 2:
            # a standby takes a manual migration into the database; the leader runs it
            standby = next(i for i in d.instances if i is not first)
            mid = _migrate_via(standby)
            wait_for(
                lambda: any(
                    m["id"] == mid and m["state"] == "succeeded" for m in first.get("/migrations")
                ),
                30,
                "the leader ran the migration the standby took",
            )
        # a clean stop hands the cluster over at once; a kill after a lease
        first.stop()
        handover = _sample(d, LEASE_S * 2)
        assert all(len(s["default"]) <= 1 for s in handover)
        second = d.leader_of(timeout_s=LEASE_S * 2)
        assert handover[-1]["default"] == [second.name]
        if n == 3:
            second.kill()
            failover = _sample(d, LEASE_S * 3)
            assert all(len(s["default"]) <= 1 for s in failover)
            third = d.leader_of(timeout_s=LEASE_S * 2)
            assert third.name not in (first.name, second.name)
            assert all(s["default"] == [third.name] for s in _sample(d, 2.0))
        for i in d.instances:
            assert "Traceback" not in i.log_text(), i.log_text()[-3000:]
    finally:
        d.close()


def test_three_instances_six_clusters(ha_postgres: Postgres, tmp_path: Path) -> None:
    clusters = [f"c{k}" for k in range(1, 7)]
    db = ha_postgres.create_database()
    d = Deployment(
        tmp_path,
        db,
        instances=3,
        clusters=clusters,
        lease_s=LEASE_S,
        hosts=3,
        vms=9,
        collect_s=2.0,
    )
    leases = LeaseStore(make_engine(db))

    def holders() -> Counter[str]:
        return Counter(r.holder for r in leases.leases() if r.valid and r.holder)

    try:
        d.start(timeout_s=150)
        wait_for(
            lambda: sorted(holders().values()) == [2, 2, 2],
            LEASE_S * 10,
            "the six leases spread two per instance",
            logs=lambda: "\n".join(i.log_text()[-1500:] for i in d.instances),
        )
        samples = _sample(d, 3.0)
        for s in samples:
            assert all(len(s[c]) == 1 for c in clusters), s
        # every cluster's API answers on every instance, leader or standby
        i1 = d.instances[0]
        doc = i1.get("/status", cluster="c6")
        assert {c["cluster"] for c in doc["clusters"]} == set(clusters)
        assert all(c["leader"] and c["epoch"] for c in doc["clusters"])
        # the command line: balancer ha status (from the database), balancer status (the API)
        runner = CliRunner()
        res = runner.invoke(cli, ["ha", "status", "--db", db, "--json"])
        assert res.exit_code == 0, res.output
        ha = json.loads(res.output)
        assert sorted(len(i["clusters"]) for i in ha["instances"]) == [2, 2, 2]
        assert {c["cluster"] for c in ha["leases"]} == set(clusters)
        res = runner.invoke(cli, ["status", "--url", i1.url, "--token", TOKEN, "--json"])
        assert res.exit_code == 0, res.output
        by_cluster = {c["cluster"]: c for c in json.loads(res.output)["clusters"]}
        assert {c: by_cluster[c]["leader"] for c in clusters} == {
            c["cluster"]: c["leader"] for c in ha["leases"]
        }
        assert all(by_cluster[c]["epoch"] and by_cluster[c]["since"] for c in clusters)
        victim = d.by_name(holders().most_common(1)[0][0])
        lost = {r.cluster for r in leases.leases() if r.holder == victim.name}
        victim.kill()
        wait_for(
            lambda: sorted(holders().values()) == [3, 3] and victim.name not in holders(),
            LEASE_S * 10,
            "the dead instance's clusters move to the others",
        )
        moved = {r.cluster: r.holder for r in leases.leases() if r.cluster in lost}
        assert all(h != victim.name for h in moved.values())
        for s in _sample(d, 2.0):
            assert all(len(s[c]) == 1 for c in clusters), s
    finally:
        d.close()
        leases.engine.dispose()


def test_scheduled_task_runs_once_on_the_leader(ha_postgres: Postgres, tmp_path: Path) -> None:
    """A task scheduled through a standby runs once, on the leader -- here the new leader,
    since the first one is killed before the task is due."""
    db = ha_postgres.create_database()
    d = Deployment(tmp_path, db, instances=2, lease_s=LEASE_S)
    engine = make_engine(db)

    def runs() -> list[tuple[str, str]]:
        with engine.connect() as conn:
            return [
                (str(r.kind), str(r.result))
                for r in conn.execute(sa.text("SELECT kind, result FROM svc_task_run"))
            ]

    try:
        d.start()
        first = d.leader_of()
        standby = next(i for i in d.instances if i is not first)
        at = datetime.now(UTC) + timedelta(seconds=LEASE_S * 3)
        task = standby.post(
            "/tasks", {"kind": "automation", "args": {"level": "manual"}, "at": at.isoformat()}
        )
        assert any(t["id"] == task["id"] for t in first.get("/tasks"))  # shared store
        first.kill()
        second = d.leader_of(timeout_s=LEASE_S * 3)
        wait_for(lambda: len(runs()) >= 1, LEASE_S * 10, "the task ran")
        time.sleep(LEASE_S * 2)  # and not again, anywhere
        assert runs() == [("automation", "ok")]
        ran_on = [
            i.name for i in d.instances if f"task {task['id']} (automation) ok" in i.log_text()
        ]
        assert ran_on == [second.name]
        assert second.get("/status")["automation"] == "manual"
    finally:
        d.close()
        engine.dispose()
