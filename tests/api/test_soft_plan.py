"""Soft VM-VM rules through the API, in process: three VMs kept apart by a ``should`` rule
share h1 of a cluster within its target, under ``soft_rules: when_balancing``. ``POST
/balance`` moves nothing (the cycle does not balance, so the soft rule is not repaired) and,
like ``GET /plans/{id}``, lists the soft rule the plan still breaks; ``GET /policy`` says when
soft rules are repaired."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient

from balancer.snapshot_io import dump_snapshot
from tests.api.inprocess import OPERATOR, VIEWER, api_client
from tests.factories import make_host, make_snapshot, make_vm
from tests.service.running import write_settings

pytestmark = pytest.mark.timeout(120)

RULES = [
    {"name": "web-apart", "kind": "anti_affinity", "mode": "should", "vms": ["w0", "w1", "w2"]}
]


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    root = tmp_path_factory.mktemp("soft")
    snap = root / "snap.json"
    vms = [make_vm(f"w{i}", "h1") for i in range(3)] + [make_vm("x", "h2")]
    dump_snapshot(make_snapshot([make_host("h1"), make_host("h2")], vms), snap)
    policy = {
        "automation": "manual",
        "threshold": 3,
        "soft_rules": "when_balancing",
        "cooldown_minutes": 30,
        "cooldown_max_minutes": 120,
    }
    cfg = write_settings(root, snapshot=str(snap), policy=policy | {"rules": RULES})
    with api_client(cfg) as c:
        yield c


def test_the_plan_lists_the_soft_rule_it_still_breaks(client: TestClient) -> None:
    r = client.post("/api/v1/balance", headers=OPERATOR)
    assert r.status_code == 200, r.text
    plan = r.json()
    assert plan["status"] == "balanced" and plan["moves"] == [] and plan["violations"] == []
    assert plan["soft_violations"] == [
        {
            "rule": "web-apart",
            "kind": "anti_affinity",
            "mode": "should",
            "vms": ["w0", "w1", "w2"],
            "hosts": ["h1"],
        }
    ]
    again = client.get(f"/api/v1/plans/{plan['id']}", headers=VIEWER).json()
    assert again["soft_violations"] == plan["soft_violations"]


def test_the_policy_view_says_when_soft_rules_are_repaired_and_the_cooldowns(
    client: TestClient,
) -> None:
    doc = client.get("/api/v1/policy", headers=VIEWER).json()
    assert doc["soft_rules"] == "when_balancing"
    # and the adaptive cooldown's start and ceiling
    assert (doc["cooldown_minutes"], doc["cooldown_max_minutes"]) == (30, 120)
