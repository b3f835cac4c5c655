"""Host health and proactive evacuation (issue 13), through the HTTP API in process on a
simulated cluster: repeated migration failures to a host, sustained pressure in its agent's
samples, a rising EDAC count quarantine it (audited with the signal) and its VMs leave; the
healthy period releases it by itself, an operator's release is not overruled; the cap holds a
second host and says so.

The service runs on a manual clock that the test advances (the agent samples carry its time),
and each ``tick`` is one collect, after which the service evaluates the hosts' health.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from fastapi.testclient import TestClient

import balancer.cli.service as cli_service
from balancer.api.app import create_app
from balancer.cli import cli
from balancer.service.core import SYSTEM
from balancer.service.runtime import Runtime
from balancer.settings import load_settings
from balancer.sim.clock import ManualClock
from balancer.sim.cluster import SimulatedCluster
from tests.factories import make_host, make_snapshot, make_vm
from tests.service.running import TOKENS, write_settings

pytestmark = pytest.mark.timeout(240)

OPERATOR = {"Authorization": f"Bearer {TOKENS['bob']}"}
AGENT = {"Authorization": f"Bearer {TOKENS['ada']}"}
HOSTS = ("h1", "h2", "h3", "h4")


@dataclass
class Rig:
    api: TestClient
    sim: SimulatedCluster
    clock: ManualClock
    rt: Runtime

    def get(self, path: str) -> Any:
        r = self.api.get(f"/api/v1{path}", headers=OPERATOR)
        assert r.status_code == 200, r.text
        return r.json()

    def post(self, path: str, body: Any = None, headers: dict[str, str] = OPERATOR) -> Any:
        r = self.api.post(f"/api/v1{path}", headers=headers, json=body)
        assert r.status_code < 300, r.text
        return r.json()

    def tick(self, seconds: float = 0.5) -> None:
        self.clock.advance(seconds)
        self.rt.service.collect()

    def until(self, what: str, check: Any, *, limit: int = 400, seconds: float = 0.5) -> Any:
        """Tick (the clock moves ``seconds`` each time) until ``check()`` is truthy."""
        for _ in range(limit):
            got = check()
            if got:
                return got
            self.tick(seconds)
        raise AssertionError(f"{what}: not within {limit} ticks")

    def state(self, host: str) -> str:
        return str(next(h["state"] for h in self.get("/status")["hosts"] if h["name"] == host))

    def vms_on(self, host: str) -> list[str]:
        return [v.name for v in self.sim.snapshot().vms_on(host)]

    def audit(self, kind: str, host: str | None = None) -> list[dict[str, Any]]:
        q = f"?kind={kind}" + (f"&host={host}" if host else "")
        return list(reversed(self.get(f"/audit{q}")))

    def sample(
        self,
        host: str,
        *,
        memory_psi: float = 1.0,
        hardware: dict[str, int] | None = None,
    ) -> None:
        line = {"avg10": memory_psi, "avg60": memory_psi, "avg300": memory_psi, "total_us": 1}
        low = {"avg10": 0.5, "avg60": 0.5, "avg300": 0.5, "total_us": 1}
        body = {
            "host": host,
            "time": self.clock.now().isoformat(),
            "cpu_cores": 32,
            "cpu_used_cores": 3.5,
            "memory_mib": 131072,
            "memory_used_mib": 8000,
            "psi": {"cpu": {"some": low}, "memory": {"some": line}, "io": {"some": low}},
            "net_rx_bps": 0.0,
            "net_tx_bps": 0.0,
        }
        if hardware is not None:
            body["hardware"] = hardware
        self.post("/ingest/host", body, headers=AGENT)


@contextmanager
def rig(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, **health: Any) -> Iterator[Rig]:
    """Four hosts with three small VMs each; mandatory moves only (partial automation,
    threshold 1), so that nothing but an evacuation moves."""
    for user, token in TOKENS.items():
        monkeypatch.setenv(f"TEST_TOKEN_{user.upper()}", token)
    cfg = write_settings(
        tmp_path,
        policy={"automation": "partial", "threshold": 1, "exclude": [], "health": health},
        intervals={"collect_s": 0.5, "balance_s": 1.0, "policy_reload_s": 5},
    )
    (tmp_path / "policies" / "rules.yaml").write_text("rules: []\n")
    hosts = [make_host(n, cpu_cores=32, memory_mib=131072) for n in HOSTS]
    vms = [
        make_vm(f"vm{h[1]}{j}", h, vcpus=2, cpu_used_cores=1.0, memory_mib=2048)
        for h in HOSTS
        for j in range(3)
    ]
    clock = ManualClock(datetime.now(UTC).replace(microsecond=0))
    sim = SimulatedCluster(make_snapshot(hosts, vms), clock=clock, link_mib_s=20000.0)
    rt = Runtime.build(load_settings(cfg), port=sim, clock=clock)
    try:
        rt.service.start()  # no scheduler: the test drives the ticks
        with TestClient(create_app(rt), raise_server_exceptions=True) as api:
            r = Rig(api=api, sim=sim, clock=clock, rt=rt)
            r.tick()
            yield r
    finally:
        rt.begin_stop("test")
        rt.drain()
        rt.close()


def signals_of(r: Rig, host: str) -> list[str]:
    hosts = {h["name"]: h for h in r.get("/status")["hosts"]}
    return [s["signal"] for s in hosts[host]["health"]]


def test_repeated_migration_failures_to_a_host_quarantine_and_empty_it_until_released(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with rig(tmp_path, monkeypatch, migration_failures=3, release_after_healthy_minutes=None) as r:
        # three migrations to h3, from two hosts, each failing
        for vm in ("vm10", "vm20", "vm11"):
            r.sim.inject_failure(vm, at_fraction=0.3, message="target refused the stream")
            r.post("/migrations", {"vm": vm, "target": "h3"})
            r.until(
                f"the migration of {vm} to fail",
                lambda vm=vm: any(
                    m["vm"] == vm and m["state"] == "failed" for m in r.get("/migrations")
                ),
            )
        r.until("h3 quarantined", lambda: r.state("h3") == "quarantined")
        (q,) = [a for a in r.audit("quarantine", "h3") if a["result"] == "quarantined"]
        assert q["who"] == SYSTEM
        assert "health signal migration_failures: 3 failed migrations" in q["detail"]
        assert "3 VMs to move off" in q["detail"]
        raised = r.audit("host_health", "h3")
        assert [(a["result"], a["reason"]) for a in raised] == [("raised", "migration_failures")]
        # h1 saw two of the failures: under the limit, untouched
        assert r.state("h1") == "active" and signals_of(r, "h1") == []
        assert signals_of(r, "h3") == ["migration_failures"]
        metrics = r.api.get("/metrics").text
        assert 'balancer_host_health_signal{host="h3",signal="migration_failures"} 1.0' in metrics

        # its VMs are evacuated (mandatory moves, run under partial automation)
        r.until("h3 emptied", lambda: not r.vms_on("h3"))
        assert all(
            m["source"] == "h3" and m["reason"] == "quarantine"
            for m in r.get("/migrations")
            if m["state"] == "succeeded"
        )

        # operator only: it stays quarantined long after the signal cleared
        r.until("the signal to clear", lambda: not signals_of(r, "h3"), seconds=30)
        for _ in range(5):
            r.tick(60)
        assert r.state("h3") == "quarantined"
        r.post("/hosts/h3/release")
        assert r.state("h3") == "active"
        for _ in range(3):
            r.tick()
        assert r.state("h3") == "active"  # the failures before the release do not count again
        released = [a for a in r.audit("quarantine", "h3") if a["result"] == "released"]
        assert [a["who"] for a in released] == ["bob"]


def test_sustained_memory_pressure_quarantines_and_the_healthy_period_releases(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with rig(tmp_path, monkeypatch, sustained_minutes=5, release_after_healthy_minutes=30) as r:
        start = r.clock.now()
        # the agent reports 55 % memory pressure (limit 40) every 20 s
        for _ in range(14):  # 4 min 40 s: not sustained long enough yet
            r.sample("h2", memory_psi=55.0)
            r.tick(20)
        assert r.state("h2") == "active" and signals_of(r, "h2") == []

        def high_and_quarantined() -> bool:
            r.sample("h2", memory_psi=55.0)
            r.tick(0)
            return r.state("h2") == "quarantined"

        r.until("h2 quarantined", high_and_quarantined, seconds=20, limit=10)
        assert (r.clock.now() - start).total_seconds() >= 300
        (q,) = [a for a in r.audit("quarantine", "h2") if a["result"] == "quarantined"]
        assert "health signal pressure: memory some avg60 >= 55 %" in q["detail"]
        assert "(limit 40 % for 5 min)" in q["detail"]
        (sig,) = next(h for h in r.get("/status")["hosts"] if h["name"] == "h2")["health"]
        assert sig["signal"] == "pressure" and sig["since"]
        r.until("h2 emptied", lambda: not r.vms_on("h2"))

        # the pressure ends; 30 minutes without a signal release it by itself
        r.sample("h2", memory_psi=2.0)
        r.tick()
        assert signals_of(r, "h2") == []
        healthy_at = r.clock.now()

        def calm_and_released() -> bool:
            r.sample("h2", memory_psi=2.0)
            return r.state("h2") == "active"

        r.until("h2 released", calm_and_released, seconds=60, limit=40)
        assert (r.clock.now() - healthy_at).total_seconds() >= 29 * 60
        released = [a for a in r.audit("quarantine", "h2") if a["result"] == "released"]
        assert [a["who"] for a in released] == [SYSTEM]
        assert released[0]["detail"].startswith("automatic release: no health signal since")


def test_a_rising_edac_count_quarantines_one_host_and_the_cap_holds_the_next(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with rig(tmp_path, monkeypatch) as r:
        # an older agent's sample (no hardware counters) is taken as before
        r.sample("h1")
        for h in ("h4", "h1"):
            r.sample(h, hardware={"edac_corrected": 2, "edac_uncorrected": 0, "mce": 0})
        r.tick()
        assert r.state("h4") == "active"
        r.sample("h4", hardware={"edac_corrected": 9, "edac_uncorrected": 0, "mce": 0})
        r.tick()
        r.sample("h1", hardware={"edac_corrected": 2, "edac_uncorrected": 1, "mce": 0})
        r.tick()
        assert r.state("h4") == "quarantined"
        (q,) = [a for a in r.audit("quarantine", "h4") if a["result"] == "quarantined"]
        assert "hardware_errors: edac_corrected rose 2 -> 9" in q["detail"]
        # h1's uncorrected error: one automatic quarantine at a time, said once in the audit
        assert r.state("h1") == "active" and signals_of(r, "h1") == ["hardware_errors"]
        r.tick()
        (held,) = [a for a in r.audit("quarantine", "h1") if a["result"] == "held"]
        assert held["who"] == SYSTEM and held["reason"] == "hardware_errors"
        assert "edac_uncorrected rose 0 -> 1" in held["detail"]
        assert "at most 1 host quarantined by the service at a time" in held["detail"]
        r.until("h4 emptied", lambda: not r.vms_on("h4"))
        assert r.vms_on("h1")

        # ``balancer status`` lists each raised signal under the hosts
        def through_the_test_client(self: Any, *_: Any) -> None:
            self.url, self.http = "http://testserver", r.api

        monkeypatch.setattr(cli_service.Client, "__init__", through_the_test_client)
        r.api.headers.update(OPERATOR)
        out = CliRunner().invoke(cli, ["status", "--url", "http://testserver"])
        assert out.exit_code == 0, out.output
        assert "health h1: hardware_errors since " in out.output
        assert "edac_uncorrected rose 0 -> 1" in out.output


def test_a_host_that_keeps_dropping_its_connection_is_quarantined_and_emptied_once_back(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with rig(tmp_path, monkeypatch, connection_failures=3) as r:
        for n in range(3):  # three short outages, each seen by one collect
            assert r.state("h1") == "active", n
            r.sim.set_reachable("h1", False)
            r.tick()
            r.sim.set_reachable("h1", True)
            r.tick()
        assert r.rt.service.store.host_states().get("h1") == "quarantined"
        (q,) = [a for a in r.audit("quarantine", "h1") if a["result"] == "quarantined"]
        assert "connection_failures: 3 failed collects in 10 min (limit 3)" in q["detail"]
        # quarantined while it did not answer: nothing could leave then; the next balance
        # cycle (the scheduler's, here the test's) moves its VMs off now that it answers
        r.rt.service.balance()
        r.until("h1 emptied", lambda: not r.vms_on("h1"))
