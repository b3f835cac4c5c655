"""Through the running service (in process, real scheduler and executor): a short spike on one
host moves nothing; a sustained rise does (issue 7's window and demand at work).

Time is scaled down: a 40 s window sampled every 0.5 s, so a 1 s spike is what a one-minute
spike is to an hour's window. The service runs on a manual clock that the test advances, one
collect per sample: what is measured does not depend on how busy the machine is.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import yaml

from balancer.service.runtime import Runtime
from balancer.settings import load_settings
from balancer.sim.clock import ManualClock
from balancer.sim.cluster import SimulatedCluster
from tests.factories import make_host, make_snapshot, make_vm
from tests.service.running import wait_for, write_settings

pytestmark = pytest.mark.timeout(150)

BASE_CORES = 2.0
HOT_CORES = 7.0


def _cluster(clock: ManualClock) -> SimulatedCluster:
    hosts = [make_host(f"h{i}", cpu_cores=32, memory_mib=131072) for i in (1, 2, 3)]
    vms = [
        make_vm(f"vm{h}{j}", f"h{h}", vcpus=8, cpu_used_cores=BASE_CORES, memory_mib=2048)
        for h in (1, 2, 3)
        for j in range(4)
    ]
    return SimulatedCluster(make_snapshot(hosts, vms), clock=clock, link_mib_s=20000.0)


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
    # the service's own clock, advanced by the test: each collect is one sample of the window,
    # whatever the machine's load (on a real clock a loaded machine collected less often, and
    # the two spike samples weighed more than 5 % of a thinner window)
    clock = ManualClock(datetime.now(UTC).replace(microsecond=0))
    sim = _cluster(clock)
    rt = Runtime.build(load_settings(cfg), port=sim, clock=clock)
    svc = rt.service
    hot = {f"vm1{j}": HOT_CORES for j in range(4)}
    calm = dict.fromkeys(hot, BASE_CORES)

    def collect(samples: int) -> None:
        for _ in range(samples):
            clock.advance(0.5)
            svc.collect()

    def cycle() -> None:
        """Two samples, then a balance cycle (balance_s is two collect intervals)."""
        collect(2)
        svc.balance(who="test")

    try:
        svc.start()  # no scheduler: the test drives the collects and the balance cycles
        # a balanced cluster fills the window with calm samples (40 s: 80 samples)
        for _ in range(40):
            cycle()
        assert svc.migrations() == []
        # the spike: one host's VMs jump to 7 cores for one second (2 samples), then calm down
        sim.set_cpu_usage(hot)
        collect(2)
        sim.set_cpu_usage(calm)
        # several balance cycles later: nothing moved; the plans saw no imbalance worth a move
        for _ in range(6):
            cycle()
        assert svc.migrations() == [], [m.vm for m in svc.migrations()]
        plans = svc.plans(limit=10)
        assert plans and all(not p.executed for p in plans)
        # a sustained rise: the p95 of the window follows it and a VM leaves the hot host
        sim.set_cpu_usage(hot)
        moved: list[Any] = []
        for _ in range(40):
            cycle()
            moved = [m for m in svc.migrations() if m.source == "h1" and m.reason == "balance"]
            if moved:
                break
        assert moved, "no balancing move off h1 within 40 cycles of a sustained rise"
        assert moved[0].vm.startswith("vm1")
        # let the migrations end (they progress on the manual clock)
        wait_for(
            "the migrations to end",
            lambda: (clock.advance(1.0), not svc.migrations(active_only=True))[1],
            timeout_s=60,
            every_s=0.05,
        )
    finally:
        rt.begin_stop("test")
        rt.drain()
        rt.close()
