"""A partial plan through the API, in process: a two-host swap that would need a transient
anti-affinity violation. ``POST /balance``, ``GET /plans/{id}`` and ``GET /status`` carry
status ``partial`` and each hard rule left violated with its cause."""

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
    {"name": "apart", "kind": "anti_affinity", "vms": ["a", "b"]},
    {"name": "a-not-h1", "kind": "vm_host", "mode": "must_not", "vms": ["a"], "hosts": ["h1"]},
    {"name": "b-not-h2", "kind": "vm_host", "mode": "must_not", "vms": ["b"], "hosts": ["h2"]},
]


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    root = tmp_path_factory.mktemp("partial")
    snap = root / "snap.json"
    dump_snapshot(
        make_snapshot([make_host("h1"), make_host("h2")], [make_vm("a", "h1"), make_vm("b", "h2")]),
        snap,
    )
    cfg = write_settings(
        root, snapshot=str(snap), policy={"automation": "manual", "threshold": 1, "rules": RULES}
    )
    with api_client(cfg) as c:
        yield c


def test_a_partial_plan_shows_its_violations_in_the_plan_and_the_status(
    client: TestClient,
) -> None:
    r = client.post("/api/v1/balance", headers=OPERATOR)
    assert r.status_code == 200, r.text
    plan = r.json()
    assert plan["status"] == "partial" and plan["moves"] == []
    causes = {v["rule"]: (v["cause"], v["label"], v["vms"], v["hosts"]) for v in plan["violations"]}
    assert causes == {
        "a-not-h1": ("needs_transient_violation", "needs_transient_violation", ["a"], ["h1"]),
        "b-not-h2": ("needs_transient_violation", "needs_transient_violation", ["b"], ["h2"]),
    }
    assert all("apart" in v["message"] for v in plan["violations"])
    again = client.get(f"/api/v1/plans/{plan['id']}", headers=VIEWER).json()
    assert again["status"] == "partial" and again["violations"] == plan["violations"]
    status = client.get("/api/v1/status", headers=VIEWER).json()
    assert status["last_plan_id"] == plan["id"]
    assert status["last_plan_status"] == "partial"
    assert status["violations"] == plan["violations"]
