"""End-to-end: ``balancer serve`` on a simulated cluster, driven through its HTTP API."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest

from balancer.storage import Store
from tests.service.running import Service, running, wait_for, write_settings

pytestmark = pytest.mark.timeout(180)


def _placement(svc: Service) -> dict[str, str]:
    return {v["name"]: v["host"] for v in svc.get("/status")["vms"]}


def test_full_automation_balances_skewed_load_within_a_few_cycles(tmp_path: Path) -> None:
    cfg = write_settings(tmp_path, policy={"automation": "full"})
    with running(cfg) as svc:
        first = wait_for("a first status", lambda: svc.get("/status")["imbalance"])
        assert first > 0.1, "the generated cluster starts skewed"

        def balanced() -> object:
            plans = svc.get("/plans", params={"limit": 50})
            executed = [p for p in plans if p["executed"]]
            calm = [p for p in plans if p["status"] == "balanced" and not p["note"]]
            return executed and calm and svc.get("/status")["migrations_active"] == 0

        wait_for("a balanced plan after executed moves", balanced, timeout_s=90)
        after = svc.get("/status")["imbalance"]
        assert after < first / 2, (first, after)
        migs = svc.get("/migrations", params={"limit": 200})
        assert migs and all(m["state"] == "succeeded" for m in migs), migs
        # every move is explained and attributed to its plan
        assert all(m["plan_id"] and m["reason"] for m in migs)
        # nothing ping-pongs: no VM moved twice; moved VMs are held by the cooldown
        vms = [m["vm"] for m in migs]
        assert len(vms) == len(set(vms))
        holds = {h["vm"]: h for h in svc.get("/status")["holds"]}
        assert {v for v in vms if holds.get(v, {}).get("reason") == "cooldown"}, holds
        # structured JSON logs carry the plan id and the VM on the lines that concern them
        lines = [json.loads(x) for x in svc.log_path.read_text().splitlines() if x.startswith("{")]
        assert any(x.get("plan_id") == migs[0]["plan_id"] and x.get("vm") for x in lines)
        # the audit trail holds the decisions and the outcomes, and verifies
    store = Store.open(f"sqlite:///{tmp_path / 'balancer.db'}")
    try:
        assert store.verify() > 0
    finally:
        store.close()


def test_manual_nothing_moves_until_approved(tmp_path: Path) -> None:
    cfg = write_settings(tmp_path, policy={"automation": "manual"})
    with running(cfg) as svc:
        before = wait_for("a status", lambda: _placement(svc))
        recs = wait_for("recommendations", lambda: svc.get("/recommendations"), timeout_s=60)
        # two more balance cycles: still nothing moved, the recommendations stand
        seen = {p["id"] for p in svc.get("/plans", params={"limit": 50})}
        wait_for(
            "two more balance cycles",
            lambda: len({p["id"] for p in svc.get("/plans", params={"limit": 50})} - seen) >= 2,
            timeout_s=60,
        )
        assert svc.get("/migrations") == []
        assert _placement(svc) == before
        recs = svc.get("/recommendations")
        assert recs and all(r["state"] == "pending" for r in recs)
        assert svc.get("/status")["automation"] == "manual"

        # the viewer may not approve
        with svc.client("vic") as c:
            assert c.post(f"/recommendations/{recs[0]['id']}/approve").status_code == 403

        rec = next(r for r in recs if r["reason"] == "balance")
        # a recommendation expires when the cluster changes under it: move its VM by hand
        other = next(
            (r for r in recs if r["vm"] != rec["vm"] and r["target"] != rec["target"]), None
        )
        if other is not None:
            svc.post("/migrations", user="bob", json={"vm": other["vm"], "target": other["target"]})
            gone = wait_for(
                "the recommendation to expire",
                lambda: next(
                    (
                        r
                        for r in svc.get("/recommendations", params={"state": "expired"})
                        if r["id"] == other["id"]
                    ),
                    None,
                ),
                timeout_s=60,
            )
            assert "now runs on" in gone["note"] or "superseded" in gone["note"], gone
            wait_for(
                "no migration in flight",
                lambda: not svc.get("/migrations", params={"active": True}),
            )
            rec = wait_for(
                "a pending balance recommendation",
                lambda: next(
                    (r for r in svc.get("/recommendations") if r["reason"] == "balance"), None
                ),
            )
        done = _approve_a_balance_recommendation(svc, rec)
        rec = done
        assert done["state"] == "approved" and done["decided_by"] == "bob"
        assert done["migration_id"]
        wait_for(
            f"{rec['vm']} on {rec['target']}",
            lambda: _placement(svc)[rec["vm"]] == rec["target"],
            timeout_s=60,
        )
        migs = [m for m in svc.get("/migrations") if m["vm"] == rec["vm"]]
        assert len(migs) == 1 and migs[0]["who"] == "bob"
        assert {m["reason"] for m in svc.get("/migrations")} <= {"manual", "balance"}
        # approving again is refused, naming the state
        with svc.client("bob") as c:
            r = c.post(f"/recommendations/{rec['id']}/approve")
        assert r.status_code == 409 and "approved" in r.json()["error"]
        audit = svc.get("/audit", params={"user": "bob", "kind": "recommendation"})
        assert audit and audit[0]["result"] == "approved"


def _approve_a_balance_recommendation(svc: Service, rec: dict[str, Any]) -> dict[str, Any]:
    """Approve ``rec``; a balance cycle (every 2 s here) may supersede it between reading and
    approving, which the service refuses with 409 naming the state: then approve the pending
    balance recommendation that replaced it."""
    deadline = time.monotonic() + 60
    while True:
        with svc.client("bob") as c:
            r = c.post(f"/recommendations/{rec['id']}/approve")
        if r.status_code < 300:
            return dict(r.json())
        error = r.json().get("error", "")
        gone = ("expired" in error) or ("superseded" in error) or ("no longer pending" in error)
        assert r.status_code == 409 and gone, r.text
        assert time.monotonic() < deadline, f"no recommendation could be approved: {r.text}"
        rec = wait_for(
            "a pending balance recommendation",
            lambda: next(
                (x for x in svc.get("/recommendations") if x["reason"] == "balance"), None
            ),
        )


def _evacuable_host(svc: Service) -> str:
    """The host with the most VMs whose preflight says it can be emptied."""
    hosts = sorted(svc.get("/status")["hosts"], key=lambda h: -h["vm_count"])
    for h in hosts:
        if svc.get(f"/maintenance/{h['name']}/preflight")["can_enter"]:
            return str(h["name"])
    raise AssertionError("no host can be emptied")


def test_maintenance_enter_empties_the_host_then_exit(tmp_path: Path) -> None:
    # partial: only mandatory moves run, so the evacuation is all that moves
    cfg = write_settings(tmp_path, policy={"automation": "partial", "threshold": 1})
    with running(cfg) as svc:
        wait_for("a status", lambda: svc.get("/status")["hosts"])
        host = _evacuable_host(svc)
        pre = svc.get(f"/maintenance/{host}/preflight")
        assert pre["can_enter"], pre
        assert {m["vm"] for m in pre["moves"]} == {
            v["name"] for v in svc.get("/status")["vms"] if v["host"] == host
        }
        # the viewer may not
        with svc.client("vic") as c:
            assert c.post(f"/maintenance/{host}/enter").status_code == 403
        m = svc.post(f"/maintenance/{host}/enter", user="bob", json={})
        assert m["state"] == "evacuating" and m["host_state"] == "entering_maintenance"
        # twice is refused
        with svc.client("bob") as c:
            assert c.post(f"/maintenance/{host}/enter").status_code == 409

        def done() -> object:
            s = svc.get(f"/maintenance/{host}")
            return s if s["state"] == "maintenance" else None

        final = wait_for(f"{host} in maintenance", done, timeout_s=90)
        assert final["remaining_vms"] == 0 and final["percent"] == 100.0
        assert all(v["state"] == "done" for v in final["vms"])
        status = svc.get("/status")
        h = next(x for x in status["hosts"] if x["name"] == host)
        assert h["state"] == "maintenance" and h["vm_count"] == 0
        # nothing may be migrated to it
        vm = status["vms"][0]["name"]
        with svc.client("bob") as c:
            r = c.post("/migrations", json={"vm": vm, "target": host})
        assert r.status_code == 409 and "maintenance" in r.json()["error"]

        back = svc.post(f"/maintenance/{host}/exit", user="bob", json={"move_back": True})
        assert back["state"] == "exited"
        wait_for(
            f"VMs back on {host}",
            lambda: (
                next(x for x in svc.get("/status")["hosts"] if x["name"] == host)["vm_count"]
                == len(final["vms"])
            ),
            timeout_s=90,
        )


def test_service_killed_during_evacuation_resumes_after_restart(tmp_path: Path) -> None:
    # a slower link: the evacuation takes several seconds, so the kill lands in the middle
    cfg = write_settings(
        tmp_path,
        link_mib_s=4000.0,
        policy={"automation": "partial", "threshold": 1},
    )
    svc = Service(cfg)
    try:
        svc.start()
        wait_for("a status", lambda: svc.get("/status")["hosts"])
        host = _evacuable_host(svc)
        n = sum(1 for v in svc.get("/status")["vms"] if v["host"] == host)
        assert n >= 5
        svc.post(f"/maintenance/{host}/enter", user="bob", json={})
        wait_for(
            "an evacuation in flight with VMs left",
            lambda: (
                (s := svc.get(f"/maintenance/{host}"))["done_vms"] >= 1 and s["remaining_vms"] >= 2
            ),
            timeout_s=60,
            every_s=0.1,
        )
        svc.kill()

        svc.start()
        final = wait_for(
            f"{host} in maintenance after the restart",
            lambda: (s := svc.get(f"/maintenance/{host}"))["state"] == "maintenance" and s,
            timeout_s=120,
        )
        assert final["remaining_vms"] == 0
        # the hypervisors agree: every VM runs on exactly one host, none on the host
        state = svc.sim_state()
        assert all(v["host"] != host for v in state["snapshot"]["vms"])
        names = [v["name"] for v in state["snapshot"]["vms"]]
        assert len(names) == len(set(names))
        # every request has one final outcome; the audit chain verifies
        migs = svc.get("/migrations", params={"limit": 500})
        assert all(m["state"] not in ("queued", "starting", "running") for m in migs)
        assert any(m["state"] == "succeeded" for m in migs)
    finally:
        svc.stop()
    store = Store.open(f"sqlite:///{tmp_path / 'balancer.db'}")
    try:
        store.verify()
    finally:
        store.close()


def test_bad_policy_edit_keeps_the_last_good_one(tmp_path: Path) -> None:
    cfg = write_settings(tmp_path, policy={"automation": "manual"})
    with running(cfg) as svc:
        good = svc.get("/policy")
        assert good["digest"] and good["last_error"] is None
        policy_file = tmp_path / "policies" / "default.yaml"
        text = policy_file.read_text()
        policy_file.write_text(text.replace("threshold: 3", "threshold: eleven"))
        bad = wait_for(
            "the refusal", lambda: (p := svc.get("/policy"))["last_error"] and p, timeout_s=30
        )
        assert bad["digest"] == good["digest"]
        assert "threshold" in bad["last_error"] and "default.yaml" in bad["last_error"]
        status = svc.get("/status")
        assert status["policy"]["digest"] == good["digest"]
        refused = svc.get("/audit", params={"kind": "policy"})
        assert any(r["result"] == "refused" and "threshold" in (r["error"] or "") for r in refused)
        # a candidate can be validated without applying it
        check = svc.post(
            "/policy/validate",
            user="vic",
            json={"files": [{"name": "default.yaml", "text": "automation: sideways\n"}]},
        )
        assert not check["ok"] and "automation" in check["error"]
        # a good edit applies and clears the error
        policy_file.write_text(text.replace("threshold: 3", "threshold: 4"))
        fixed = wait_for(
            "the new policy",
            lambda: (p := svc.get("/policy"))["digest"] != good["digest"] and p,
            timeout_s=30,
        )
        assert fixed["last_error"] is None and fixed["threshold"] == 4


def test_several_hosts_in_maintenance_while_capacity_allows(tmp_path: Path) -> None:
    cfg = write_settings(
        tmp_path, hosts=5, vms=30, policy={"automation": "partial", "threshold": 1}
    )
    with running(cfg) as svc:
        hosts = [h["name"] for h in wait_for("a status", lambda: svc.get("/status")["hosts"])]
        entered: list[str] = []
        refusal = None
        with svc.client("bob") as c:
            for h in sorted(
                hosts, key=lambda name: -len(svc.get(f"/maintenance/{name}/preflight")["moves"])
            ):
                r = c.post(f"/maintenance/{h}/enter", json={})
                if r.status_code == 200:
                    entered.append(h)
                    continue
                assert r.status_code == 409, r.text
                refusal = (h, r.json()["error"])
                if len(entered) >= 2:
                    break
        assert len(entered) >= 2, (entered, refusal)
        assert refusal is not None, f"every host entered maintenance: {entered}"
        host, error = refusal
        assert error.startswith(f"host {host} cannot enter maintenance:")
        assert "cannot leave" in error or "conflict" in error
        # the refused host stays active; the others are emptied
        for h in entered:
            wait_for(
                f"{h} in maintenance",
                lambda h=h: svc.get(f"/maintenance/{h}")["state"] == "maintenance",
                timeout_s=120,
            )
        status = {h["name"]: h for h in svc.get("/status")["hosts"]}
        assert status[host]["state"] == "active"
        assert all(status[h]["vm_count"] == 0 for h in entered)
        refused = svc.get("/audit", params={"kind": "maintenance", "host": host})
        assert refused and refused[0]["result"] == "refused" and refused[0]["who"] == "bob"


def test_a_stuck_evacuation_names_its_blockers(tmp_path: Path) -> None:
    cfg = write_settings(tmp_path, policy={"automation": "partial", "threshold": 1})
    with running(cfg) as svc:
        hosts = [h["name"] for h in wait_for("a status", lambda: svc.get("/status")["hosts"])]
        pre = next(
            (p for h in hosts if not (p := svc.get(f"/maintenance/{h}/preflight"))["can_enter"]),
            None,
        )
        assert pre is not None, "the generated cluster has CPU generations no host can take"
        host = pre["host"]
        blocked = {b["vm"]: b["reason"] for b in pre["blocked"]}
        assert "cannot leave" in pre["reason"]
        # refused without --force, naming the blockers
        with svc.client("bob") as c:
            r = c.post(f"/maintenance/{host}/enter", json={})
            assert r.status_code == 409
            assert all(vm in r.json()["error"] for vm in list(blocked)[:5])
        svc.post(f"/maintenance/{host}/enter", user="bob", json={"force": True})
        stuck = wait_for(
            "the evacuation to report itself stuck",
            lambda: (s := svc.get(f"/maintenance/{host}"))["stuck"] and s,
            timeout_s=90,
        )
        assert stuck["state"] == "evacuating" and stuck["host_state"] == "entering_maintenance"
        assert stuck["message"].startswith("stuck:")
        assert {b["vm"]: b["reason"] for b in stuck["blockers"]} == blocked
        assert stuck["remaining_vms"] == len(blocked)
        assert stuck["eta_s"] is None
        for vm in stuck["vms"]:
            assert vm["state"] == ("blocked" if vm["vm"] in blocked else "done"), vm
