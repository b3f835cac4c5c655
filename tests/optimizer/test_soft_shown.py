"""Soft rules shown: the plan's soft_violations in ``balancer plan`` (table and JSON), read
back from plan files (bad entries refused with item and field), and the assistant's per-host
"breaks / repairs" for soft rules."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from balancer.cli import cli
from balancer.errors import InputError
from balancer.optimizer import assist
from balancer.plan_io import plan_from_dict
from balancer.snapshot_io import dump_snapshot
from policies.model import Rule, RuleKind, RuleMode, Selector
from tests.factories import make_host, make_snapshot, make_vm
from tests.optimizer.helpers import policy

POLICY = """\
threshold: 3
rules:
  - {name: web-apart, kind: anti_affinity, vms: [w0, w1, w2], mode: should}
"""


def _files(tmp_path: Path) -> tuple[str, str]:
    """Three soft-apart VMs on two hosts: the plan must leave the rule broken."""
    (tmp_path / "policy.yaml").write_text(POLICY)
    vms = [make_vm(f"w{i}", "h1") for i in range(3)] + [make_vm("x", "h2")]
    dump_snapshot(make_snapshot([make_host("h1"), make_host("h2")], vms), tmp_path / "s.json")
    return str(tmp_path / "s.json"), str(tmp_path / "policy.yaml")


def test_plan_json_lists_the_soft_rules_still_broken(tmp_path: Path) -> None:
    snap, pol = _files(tmp_path)
    res = CliRunner().invoke(cli, ["plan", "--snapshot", snap, "--policy", pol, "--json"])
    assert res.exit_code == 0, res.output
    doc = json.loads(res.output)
    assert doc["status"] != "infeasible"
    (soft,) = doc["soft_violations"]
    assert list(soft) == ["rule", "kind", "mode", "vms", "hosts"]
    assert (soft["rule"], soft["kind"], soft["mode"]) == ("web-apart", "anti_affinity", "should")
    assert len(soft["vms"]) == 2 and len(soft["hosts"]) == 1


def test_plan_table_shows_the_soft_rules_still_broken(tmp_path: Path) -> None:
    snap, pol = _files(tmp_path)
    res = CliRunner().invoke(cli, ["plan", "--snapshot", snap, "--policy", pol])
    assert res.exit_code == 0, res.output
    assert "soft rules still broken" in res.output
    assert "web-apart" in res.output and "anti_affinity" in res.output


def _doc(soft: Any) -> dict[str, Any]:
    return {"moves": [], "soft_violations": soft}


@pytest.mark.parametrize(
    ("soft", "expected"),
    [
        ({"rule": "r"}, "plan.json: soft_violations: must be a list"),
        (["r"], "plan.json: soft_violations[0]: must be a JSON object"),
        (
            [{"rule": "r", "kind": "affinity", "mode": "should", "vms": [], "hosts": [], "x": 1}],
            "soft_violations[0]: x: unknown key",
        ),
        ([{"kind": "affinity", "mode": "should"}], "soft_violations[0]: rule: is required"),
        (
            [{"rule": "r", "kind": "near", "mode": "should"}],
            "soft_violations[0]: kind: unknown kind 'near'",
        ),
        (
            [{"rule": "r", "kind": "affinity", "mode": "must"}],
            "soft_violations[0]: mode: unknown mode 'must'",
        ),
        (
            [{"rule": "r", "kind": "affinity", "mode": "should", "vms": "a"}],
            "soft_violations[0]: vms: must be a list of names",
        ),
        (
            [{"rule": "r", "kind": "affinity", "mode": "should", "vms": ["a", 3]}],
            "soft_violations[0]: vms[1]: must be a name, got 3",
        ),
    ],
)
def test_plan_files_refuse_bad_soft_violations(soft: Any, expected: str) -> None:
    with pytest.raises(InputError) as info:
        plan_from_dict(_doc(soft), source="plan.json")
    assert expected in str(info.value), str(info.value)


def test_plan_files_without_soft_violations_still_read() -> None:
    assert plan_from_dict({"moves": []}).soft_violations == ()


def _should(name: str, kind: RuleKind, *vms: str) -> Rule:
    return Rule(name=name, kind=kind, vms=Selector(names=frozenset(vms)), mode=RuleMode.SHOULD)


def test_assist_says_which_soft_rules_each_host_breaks_or_repairs() -> None:
    hosts = [make_host(f"h{i}") for i in (1, 2, 3)]
    vms = [make_vm("web1", "h1"), make_vm("web2", "h1"), make_vm("web3", "h2"), make_vm("db", "h3")]
    pol = policy(
        3,
        rules=(
            _should("web-apart", RuleKind.ANTI_AFFINITY, "web1", "web2", "web3"),
            _should("web2-near-db", RuleKind.AFFINITY, "web2", "db"),
        ),
    )
    result = assist(make_snapshot(hosts, vms), pol, "web2")
    effects = {c.host: (c.soft_breaks, c.soft_repairs) for c in result.candidates}
    # h2 holds web3: leaving h1 repairs nothing of web-apart there (web3 is on h2)
    assert effects == {
        "h2": ((), ()),
        "h3": ((), ("web-apart", "web2-near-db")),
    }
    # no soft rule rules a host out
    assert {r.host for r in result.ruled_out} == {"h1"}
    # both rules hold: moving web2 away breaks them
    held = [
        make_vm("web1", "h1"),
        make_vm("web2", "h2"),
        make_vm("web3", "h3"),
        make_vm("db", "h2"),
    ]
    moved = assist(make_snapshot(hosts, held), pol, "web2")
    assert {c.host: (c.soft_breaks, c.soft_repairs) for c in moved.candidates} == {
        "h1": (("web-apart", "web2-near-db"), ()),
        "h3": (("web-apart", "web2-near-db"), ()),
    }


def test_assist_json_and_table_show_soft_effects(tmp_path: Path) -> None:
    snap, pol = _files(tmp_path)
    res = CliRunner().invoke(cli, ["assist", "w0", "--snapshot", snap, "--policy", pol, "--json"])
    assert res.exit_code == 0, res.output
    (cand,) = json.loads(res.output)["candidates"]
    assert cand["host"] == "h2"
    assert cand["soft_breaks"] == [] and cand["soft_repairs"] == []
    res = CliRunner().invoke(cli, ["assist", "x", "--snapshot", snap, "--policy", pol])
    assert res.exit_code == 0, res.output
    assert "soft rules" in res.output
