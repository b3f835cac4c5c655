from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from click.testing import CliRunner

from balancer.cli import cli
from balancer.snapshot_io import load_snapshot

REPO = Path(__file__).resolve().parents[2]


def run(*args: str) -> tuple[int, str, str]:
    r = CliRunner().invoke(cli, list(args))
    return r.exit_code, r.stdout, r.stderr


def test_help_and_version() -> None:
    code, out, _ = run("--help")
    assert code == 0 and "snapshot" in out and "policy" in out
    code, out, _ = run("version", "--json")
    assert code == 0 and json.loads(out)["version"]


def test_snapshot_writes_a_loadable_file(tmp_path: Path) -> None:
    path = tmp_path / "s.json"
    code, out, _ = run(
        "snapshot", "--hosts", "5", "--vms", "50", "--seed", "3", "-o", str(path), "--json"
    )
    assert code == 0
    doc = json.loads(out)
    snap = load_snapshot(path)
    assert doc["hosts"] == 5 and doc["vms"] == len(snap.vms) and doc["digest"] == snap.digest()


def test_policy_check_each_shipped_file_passes() -> None:
    for f in sorted((REPO / "config" / "policies").glob("*.yaml")):
        code, out, err = run("policy", "check", str(f))
        assert code == 0, err
        assert out.startswith("ok: ")


def test_policy_check_directory_against_the_demo_snapshot(tmp_path: Path) -> None:
    snap = tmp_path / "s.json"
    assert run("snapshot", "-o", str(snap))[0] == 0  # the demo's cluster: 8 hosts, 200 VMs
    code, out, err = run(
        "policy", "check", str(REPO / "config" / "policies"), "--snapshot", str(snap), "--json"
    )
    assert code == 0, err
    assert json.loads(out)["ok"] is True


def test_policy_check_reports_contradictions_and_fails(tmp_path: Path) -> None:
    p = tmp_path / "bad.yaml"
    p.write_text(
        "rules:\n"
        "  - {name: together, kind: affinity, vms: [vm001, vm002]}\n"
        "  - {name: apart, kind: anti_affinity, vms: [vm001, vm002]}\n"
    )
    code, _out, err = run("policy", "check", str(p))
    assert code == 2
    assert "'together'" in err and "'apart'" in err and "bad.yaml:2" in err


def test_bad_input_is_one_line_without_traceback(tmp_path: Path) -> None:
    p = tmp_path / "bad.yaml"
    p.write_text("threshold: 7\n")
    proc = subprocess.run(
        [sys.executable, "-m", "balancer", "policy", "check", str(p)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert proc.stderr.strip().count("\n") == 0
    assert "bad.yaml:1: threshold:" in proc.stderr
