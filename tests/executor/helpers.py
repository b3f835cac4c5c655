"""Helpers for the executor tests: plans, executors on the simulated cluster, journal checks."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime

from balancer.executor import Executor, ExecutorConfig
from balancer.model import Snapshot
from balancer.plan import Metrics, Move, MoveReason, Plan, PlanStatus
from balancer.sim.clock import ManualClock
from balancer.sim.cluster import SimulatedCluster
from balancer.storage import FINAL_STATES, Store
from balancer.storage.audit import AuditQuery
from policies.model import Policy

ZERO = Metrics(imbalance=0, cpu_stddev=0, memory_stddev=0, max_cpu_load=0, max_memory_load=0)


def make_plan(
    moves: Iterable[tuple[str, str, str] | tuple[str, str, str, int]], **kw: object
) -> Plan:
    out = []
    for m in moves:
        vm, src, dst = m[0], m[1], m[2]
        step = m[3] if len(m) > 3 else 0  # type: ignore[misc]
        out.append(
            Move(vm=vm, source=src, target=dst, step=int(step), reason=MoveReason.BALANCE, gain=0.1)
        )
    return Plan(
        status=PlanStatus.MOVES,
        moves=tuple(out),
        blocked=(),
        before=ZERO,
        after=ZERO,
        **kw,  # type: ignore[arg-type]
    )


@dataclass
class Rig:
    clock: ManualClock
    sim: SimulatedCluster
    store: Store
    ex: Executor


def rig(
    snap: Snapshot,
    url: str,
    *,
    policy: Policy | None = None,
    clock: ManualClock | None = None,
    sim: SimulatedCluster | None = None,
    **cfg: object,
) -> Rig:
    clock = clock or ManualClock()
    sim = sim or SimulatedCluster(snap, clock=clock)
    store = Store.open(url)
    config = ExecutorConfig(**{"poll_interval_s": 0.5, **cfg})  # type: ignore[arg-type]
    return Rig(clock, sim, store, Executor(sim, store, clock=clock, config=config, policy=policy))


@dataclass(frozen=True)
class Interval:
    request_id: int
    vm: str
    source: str
    target: str
    start: datetime
    end: datetime


def intervals(store: Store) -> list[Interval]:
    """Each attempt in flight, from its ``starting`` event to the event that ended it."""
    out: list[Interval] = []
    open_: dict[int, tuple[datetime, str, str]] = {}
    vms = {r.id: r.vm for r in store.requests()}
    for e in store.events():
        if e.event == "starting":
            open_[e.request_id] = (e.at, e.source or "", e.target or "")
        elif e.event in (*FINAL_STATES, "retrying", "requeued") and e.request_id in open_:
            start, src, dst = open_.pop(e.request_id)
            out.append(Interval(e.request_id, vms[e.request_id], src, dst, start, e.at))
    assert not open_, f"attempts never ended: {sorted(open_)}"
    return out


def max_overlap(ivs: Sequence[Interval], host: str | None = None) -> int:
    """The most intervals in flight at once (half-open [start, end)), touching ``host``."""
    points: list[tuple[datetime, int]] = []
    for iv in ivs:
        if host is None or host in (iv.source, iv.target):
            points.append((iv.start, 1))
            points.append((iv.end, -1))
    best = cur = 0
    for _, d in sorted(points, key=lambda p: (p[0], p[1])):  # ends before starts at one time
        cur += d
        best = max(best, cur)
    return best


def assert_limits(store: Store, hosts: Iterable[str], per_host: int, total: int) -> list[Interval]:
    ivs = intervals(store)
    assert max_overlap(ivs) <= total
    for h in hosts:
        assert max_overlap(ivs, h) <= per_host, h
    return ivs


def assert_one_outcome_each(store: Store) -> None:
    reqs = store.requests()
    assert all(r.state in FINAL_STATES for r in reqs), [(r.id, r.state) for r in reqs]
    counts = Counter(r.request_id for r in store.audit(AuditQuery(kind="outcome")))
    assert {r.id: counts[r.id] for r in reqs} == {r.id: 1 for r in reqs}
    store.verify()


def assert_journal_matches_cluster(store: Store, initial: Snapshot, sim: SimulatedCluster) -> None:
    """Replaying the succeeded moves of the journal from the initial placement gives the place
    where the hypervisors run every VM; and every VM runs on exactly one host."""
    snap = sim.snapshot()
    names = [v.name for v in snap.vms]
    assert len(names) == len(set(names)) == len(initial.vms)
    where = initial.placement()
    done = [r for r in store.requests() if r.state == "succeeded"]
    for r in sorted(done, key=lambda r: (r.ended_at, r.id)):
        assert where[r.vm] == r.source, (r.id, r.vm, where[r.vm], r.source)
        where[r.vm] = r.target
    assert where == snap.placement()
    for vm, host in where.items():
        assert sim.locate(vm) == host


def start_order(store: Store) -> list[int]:
    return [e.request_id for e in store.events() if e.event == "starting"]
