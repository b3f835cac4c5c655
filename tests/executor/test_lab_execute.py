"""The executor on the libvirt lab: a plan of 6 live migrations of busy guests across the 3 lab
hosts with concurrency 2; every guest keeps counting across its moves, and the audit trail holds
libvirt's own job figures."""

from __future__ import annotations

import contextlib
import itertools
import time
from pathlib import Path

import pytest

from balancer.errors import LabError
from balancer.executor import Executor, ExecutorConfig, Result
from balancer.lab import Lab
from balancer.lab.bootsector import GuestKind
from balancer.lab.testing import lab_fixture
from balancer.sim.clock import RealClock
from balancer.storage import Store
from balancer.storage.audit import AuditQuery
from tests.executor.helpers import assert_limits, assert_one_outcome_each, make_plan, max_overlap

pytestmark = pytest.mark.lab

lab = lab_fixture()

GUESTS = ("exec-busy-1", "exec-busy-2", "exec-busy-3")


@pytest.mark.timeout(300)
def test_plan_of_busy_guests_runs_live_on_the_lab(lab: Lab, tmp_path: Path) -> None:
    hosts = lab.host_names()[:3]
    for i, name in enumerate(GUESTS):
        lab.define_vm(name, hosts[i], GuestKind.BUSY)
    backend = lab.backend()
    store = Store.open(f"sqlite:///{tmp_path / 'b.db'}")
    try:
        for name in GUESTS:
            lab.wait_counter_running(name, timeout_s=90)
        # each guest moves twice: to the next host, then to the one after
        moves = []
        for i, name in enumerate(GUESTS):
            a, b, c = hosts[i], hosts[(i + 1) % 3], hosts[(i + 2) % 3]
            moves += [(name, a, b, 0), (name, b, c, 1)]
        clock = RealClock()
        cfg = ExecutorConfig(
            concurrent_per_host=2,
            concurrent_total=2,
            poll_interval_s=0.1,
            stall_timeout_s=60,
            time_limit_s=240,
        )
        ex = Executor(backend, store, clock=clock, config=cfg)
        samples: dict[str, list[int]] = {n: [lab.read_counter(n)] for n in GUESTS}
        sub = ex.submit_plan(make_plan(moves))
        assert sub.superseded is None
        deadline = time.monotonic() + 240
        last_sample = 0.0
        while not ex.idle:
            assert time.monotonic() < deadline, ex.status()
            ex.tick()
            if time.monotonic() - last_sample > 0.5:
                last_sample = time.monotonic()
                for n in GUESTS:
                    with contextlib.suppress(LabError):  # mid switch-over: on two hosts
                        samples[n].append(lab.read_counter(n))
            clock.sleep(cfg.poll_interval_s)
        results = ex.results(sub.request_ids)
        assert [r.result for r in results] == [Result.SUCCEEDED] * 6, results

        for i, name in enumerate(GUESTS):
            assert lab.where(name) == [hosts[(i + 2) % 3]]
            final = lab.read_counter(name)
            seen = [*samples[name], final]
            # the guest kept running: its counter only ever went up, and did go up
            assert all(b >= a for a, b in itertools.pairwise(seen)), seen
            assert final > samples[name][0]

        ivs = assert_limits(store, hosts, per_host=2, total=2)
        assert max_overlap(ivs) == 2
        assert_one_outcome_each(store)
        # the audit trail holds libvirt's job figures, the same the backend reports
        rows = {r.id: r for r in store.requests()}
        for rec in store.audit(AuditQuery(kind="outcome")):
            assert rec.request_id is not None
            job = rows[rec.request_id].job_id
            assert job is not None
            p = backend.progress(job)
            assert rec.duration_s is not None and rec.duration_s > 0
            assert rec.downtime_ms is not None and rec.downtime_ms > 0
            assert rec.data_copied_mib is not None and rec.data_copied_mib > 0
            assert rec.downtime_ms == pytest.approx(p.downtime_ms, abs=1e-3)
            assert rec.duration_s == pytest.approx(p.elapsed_s, abs=1e-3)
            assert {"time_elapsed", "downtime"} <= set(backend.job_record(job).libvirt_stats)
        store.verify()
    finally:
        store.close()
        backend.close()
        for name in GUESTS:
            with contextlib.suppress(LabError):
                lab.remove_vm(name)
