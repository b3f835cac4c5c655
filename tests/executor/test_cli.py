"""``balancer execute`` and ``balancer audit list|verify|export`` through the real command line."""

from __future__ import annotations

import csv
import io
import json
import sqlite3
from pathlib import Path

import pytest
from click.testing import CliRunner

from balancer.cli import cli
from balancer.snapshot_io import dump_snapshot
from tests.factories import make_host, make_snapshot, make_vm


@pytest.fixture
def files(tmp_path: Path) -> tuple[Path, Path, str]:
    hosts = [make_host(f"h{i}") for i in range(1, 4)]
    vms = [make_vm(f"vm{i}", "h1", memory_mib=1024, dirty_rate_mib_s=0.0) for i in range(1, 4)]
    snap_file, plan_file = tmp_path / "snap.json", tmp_path / "plan.json"
    dump_snapshot(make_snapshot(hosts, vms), snap_file)
    plan_file.write_text(
        json.dumps(
            {
                "status": "moves",
                "moves": [
                    {"vm": "vm1", "source": "h1", "target": "h2", "step": 0, "reason": "balance",
                     "gain": 0.2},
                    {"vm": "vm2", "source": "h1", "target": "h3", "step": 0,
                     "reason": "maintenance"},
                    {"vm": "vm3", "source": "h2", "target": "h3", "step": 0, "reason": "balance"},
                ],
            }
        )
    )  # fmt: skip
    return snap_file, plan_file, f"sqlite:///{tmp_path / 'b.db'}"


def run(*args: str) -> tuple[int, str, str]:
    res = CliRunner().invoke(cli, list(args))
    return res.exit_code, res.stdout, res.stderr


def test_execute_prints_every_outcome_and_resumes(files: tuple[Path, Path, str]) -> None:
    snap, plan, db = files
    args = ["execute", "--snapshot", str(snap), "--plan", str(plan), "--db", db, "--json",
            "--poll", "0.05"]  # fmt: skip
    code, out, err = run(*args)
    assert code == 0, err
    doc = json.loads(out)
    assert [(d["vm"], d["outcome"]) for d in doc] == [
        ("vm1", "succeeded"),
        ("vm2", "succeeded"),
        ("vm3", "skipped"),  # vm3 runs on h1, not h2: the re-check skips it
    ]
    assert set(doc[0]) == {"vm", "source", "target", "outcome", "duration_s", "downtime_ms"}
    assert doc[0]["duration_s"] > 0 and doc[0]["downtime_ms"] > 0
    # the same plan again: resumed from the journal, nothing run twice
    code, out2, _ = run(*args)
    assert code == 0 and json.loads(out2) == doc
    code, out, _ = run("audit", "verify", "--db", db)
    assert code == 0 and "ok: 7 records" in out


def test_audit_list_filters_and_exports(files: tuple[Path, Path, str]) -> None:
    snap, plan, db = files
    assert run("execute", "--snapshot", str(snap), "--plan", str(plan), "--db", db, "--json",
               "--poll", "0.05")[0] == 0  # fmt: skip
    code, out, _ = run("audit", "list", "--db", db, "--json", "--vm", "vm1")
    recs = json.loads(out)
    assert code == 0 and [r["kind"] for r in recs] == ["request", "outcome"]
    assert recs[1]["who"] == "balancer" and recs[1]["plan_id"] and recs[1]["result"] == "succeeded"
    assert recs[1]["gain"] == 0.2 and recs[1]["data_copied_mib"] > 0
    assert recs[1]["at"].endswith("Z")
    code, out, _ = run("audit", "list", "--db", db, "--json", "--host", "h3", "--kind", "outcome")
    assert {r["vm"] for r in json.loads(out)} == {"vm2", "vm3"}
    code, out, _ = run("audit", "list", "--db", db, "--json", "--user", "alice")
    assert json.loads(out) == []
    code, out, _ = run("audit", "list", "--db", db, "--json", "--since", "2999-01-01")
    assert json.loads(out) == []
    code, out, _ = run("audit", "list", "--db", db)
    assert code == 0 and "vm2" in out
    code, out, _ = run("audit", "export", "--format", "csv", "--db", db)
    rows = list(csv.DictReader(io.StringIO(out)))
    assert code == 0 and len(rows) == 7 and rows[0]["prev_hash"] == "0" * 64
    code, out, _ = run("audit", "export", "--format", "json", "--db", db)
    assert code == 0 and [r["seq"] for r in json.loads(out)] == list(range(1, 8))


def test_audit_verify_fails_naming_the_record(files: tuple[Path, Path, str]) -> None:
    snap, plan, db = files
    assert run("execute", "--snapshot", str(snap), "--plan", str(plan), "--db", db, "--json",
               "--poll", "0.05")[0] == 0  # fmt: skip
    path = db.removeprefix("sqlite:///")
    with sqlite3.connect(path) as conn:
        conn.execute("UPDATE audit_records SET target = 'h9' WHERE seq = 6")
    code, _out, err = run("audit", "verify", "--db", db)
    assert code == 5
    assert err.strip().splitlines() == [
        "error: audit record 6 was altered: its content does not match its hash"
    ]


def test_errors_are_one_line_without_traceback(
    files: tuple[Path, Path, str], tmp_path: Path
) -> None:
    snap, _plan, db = files
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    code, _, err = run("execute", "--snapshot", str(snap), "--plan", str(bad), "--db", db)
    assert code == 2 and len(err.strip().splitlines()) == 1 and "not valid JSON" in err
    code, _, err = run("audit", "verify", "--db", "mysql://x@y/z")
    assert code == 5 and len(err.strip().splitlines()) == 1 and "unsupported database" in err
    code, _, err = run("audit", "list", "--db", db, "--since", "yesterday")
    assert code == 2 and "--since" in err


def test_lab_hook_fails_cleanly_without_a_lab(files: tuple[Path, Path, str], tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    _snap, plan, db = files
    monkeypatch.setenv("BALANCER_LAB_DIR", str(tmp_path / "no-lab"))
    code, _, err = run("execute", "--lab", "--plan", str(plan), "--db", db)
    assert code == 7 and len(err.strip().splitlines()) == 1
