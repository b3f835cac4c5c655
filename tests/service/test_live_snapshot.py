"""The live cluster as a snapshot: ``GET /api/v1/snapshot``, ``balancer snapshot --config|--url``,
``balancer plan --config`` (a dry run) and ``balancer policy check --config``, against a running
service on the simulated cluster (its state file is the live cluster both read) with a host in
maintenance (the administrative state comes from the service's database)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from balancer.cli import cli
from balancer.snapshot_io import load_snapshot, snapshot_from_dict
from tests.service.running import TOKENS, running, wait_for, write_settings

pytestmark = pytest.mark.timeout(300)


def _run(*args: str) -> tuple[int, str, str]:
    r = CliRunner().invoke(cli, list(args), env={"BALANCER_TOKEN": TOKENS["vic"]})
    return r.exit_code, r.stdout, r.stderr


def test_the_live_cluster_is_a_snapshot_to_plan_and_lint_on(tmp_path: Path) -> None:
    cfg = write_settings(tmp_path, hosts=4, vms=24, policy={"automation": "manual"})
    with running(cfg) as svc:
        wait_for("a first collect", lambda: svc.get("/status")["hosts"])
        svc.post("/maintenance/h02/enter", user="bob", json={"force": True})
        wait_for(
            "h02 in maintenance",
            lambda: svc.get("/snapshot")["hosts"][1]["state"] != "active",
        )
        # the API: the snapshot the service decides on, format v1
        doc = svc.get("/snapshot", user="vic")
        served = snapshot_from_dict(doc)
        assert served.host("h02").state.value in {"entering_maintenance", "maintenance"}
        assert {v["name"] for v in svc.sim_state()["snapshot"]["vms"]} == {
            v.name for v in served.vms
        }

        # --url: the same view through the CLI
        via_url = tmp_path / "url.json"
        code, out, err = _run("snapshot", "--url", svc.url, "-o", str(via_url))
        assert code == 0, err
        assert load_snapshot(via_url).host("h02").state == served.host("h02").state

        # --config: the backend read directly, demand measured, the host state from the db
        live = tmp_path / "live.json"
        code, out, err = _run("snapshot", "--config", str(cfg), "--sample-s", "1", "-o", str(live))
        assert code == 0, err
        # one reading per sample interval (0.5 s here) over --sample-s, two at least
        assert err.splitlines()[-1] == "measuring the live cluster: reading 3 of 3", err
        snap = load_snapshot(live)
        assert {h.name for h in snap.hosts} == {h.name for h in served.hosts}
        assert {v.name for v in snap.vms} == {v.name for v in served.vms}
        assert snap.host("h02").state == served.host("h02").state
        assert all(v.cpu_used_cores >= 0 for v in snap.vms)

        # plan --config: a dry run on the live cluster under the settings' policy
        before = svc.sim_state()
        code, out, err = _run("plan", "--config", str(cfg), "--sample-s", "1", "--json")
        assert code == 0, err
        plan = json.loads(out)
        assert all(m["target"] != "h02" for m in plan["moves"]), plan["moves"]
        # every VM on the evacuating host is moved off or blocked with its reason
        on_h02 = {v.name for v in snap.vms if v.host == "h02"}
        handled = {m["vm"] for m in plan["moves"] if m["source"] == "h02"}
        handled |= {b["vm"] for b in plan["blocked"]}
        assert on_h02 and on_h02 <= handled, (on_h02, plan)
        after = svc.sim_state()
        place = {v["name"]: v["host"] for v in before["snapshot"]["vms"]}
        moved = {v["name"] for v in after["snapshot"]["vms"] if place[v["name"]] != v["host"]}
        by_service = {m["vm"] for m in svc.get("/migrations")}
        assert moved <= by_service, f"plan --config moved {moved - by_service}"

        # policy check --config: the rules linted against the live cluster
        rules = tmp_path / "rules.yaml"
        rules.write_text(
            yaml.safe_dump(
                {"rules": [{"name": "apart", "kind": "anti_affinity", "vms": ["vm001", "ghost"]}]}
            )
        )
        policy_dir = Path(yaml.safe_load(cfg.read_text())["policy"])
        code, out, err = _run(
            "policy", "check", str(policy_dir), str(rules), "--config", str(cfg), "--sample-s", "1"
        )
        assert code == 2 and "unknown VM(s) ghost" in err, (out, err)
        code, out, err = _run(
            "policy", "check", str(policy_dir), "--config", str(cfg), "--sample-s", "1", "--json"
        )
        assert code == 0 and json.loads(out)["ok"], err


def test_live_commands_refuse_ambiguous_or_missing_input(tmp_path: Path) -> None:
    cfg = write_settings(tmp_path)
    code, _, err = _run("plan")
    assert code == 2 and "give --snapshot FILE or --config FILE" in err
    code, _, err = _run("plan", "--snapshot", "x.json")
    assert code == 2 and "--snapshot needs --policy" in err
    code, _, err = _run("snapshot", "--config", str(cfg), "--hosts", "3")
    assert code == 2 and "--hosts" in err and "not with --config" in err
    code, _, err = _run("snapshot", "--config", str(cfg), "--url", "http://127.0.0.1:1")
    assert code == 2 and "give one" in err
    code, _, err = _run("policy", "check", "p", "--snapshot", "s.json", "--config", str(cfg))
    assert code == 2 and "give one cluster" in err
    code, _, err = _run("cpu", "report", "--config", str(cfg))
    assert code == 2 and "simulated backend has no CPUs" in err
    lab = tmp_path / "lab.yaml"
    doc = yaml.safe_load(cfg.read_text())
    doc["backend"] = {"kind": "lab", "state_dir": str(tmp_path / "no-lab")}
    lab.write_text(yaml.safe_dump(doc))
    code, _, err = _run("snapshot", "--config", str(lab), "--sample-s", "1")
    assert code == 2 and "no lab is running" in err, err
    for code_err in (err,):
        assert "Traceback" not in code_err


def test_placement_of_a_new_vm_through_the_api_and_the_cli(tmp_path: Path) -> None:
    cfg = write_settings(tmp_path, hosts=4, vms=12, policy={"automation": "manual"})
    with running(cfg) as svc:
        wait_for("a first collect", lambda: svc.get("/status")["hosts"])
        body = {"vm": "new01", "vcpus": 2, "memory_mib": 2048, "labels": {"app": "web"}}
        ranked = svc.post("/placements", user="vic", json=body)
        hosts = {h["name"] for h in svc.get("/status")["hosts"]}
        assert ranked["vm"] == "new01" and ranked["cpu_demand_cores"] == 2
        listed = {c["host"] for c in ranked["candidates"]} | {
            r["host"] for r in ranked["ruled_out"]
        }
        assert listed == hosts and ranked["placed_on"] is None
        loads = [c["imbalance"] for c in ranked["candidates"]]
        assert loads == sorted(loads)
        with svc.client("vic") as c:
            refused = c.post("/placements", json={**body, "define": "<domain/>"})
        assert refused.status_code == 403 and "operator" in refused.json()["error"]
        with svc.client("bob") as c:
            no_define = c.post("/placements", json={**body, "define": "<domain/>"})
            taken = c.post("/placements", json={**body, "vm": "vm001"})
            lone_start = c.post("/placements", json={**body, "start": True})
            too_busy = c.post("/placements", json={**body, "vcpus": 1, "cpu_demand_cores": 4095})
        # a cross-field refusal names its field, as every 4xx does
        assert too_busy.status_code == 422 and too_busy.json()["field"] == "cpu_demand_cores"
        assert no_define.status_code == 409 and "cannot define VMs" in no_define.json()["error"]
        assert taken.status_code == 409 and "exists already" in taken.json()["error"]
        assert lone_start.status_code in (400, 422) and "needs define" in lone_start.json()["error"]

        url = ["--url", svc.url]
        code, out, err = _run("place", "--name", "new01", "--vcpus", "2", "--memory-mib", "2048",
                              "--label", "app=web", *url, "--json")  # fmt: skip
        assert code == 0, err
        assert [c["host"] for c in json.loads(out)["candidates"]] == [
            c["host"] for c in ranked["candidates"]
        ]
        code, out, err = _run("place", "--vcpus", "2", "--memory-mib", "2048", *url)
        assert code == 2 and "give --name" in err
        code, out, err = _run("place", "--name", "x", "--vcpus", "1", "--memory-mib", "1",
                              "--start", *url)  # fmt: skip
        assert code == 2 and "--start goes with --define" in err
        code, out, err = _run("place", "--name", "x", "--vcpus", "1", "--memory-mib", "64", *url)
        assert code == 0 and "candidates (best first)" in out, err


def test_a_quarantined_host_is_emptied_and_released(tmp_path: Path) -> None:
    cfg = write_settings(tmp_path, hosts=4, vms=8, policy={"automation": "partial"})
    with running(cfg) as svc:
        wait_for("a first collect", lambda: svc.get("/status")["hosts"])
        h = next(x for x in svc.get("/status")["hosts"] if x["vm_count"] > 0)["name"]
        env = {"BALANCER_TOKEN": TOKENS["bob"]}
        r = CliRunner().invoke(
            cli, ["host", "quarantine", h, "--reason", "ECC errors", "--url", svc.url, "--json"],
            env=env,
        )  # fmt: skip
        assert r.exit_code == 0, r.output
        assert json.loads(r.stdout)["state"] == "quarantined"
        wait_for(
            f"{h} emptied",
            lambda: next(x for x in svc.get("/status")["hosts"] if x["name"] == h)["vm_count"] == 0,
            timeout_s=120,
        )
        moved = [m for m in svc.get("/migrations") if m["source"] == h]
        # every move off it is a quarantine evacuation; each VM left by one that succeeded (a
        # plan made on a snapshot older than a finished move is superseded by the executor)
        assert moved and all(m["reason"] == "quarantine" for m in moved), moved
        assert all(m["state"] in ("succeeded", "superseded") for m in moved), moved
        done = {m["vm"] for m in moved if m["state"] == "succeeded"}
        assert done == {m["vm"] for m in moved}, moved
        # each succeeded migration taught the copy-cost model (expected against copied GiB)
        import httpx

        text = httpx.get(f"{svc.url}/metrics").text
        got = {
            line.split()[0]: float(line.split()[1])
            for line in text.splitlines()
            if line.startswith("balancer_migration_copy_")
        }
        assert got["balancer_migration_copy_copied_gib_total"] > 0, got
        assert got["balancer_migration_copy_expected_gib_total"] > 0, got
        assert 0 <= got["balancer_migration_copy_error_ratio"] < 10, got
        audit = svc.get("/audit", params={"kind": "quarantine"})
        assert [(a["result"], a["source"]) for a in audit] == [("quarantined", h)]
        assert "ECC errors" in audit[0]["detail"]
        # a viewer may not; an unknown host is named; releasing twice is refused
        with svc.client("vic") as c:
            assert c.post(f"/hosts/{h}/quarantine", json={}).status_code == 403
        with svc.client("bob") as c:
            assert c.post("/hosts/nope/quarantine", json={}).status_code == 404
            assert c.post(f"/hosts/{h}/release").status_code == 200
            again = c.post(f"/hosts/{h}/release")
        assert again.status_code == 409 and "not quarantined" in again.json()["error"]
        state = next(x for x in svc.get("/status")["hosts"] if x["name"] == h)["state"]
        assert state == "active"
