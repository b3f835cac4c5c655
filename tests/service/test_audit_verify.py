"""The running service verifies its audit chain periodically (with the anchor it writes next to
the SQLite database by default) and exports the result on ``/metrics``."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import httpx
import pytest
import yaml

from balancer.storage.anchor import read_anchor
from tests.service.running import Service, running, wait_for, write_settings

pytestmark = pytest.mark.timeout(240)


def _metric(svc: Service, name: str) -> float | None:
    for line in httpx.get(f"{svc.url}/metrics", timeout=10).text.splitlines():
        if line.startswith(f"{name} "):
            return float(line.split()[1])
    return None


def _records(db: Path) -> int:
    with sqlite3.connect(db) as conn:
        return int(conn.execute("SELECT count(*) FROM audit_records").fetchone()[0])


def test_periodic_verify_exports_the_chain_state_and_catches_truncation(tmp_path: Path) -> None:
    cfg = write_settings(tmp_path)
    doc = yaml.safe_load(cfg.read_text())
    doc["audit"] = {"verify_interval_s": 1}
    cfg.write_text(yaml.safe_dump(doc, sort_keys=False))
    db = tmp_path / "balancer.db"
    anchor = Path(f"{db}.anchor")
    with running(cfg) as svc:
        for _ in range(3):  # a few audit records of the service's own
            svc.post("/pause", json={"reason": "test"})
            svc.post("/resume")
        n = _records(db)
        assert n >= 6

        def verified() -> bool:
            ok = _metric(svc, "balancer_audit_chain_ok")
            count = _metric(svc, "balancer_audit_verified_records")
            return ok == 1.0 and count is not None and count >= n

        wait_for(f"a verification of at least {n} records", verified, timeout_s=60)
        assert _metric(svc, "balancer_audit_verify_timestamp_seconds")
    # the default anchor: next to the database, every record anchored
    entries = read_anchor(anchor)
    assert max(entries) == _records(db)
    # delete the newest records and rewind the head: the chain alone is valid ...
    keep = max(entries) - 3
    with sqlite3.connect(db) as conn:
        conn.execute("DELETE FROM audit_records WHERE seq > ?", (keep,))
        conn.execute(
            "UPDATE audit_head SET seq = ?, hash = (SELECT hash FROM audit_records WHERE seq = ?)",
            (keep, keep),
        )
    with running(cfg) as svc:
        # ... but not against the anchor: the service reports it
        wait_for(
            "balancer_audit_chain_ok 0 after the truncation",
            lambda: _metric(svc, "balancer_audit_chain_ok") == 0.0,
            timeout_s=60,
        )
    assert "audit trail does not verify" in svc.log_path.read_text()
