"""The host agent's route: ``balancer agent`` posts this machine's samples to a running
service with an agent token; they reach the sample window and the status (PSI); an unknown host
is refused naming it; an agent token reads nothing; samples are not audited."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.service.running import REPO, TOKENS, running, wait_for, write_settings

pytestmark = pytest.mark.timeout(180)

HAS_PSI = Path("/proc/pressure/cpu").exists()


def test_agent_samples_reach_the_status_and_unknown_hosts_are_refused(tmp_path: Path) -> None:
    cfg = write_settings(tmp_path, policy={"automation": "manual"})
    token_file = tmp_path / "agent.token"
    token_file.write_text(TOKENS["ada"] + "\n")
    with running(cfg) as svc:
        host = svc.get("/status")["hosts"][0]["name"]
        agent = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "balancer",
                "agent",
                "--host",
                host,
                "--interval-s",
                "0.2",
                "--push-url",
                svc.url,
                "--push-token-file",
                str(token_file),
            ],
            cwd=REPO,
            env=dict(os.environ),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        try:
            seen = wait_for(
                "the agent's sample in the status",
                lambda: next(
                    (
                        h["agent"]
                        for h in svc.get("/status")["hosts"]
                        if h["name"] == host and h["agent"]
                    ),
                    None,
                ),
                timeout_s=60,
            )
            assert seen["memory_used_mib"] > 0 and seen["cpu_used_cores"] >= 0
            if HAS_PSI:  # this machine's kernel gives pressure stall information
                assert "psi_cpu_some_avg10" in seen["psi"], seen
        finally:
            agent.send_signal(signal.SIGTERM)
            out, _ = agent.communicate(timeout=30)
        assert agent.returncode == 0, out.decode(errors="replace")
        assert b"stopped after" in out

        doc = {
            "host": "nope",
            "time": seen["at"],
            "cpu_cores": 2,
            "cpu_used_cores": 0.5,
            "memory_mib": 1024,
            "memory_used_mib": 512,
            "psi": None,
            "net_rx_bps": None,
            "net_tx_bps": None,
        }
        with svc.client("ada") as c:
            r = c.post("/ingest/host", json=doc)
            assert r.status_code == 422 and r.json()["field"] == "host", r.text
            assert "nope" in r.json()["error"]
            assert (
                c.post("/ingest/host", json={**doc, "host": host, "time": "x"}).status_code == 422
            )
            assert c.get("/status").status_code == 403  # an agent token reads nothing
        with svc.client("vic") as c:
            assert c.post("/ingest/host", json={**doc, "host": host}).status_code == 403
        audit = svc.get("/audit", params={"limit": 500})
        assert not [a for a in audit if "ingest" in (a.get("detail") or "")], audit[:3]
