"""Clean stop: the first SIGTERM drains the migrations in flight, a second one aborts them."""

from __future__ import annotations

import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from balancer.storage import AuditQuery, Store
from tests.service.running import Service, wait_for, write_settings

pytestmark = pytest.mark.timeout(180)


def _start_migration(svc: Service, min_mib: int) -> dict[str, Any]:
    """A manual migration of a big VM to any host that takes it; waits until it runs."""
    status = svc.get("/status")
    vms = sorted(
        (v for v in status["vms"] if v["memory_mib"] >= min_mib), key=lambda v: -v["memory_mib"]
    )
    with svc.client("bob") as c:
        for vm in vms:
            for h in sorted(status["hosts"], key=lambda h: h["memory_load"]):
                if h["name"] == vm["host"]:
                    continue
                r = c.post("/migrations", json={"vm": vm["name"], "target": h["name"]})
                if r.status_code == 202:
                    m: dict[str, Any] = r.json()
                    mid = m["id"]
                    wait_for(
                        "the migration running",
                        lambda mid=mid: any(
                            x["id"] == mid and x["state"] == "running"
                            for x in svc.get("/migrations", params={"active": True})
                        ),
                        timeout_s=30,
                        every_s=0.1,
                    )
                    return m
    raise AssertionError("no VM could be migrated")


def _migration(svc: Service, mid: int) -> dict[str, Any]:
    return next(m for m in svc.get("/migrations") if m["id"] == mid)


def test_first_signal_drains_second_aborts(tmp_path: Path) -> None:
    cfg = write_settings(
        tmp_path,
        link_mib_s=3000.0,
        policy={"automation": "manual"},
        service={"drain_timeout_s": 60},
    )
    svc = Service(cfg)
    try:
        # 1. one SIGTERM: the process waits for the migration, which succeeds, then exits 0
        svc.start()
        wait_for("a status", lambda: svc.get("/status")["hosts"])
        m = _start_migration(svc, 10000)
        assert svc.proc is not None
        t0 = time.monotonic()
        svc.proc.send_signal(signal.SIGTERM)
        time.sleep(0.5)
        assert svc.proc.poll() is None, "the service must wait for the migration in flight"
        assert svc.proc.wait(60) == 0
        assert time.monotonic() - t0 > 0.5

        svc.start()
        assert _migration(svc, m["id"])["state"] == "succeeded"
        results = [a["result"] for a in svc.get("/audit", params={"kind": "service"})]
        # newest first: started (2nd run), stopped, drained, stopping, started (1st run)
        assert results[:4] == ["started", "stopped", "drained", "stopping"], results

        # 2. two SIGTERMs: the migration in flight is aborted, the VM stays on its source
        m2 = _start_migration(svc, 20000)
        svc.proc.send_signal(signal.SIGTERM)
        time.sleep(0.5)
        svc.proc.send_signal(signal.SIGTERM)
        try:
            code = svc.proc.wait(30)
        except subprocess.TimeoutExpired:
            raise AssertionError("the second signal must end the service quickly") from None
        assert code == 0
        # read the journal, the audit trail and the hypervisors' state directly
        store = Store.open(f"sqlite:///{tmp_path / 'balancer.db'}")
        try:
            out = store.request(m2["id"])
            assert out.state == "aborted", out
            results = [r.result for r in store.audit(AuditQuery(kind="service"))]
            # ... started, stopping, aborting (second signal), drained, stopped
            assert results[-1] == "stopped" and "aborting" in results[-3:], results
            assert results[-4] == "stopping", results
            store.verify()
        finally:
            store.close()
        where = {v["name"]: v["host"] for v in svc.sim_state()["snapshot"]["vms"]}
        assert where[m2["vm"]] == m2["source"]
    finally:
        svc.stop()
