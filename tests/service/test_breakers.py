"""Circuit breakers through the running service (in process): stale metrics from an unreachable
host and repeated migration failures pause balancing, say why, and close again."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from balancer.errors import HostUnreachableError
from balancer.model import Snapshot
from balancer.service.ports import AuditFilter
from balancer.service.runtime import Runtime
from balancer.settings import load_settings
from balancer.sim.clock import RealClock
from balancer.sim.cluster import SimulatedCluster
from tests.factories import make_host, make_snapshot, make_vm
from tests.service.running import wait_for, write_settings

pytestmark = pytest.mark.timeout(120)


def _cluster() -> SimulatedCluster:
    hosts = [make_host(f"h{i}", cpu_cores=32, memory_mib=131072) for i in (1, 2, 3)]
    # skewed: h1 carries most of the load, so a balance plan has moves
    vms = [make_vm(f"a{j}", "h1", vcpus=4, cpu_used_cores=4.0, memory_mib=2048) for j in range(6)]
    vms += [make_vm(f"b{j}", "h2", cpu_used_cores=0.5, memory_mib=2048) for j in range(2)]
    vms += [make_vm(f"c{j}", "h3", cpu_used_cores=0.5, memory_mib=2048) for j in range(2)]
    return SimulatedCluster(make_snapshot(hosts, vms), clock=RealClock(), link_mib_s=20000.0)


class FlakyPort:
    """The simulated cluster, whose inventory calls can be made to fail."""

    def __init__(self, sim: SimulatedCluster) -> None:
        self.sim = sim
        self.down = False

    def snapshot(self) -> Snapshot:
        if self.down:
            raise HostUnreachableError("all", "the management network is down")
        return self.sim.snapshot()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.sim, name)


def test_stale_metrics_and_failures_pause_balancing(tmp_path: Path) -> None:
    cfg = write_settings(
        tmp_path,
        policy={"automation": "full", "exclude": []},
        intervals={"collect_s": 0.5, "balance_s": 3600, "policy_reload_s": 60},
        breakers={"failure_limit": 2, "failure_window_s": 600, "stale_after_s": 2},
    )
    (tmp_path / "policies" / "rules.yaml").write_text("rules: []\n")
    sim = _cluster()
    port = FlakyPort(sim)
    rt = Runtime.build(load_settings(cfg), port=port)  # type: ignore[arg-type]
    try:
        rt.start()
        svc = rt.service
        assert not svc.status().paused

        # 1. the cluster stops answering: the metrics go stale, balancing pauses and says why
        port.down = True
        st = wait_for(
            "the stale-metrics breaker",
            lambda: (s := svc.status()).paused and s,
            timeout_s=30,
        )
        assert [b.reason for b in st.pause_reasons] == ["stale_metrics"]
        assert "last metrics" in st.pause_reasons[0].detail
        assert "management network" in (st.last_collect_error or "")
        plan = svc.balance(who="test")
        assert plan.moves and not plan.executed and plan.held, plan
        assert "stale_metrics" in plan.note
        assert svc.migrations() == []
        port.down = False
        wait_for("the breaker to close", lambda: not svc.status().paused, timeout_s=30)

        # 2. migrations keep failing: balancing pauses, evacuations may continue
        sim.inject_failure("b0", at_fraction=0.2, message="injected")
        sim.inject_failure("c0", at_fraction=0.2, message="injected")
        svc.request_migration("b0", "h3", who="test")
        svc.request_migration("c0", "h2", who="test")
        st = wait_for(
            "the failure breaker",
            lambda: (s := svc.status()).paused and s,
            timeout_s=30,
        )
        assert [b.reason for b in st.pause_reasons] == ["migration_failures"]
        assert st.mandatory_allowed
        # every transition is audited on the breakers' own timer, in the order it happened
        records = wait_for(
            "the failure breaker's audit record",
            lambda: (
                (r := svc.audit_records(AuditFilter(kind="breaker", limit=10)))
                and "migration_failures" in (r[0].detail or "")
                and r
            ),
            timeout_s=30,
        )
        seen = [(r.result, (r.detail or "").split(":")[0]) for r in reversed(records)]
        assert seen == [
            ("open", "stale_metrics"),
            ("closed", "stale_metrics"),
            ("open", "migration_failures"),
        ], records
    finally:
        rt.begin_stop("test")
        rt.drain()
        rt.close()


def test_a_standby_audits_no_breaker_and_the_leader_does(tmp_path: Path) -> None:
    cfg = write_settings(
        tmp_path,
        policy={"automation": "full", "exclude": []},
        intervals={"collect_s": 0.5, "balance_s": 3600, "policy_reload_s": 60},
        breakers={"failure_limit": 2, "failure_window_s": 600, "stale_after_s": 1},
    )
    (tmp_path / "policies" / "rules.yaml").write_text("rules: []\n")
    port = FlakyPort(_cluster())
    rt = Runtime.build(load_settings(cfg), port=port)  # type: ignore[arg-type]
    try:
        rt.start()
        svc = rt.service
        leading = False
        svc.leading = lambda: leading  # a standby: its audit writes would be fenced
        port.down = True
        wait_for("stale metrics", lambda: svc.status().paused, timeout_s=30)
        svc.watch_breakers()
        assert svc.audit_records(AuditFilter(kind="breaker", limit=10)) == []
        leading = True  # it takes the lead: the open breaker is reported once
        svc.watch_breakers()
        svc.watch_breakers()
        records = svc.audit_records(AuditFilter(kind="breaker", limit=10))
        assert [(r.result, (r.detail or "").split(":")[0]) for r in records] == [
            ("open", "stale_metrics")
        ]
    finally:
        rt.begin_stop("test")
        rt.drain()
        rt.close()
