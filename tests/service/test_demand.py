"""Through the running service (in process, real scheduler and executor): a short spike on one
host moves nothing; a sustained rise does (issue 7's window and demand at work).

Time is scaled down: a 40 s window sampled every 0.5 s, so a 1 s spike is what a one-minute
spike is to an hour's window.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import yaml

from balancer.service.runtime import Runtime
from balancer.settings import load_settings
from balancer.sim.clock import RealClock
from balancer.sim.cluster import SimulatedCluster
from tests.factories import make_host, make_snapshot, make_vm
from tests.service.running import wait_for, write_settings

pytestmark = pytest.mark.timeout(150)

BASE_CORES = 2.0
HOT_CORES = 7.0


def _cluster() -> SimulatedCluster:
    hosts = [make_host(f"h{i}", cpu_cores=32, memory_mib=131072) for i in (1, 2, 3)]
    vms = [
        make_vm(f"vm{h}{j}", f"h{h}", cpu_used_cores=BASE_CORES, memory_mib=2048)
        for h in (1, 2, 3)
        for j in range(4)
    ]
    return SimulatedCluster(make_snapshot(hosts, vms), clock=RealClock(), link_mib_s=20000.0)


def test_a_short_spike_moves_nothing_a_sustained_rise_does(tmp_path: Path) -> None:
    cfg = write_settings(
        tmp_path,
        policy={"automation": "full", "threshold": 3, "exclude": []},
        intervals={"collect_s": 0.5, "balance_s": 1.0, "policy_reload_s": 5},
    )
    doc = yaml.safe_load(cfg.read_text())
    doc["collectors"] = {
        "window_s": 40,
        "sample_interval_s": 0.5,
        "halflife_s": 10,
        "percentile": 95,
        "stale_after_s": 10,
    }
    (tmp_path / "policies" / "rules.yaml").write_text("rules: []\n")
    cfg.write_text(yaml.safe_dump(doc))
    sim = _cluster()
    rt = Runtime.build(load_settings(cfg), port=sim)
    hot = {f"vm1{j}": HOT_CORES for j in range(4)}
    calm = dict.fromkeys(hot, BASE_CORES)
    try:
        rt.start()
        svc = rt.service
        # a balanced cluster fills the window with calm samples
        time.sleep(22)
        assert svc.migrations() == []
        # the spike: one host's VMs jump to 7 cores for one second (2 samples), then calm down
        sim.set_cpu_usage(hot)
        time.sleep(1.0)
        sim.set_cpu_usage(calm)
        # several balance cycles later: nothing moved; the plans saw no imbalance worth a move
        time.sleep(6)
        assert svc.migrations() == [], [m.vm for m in svc.migrations()]
        plans = svc.plans(limit=10)
        assert plans and all(not p.executed for p in plans)
        # a sustained rise: the p95 of the window follows it and a VM leaves the hot host
        sim.set_cpu_usage(hot)
        moved = wait_for(
            "a balancing move off h1",
            lambda: [m for m in svc.migrations() if m.source == "h1" and m.reason == "balance"],
            timeout_s=40,
        )
        assert moved[0].vm.startswith("vm1")
    finally:
        rt.begin_stop("test")
        rt.drain()
        rt.close()
