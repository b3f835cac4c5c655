"""The kill test: the balancer is SIGKILLed at random points during a plan of many migrations,
many times, and restarted each time. The simulated hypervisors keep their state in a file that
this test owns (they outlive the balancer, in-flight migrations finish by the real clock).

After every kill: every VM runs on exactly one host, no request has more than one outcome and
the audit chain verifies. At the end: the journal and the hypervisors agree, every requested
migration has exactly one final outcome (all succeeded: nothing lost), no migration was done
twice, and ``audit verify`` passes.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

from balancer.port import JobState
from balancer.sim.clock import RealClock
from balancer.sim.cluster import SimulatedCluster
from balancer.snapshot_io import dump_snapshot
from balancer.storage import Store
from balancer.storage.audit import AuditQuery
from balancer.storage.journal import IN_FLIGHT_STATES
from tests.executor.helpers import assert_journal_matches_cluster, assert_one_outcome_each
from tests.factories import make_host, make_snapshot, make_vm

ROOT = Path(__file__).resolve().parents[2]
SEED = int(os.environ.get("BALANCER_KILL_SEED", "20261127"))
KILLS = 15


def _cluster() -> tuple[object, list[dict[str, object]]]:
    hosts = [make_host(f"h{i}", memory_mib=65536) for i in range(4)]
    vms = [
        make_vm(f"vm{i:02d}", f"h{i % 4}", memory_mib=512, dirty_rate_mib_s=0.0) for i in range(32)
    ]
    moves: list[dict[str, object]] = []
    for i, v in enumerate(vms):
        src = int(v.host[1:])
        dst = (src + 1 + i % 3) % 4
        moves.append(
            {"vm": v.name, "source": v.host, "target": f"h{dst}", "step": 0, "reason": "balance"}
        )
        if i % 4 == 0:  # a second move of some VMs, after the first step
            moves.append(
                {
                    "vm": v.name,
                    "source": f"h{dst}",
                    "target": f"h{(dst + 1) % 4}",
                    "step": 1,
                    "reason": "rule:spread",
                }
            )
    return make_snapshot(hosts, vms), moves


def _check_any_time(db: str, state: Path, snap: object) -> None:
    sim = SimulatedCluster(snap, clock=RealClock(), state_path=state)  # type: ignore[arg-type]
    names = [v.name for v in sim.snapshot().vms]
    assert len(names) == len(set(names)) == 32
    for n in names:
        assert sim.locate(n) is not None
    store = Store.open(db)
    try:
        store.verify()
        outcomes = Counter(r.request_id for r in store.audit(AuditQuery(kind="outcome")))
        assert all(c == 1 for c in outcomes.values()), outcomes
        for r in store.requests():
            assert outcomes[r.id] == (1 if r.final else 0), (r.id, r.state)
    finally:
        store.close()


def _events(db: str) -> int:
    """How many journal events there are (0 before the first start made the database)."""
    if not Path(db.removeprefix("sqlite:///")).exists():
        return 0
    store = Store.open(db)
    try:
        return len(store.events())
    finally:
        store.close()


def _wait_for_work(db: str, p: subprocess.Popen[bytes], seen: int) -> None:
    """Until this start has journalled something and a migration is in flight (or it ended)."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and p.poll() is None:
        if _events(db) > seen and _in_flight(db):
            return
        time.sleep(0.02)  # polling a condition, with a deadline
    assert p.poll() is not None or time.monotonic() < deadline, "no progress in 60 s"


def _in_flight(db: str) -> bool:
    store = Store.open(db)
    try:
        return bool(store.requests(states=IN_FLIGHT_STATES))
    finally:
        store.close()


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_sigkill_at_random_points_loses_nothing_and_does_nothing_twice(tmp_path: Path) -> None:
    snap, moves = _cluster()
    snap_file, plan_file, state = (
        tmp_path / "snap.json",
        tmp_path / "plan.json",
        tmp_path / "hv.json",
    )
    db = f"sqlite:///{tmp_path / 'balancer.db'}"
    dump_snapshot(snap, snap_file)  # type: ignore[arg-type]
    plan_file.write_text(json.dumps({"status": "moves", "moves": moves}))
    # the hypervisors: their state lives in a file owned by this test
    SimulatedCluster(snap, clock=RealClock(), state_path=state)  # type: ignore[arg-type]
    cmd = [
        sys.executable, "-m", "balancer.executor",
        "--snapshot", str(snap_file), "--plan", str(plan_file), "--db", db,
        "--state", str(state), "--per-host", "2", "--total", "4", "--poll", "0.1",
    ]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    rng = random.Random(SEED)
    seen = 0
    kills = 0
    procs: list[subprocess.Popen[bytes]] = []
    try:
        for _ in range(KILLS):
            p = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                                 stderr=subprocess.PIPE)  # fmt: skip
            procs.append(p)
            try:
                # a random point in the work of this start, not in its start-up: how long
                # Python takes to import depends on the machine's load, and kills that all
                # landed before the first migration tested nothing (seen at load 7: 15 kills,
                # no recovery)
                _wait_for_work(db, p, seen)
                p.wait(timeout=rng.uniform(0.0, 0.8))
            except subprocess.TimeoutExpired:
                p.send_signal(signal.SIGKILL)
                p.wait(timeout=10)
                kills += 1
            else:
                err = p.stderr.read().decode() if p.stderr else ""
                assert p.returncode == 0, err
                break
            _check_any_time(db, state, snap)
            seen = _events(db)
        # the last start runs to the end
        deadline = time.monotonic() + 90
        final = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, timeout=90, check=False)
        assert time.monotonic() < deadline
        assert final.returncode == 0, final.stderr.decode()
        out = json.loads(final.stdout)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait(timeout=10)
    assert kills >= 10, f"only {kills} kills landed during the plan"
    assert len(out) == len(moves)
    assert {o["outcome"] for o in out} == {"succeeded"}

    sim = SimulatedCluster(snap, clock=RealClock(), state_path=state)  # type: ignore[arg-type]
    store = Store.open(db)
    try:
        assert_one_outcome_each(store)
        assert_journal_matches_cluster(store, snap, sim)  # type: ignore[arg-type]
        reqs = store.requests()
        assert len(reqs) == len(moves)
        # nothing done twice: one succeeded job on the hypervisors per succeeded request
        done_jobs = Counter(
            (j.vm, j.source, j.target) for j in sim.jobs() if j.state is JobState.SUCCEEDED
        )
        done_reqs = Counter((r.vm, r.source, r.target) for r in reqs if r.state == "succeeded")
        assert done_jobs == done_reqs
        assert not [j for j in sim.jobs() if j.state is JobState.RUNNING]
        # the kills did land while migrations were in flight: recovery followed them
        recovered = Counter(
            e.event
            for e in store.events()
            if e.event == "recovered" or e.detail.startswith("recovered")
        )
        print(f"kills={kills} recovery events={dict(recovered)}")
        assert sum(recovered.values()) >= 3
    finally:
        store.close()
    # and the command line agrees
    res = subprocess.run(
        [sys.executable, "-m", "balancer", "audit", "verify", "--db", db],
        cwd=ROOT, env=env, capture_output=True, timeout=60, check=False,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr.decode()
