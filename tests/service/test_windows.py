"""Balancing windows in the service (issue 13): a freeze window holds balancing moves, not a
maintenance evacuation; outside every allow window balancing is held too; the hold is
audited once per window, and the status says it. On a manual clock and a simulated cluster
whose load is all on h1."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from balancer.cli import cli
from balancer.service.ports import AuditFilter
from balancer.service.runtime import Runtime
from balancer.sim.clock import ManualClock
from balancer.sim.cluster import SimulatedCluster
from tests.factories import make_host, make_snapshot, make_vm
from tests.service.running import TOKENS, write_settings
from tests.service.test_predictive import serving
from tests.service.test_rolling import service

pytestmark = pytest.mark.timeout(300)

#: a Monday, 10:00 UTC
T0 = datetime(2026, 3, 2, 10, 0, tzinfo=UTC)


@contextmanager
def skewed(tmp_path: Path, windows: list[dict[str, Any]]) -> Iterator[tuple[Runtime, Any]]:
    cfg = write_settings(
        tmp_path,
        policy={"automation": "full", "threshold": 3, "exclude": [], "windows": windows},
        intervals={"collect_s": 60, "balance_s": 60, "policy_reload_s": 60},
    )
    clock = ManualClock(T0)
    hosts = [make_host(h, cpu_cores=16, memory_mib=65536) for h in ("h1", "h2", "h3")]
    vms = [make_vm(f"a{i}", "h1", vcpus=4, cpu_used_cores=3.0) for i in range(4)]
    vms += [make_vm(f"c{i}", "h3", vcpus=2, cpu_used_cores=0.5) for i in range(2)]
    sim = SimulatedCluster(make_snapshot(hosts, vms), clock=clock, link_mib_s=20000.0)
    with service(cfg, sim, clock) as rt:

        def tick(seconds: float = 0.5) -> None:
            clock.advance(seconds)
            rt.service.collect()

        tick()
        yield rt, tick


def window_audits(rt: Runtime) -> list[str]:
    return [a.detail for a in rt.service.audit_records(AuditFilter(kind="window"))]


def test_a_freeze_window_holds_balancing_but_not_an_evacuation(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for user, token in TOKENS.items():
        monkeypatch.setenv(f"TEST_TOKEN_{user.upper()}", token)
    freeze = {
        "name": "freeze-test",
        "mode": "freeze",
        "cron": "0 10 * * 1-5",
        "duration_minutes": 120,
    }
    with skewed(tmp_path, [freeze]) as (rt, tick):
        svc = rt.service
        plan = svc.balance()
        assert plan.moves and plan.executed == [] and plan.recommended == []
        assert set(plan.held) == {m.vm for m in plan.moves}
        assert "frozen by freeze-test until 2026-03-02T12:00+00:00" in plan.note
        assert svc.status().window == "frozen by freeze-test until 2026-03-02T12:00+00:00"
        with serving(rt) as url:
            shown = CliRunner().invoke(cli, ["status", "--url", url, "--token", TOKENS["vic"]])
        assert shown.exit_code == 0, shown.output
        assert (
            "balancing held: frozen by freeze-test until 2026-03-02T12:00+00:00 "
            "(mandatory moves continue)" in shown.stdout
        )
        tick()
        assert svc.balance().executed == []
        assert len(window_audits(rt)) == 1  # once per window, not per cycle
        # a maintenance evacuation is mandatory: it runs inside the freeze
        svc.enter_maintenance("h3", who="bob")
        for _ in range(400):
            if svc.maintenance_status("h3").state == "maintenance":
                break
            tick()
        assert svc.maintenance_status("h3").state == "maintenance"
        assert not svc.snapshot().vms_on("h3")
        # the window ends: balancing runs again
        tick(2 * 3600)
        assert svc.status().window is None
        assert svc.balance().executed
        assert len(window_audits(rt)) == 1


def test_outside_every_allow_window_balancing_is_held(tmp_path: Path) -> None:
    night = {"name": "night", "mode": "allow", "cron": "0 22 * * *", "duration_minutes": 60}
    with skewed(tmp_path, [night]) as (rt, tick):
        svc = rt.service
        plan = svc.balance()
        assert plan.moves and plan.executed == []
        text = "outside every allow window until 2026-03-02T22:00+00:00 (night)"
        assert text in plan.note and svc.status().window == text
        assert window_audits(rt) == [
            f"balancing held: {text}; {len(plan.held)} moves held this cycle; "
            "mandatory moves continue"
        ]
        tick(12 * 3600 + 60)  # 22:01: inside the allow window
        assert svc.status().window is None
        assert svc.balance().executed
