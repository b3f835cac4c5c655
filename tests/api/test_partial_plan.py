"""A partial plan through the API, in process: a two-host swap that would need a transient
anti-affinity violation. ``POST /balance``, ``GET /plans/{id}`` and ``GET /status`` carry
status ``partial`` and each hard rule left violated with its cause."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient

from balancer.api.app import create_app
from balancer.service.runtime import Runtime
from balancer.settings import load_settings
from balancer.snapshot_io import dump_snapshot
from tests.factories import make_host, make_snapshot, make_vm
from tests.service.running import TOKENS, write_settings

pytestmark = pytest.mark.timeout(120)

OPERATOR = {"Authorization": f"Bearer {TOKENS['bob']}"}
VIEWER = {"Authorization": f"Bearer {TOKENS['vic']}"}
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
    saved = dict(os.environ)
    os.environ.update({f"TEST_TOKEN_{u.upper()}": t for u, t in TOKENS.items()})
    rt = Runtime.build(load_settings(cfg))
    try:
        assert rt.service.reload_policy(initial=True)
        with TestClient(create_app(rt), raise_server_exceptions=True) as c:
            yield c
    finally:
        rt.close()
        os.environ.clear()
        os.environ.update(saved)


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
