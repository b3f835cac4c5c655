"""``balancer plan`` and ``balancer assist``: exact JSON shape, table output, one-line errors."""

from __future__ import annotations

import json
from pathlib import Path

from click.testing import CliRunner

from balancer.cli import cli
from balancer.model import HostState
from balancer.snapshot_io import dump_snapshot
from tests.factories import make_host, make_snapshot, make_vm

POLICY = """\
threshold: 5
limits:
  moves_per_cycle: 20
rules:
  - name: apart
    kind: anti_affinity
    vms: [a, b]
"""


def _files(tmp_path: Path, policy: str = POLICY) -> tuple[str, str]:
    hosts = [
        make_host("h1", state=HostState.MAINTENANCE),
        make_host("h2"),
        make_host("h3"),
        make_host("old", cpu_features={"sse4_2"}),
    ]
    vms = [
        make_vm("a", "h1"),
        make_vm("b", "h2", vcpus=16, cpu_used_cores=9.0),
        make_vm("c", "h2", vcpus=16, cpu_used_cores=9.0),
        make_vm("d", "h2", vcpus=16, cpu_used_cores=9.0, cpu_features={"avx2"}),
    ]
    snap = tmp_path / "snap.json"
    dump_snapshot(make_snapshot(hosts, vms), snap)
    pol = tmp_path / "policy.yaml"
    pol.write_text(policy)
    return str(snap), str(pol)


def test_plan_json_has_exactly_the_documented_shape(tmp_path: Path) -> None:
    snap, pol = _files(tmp_path)
    res = CliRunner().invoke(cli, ["plan", "--snapshot", snap, "--policy", pol, "--json"])
    assert res.exit_code == 0, res.output
    doc = json.loads(res.output)
    assert list(doc) == [
        "version",
        "status",
        "moves",
        "blocked",
        "before",
        "after",
        "solve_seconds",
    ]
    assert doc["status"] == "moves"
    for m in doc["moves"]:
        assert list(m) == ["vm", "source", "target", "step", "reason", "gain"]
    steps = [m["step"] for m in doc["moves"]]
    assert steps == sorted(steps)
    assert {m["vm"]: m["reason"] for m in doc["moves"]}["a"] == "maintenance"
    metrics = ["imbalance", "cpu_stddev", "memory_stddev", "max_cpu_load", "max_memory_load"]
    assert list(doc["before"]) == metrics and list(doc["after"]) == metrics
    assert doc["after"]["max_cpu_load"] < doc["before"]["max_cpu_load"]


def test_plan_table(tmp_path: Path) -> None:
    snap, pol = _files(tmp_path)
    res = CliRunner().invoke(cli, ["plan", "--snapshot", snap, "--policy", pol, "--seed", "3"])
    assert res.exit_code == 0, res.output
    assert "status: moves" in res.output and "maintenance" in res.output


def test_plan_infeasible_names_rules_and_exits_3(tmp_path: Path) -> None:
    policy = POLICY + "  - name: together\n    kind: affinity\n    vms: [a, b]\n"
    snap, pol = _files(tmp_path, policy)
    res = CliRunner().invoke(cli, ["plan", "--snapshot", snap, "--policy", pol, "--json"])
    assert res.exit_code == 3
    doc = json.loads(res.output)
    assert doc["status"] == "infeasible" and doc["conflicts"] == ["apart", "together"]


def test_plan_invalid_input_is_one_line(tmp_path: Path) -> None:
    snap, pol = _files(tmp_path)
    bad = tmp_path / "bad.yaml"
    bad.write_text("threshold: 9\n")
    for args in (
        ["plan", "--snapshot", str(tmp_path / "missing.json"), "--policy", pol],
        ["plan", "--snapshot", snap, "--policy", str(bad)],
        ["assist", "nope", "--snapshot", snap, "--policy", pol],
    ):
        res = CliRunner().invoke(cli, args)
        assert res.exit_code != 0
        assert res.output.count("\n") == 1 and res.output.startswith("error: "), res.output
        assert "Traceback" not in res.output


def test_assist_json_and_table(tmp_path: Path) -> None:
    snap, pol = _files(tmp_path)
    res = CliRunner().invoke(cli, ["assist", "c", "--snapshot", snap, "--policy", pol, "--json"])
    assert res.exit_code == 0, res.output
    doc = json.loads(res.output)
    assert doc["vm"] == "c" and doc["current"] == "h2"
    assert doc["candidates"][0]["host"] in {"h3", "old"}
    assert {r["host"]: r["reason"] for r in doc["ruled_out"]} == {
        "h1": "host_state",
        "h2": "current_host",
    }
    res = CliRunner().invoke(cli, ["assist", "d", "--snapshot", snap, "--policy", pol])
    assert res.exit_code == 0 and "cpu_incompatible" in res.output


SWAP_POLICY = """\
threshold: 1
rules:
  - {name: apart, kind: anti_affinity, vms: [a, b]}
  - {name: a-not-h1, kind: vm_host, mode: must_not, vms: [a], hosts: [h1]}
  - {name: b-not-h2, kind: vm_host, mode: must_not, vms: [b], hosts: [h2]}
"""


def test_partial_plan_lists_its_violations_as_text_and_json(tmp_path: Path) -> None:
    snap = tmp_path / "snap.json"
    dump_snapshot(
        make_snapshot([make_host("h1"), make_host("h2")], [make_vm("a", "h1"), make_vm("b", "h2")]),
        snap,
    )
    pol = tmp_path / "policy.yaml"
    pol.write_text(SWAP_POLICY)
    args = ["plan", "--snapshot", str(snap), "--policy", str(pol)]
    res = CliRunner().invoke(cli, args, env={"COLUMNS": "250"})
    assert res.exit_code == 0, res.output
    assert "status: partial" in res.output and "violations" in res.output
    assert "a-not-h1" in res.output and "needs_transient_violation" in res.output
    res = CliRunner().invoke(cli, [*args, "--json"])
    assert res.exit_code == 0, res.output
    doc = json.loads(res.output)
    assert doc["status"] == "partial"
    assert [(v["rule"], v["cause"]) for v in doc["violations"]] == [
        ("a-not-h1", "needs_transient_violation"),
        ("b-not-h2", "needs_transient_violation"),
    ]
