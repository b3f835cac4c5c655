"""Rolling maintenance through the service (issue 13): four hosts, two at a time, each batch
waiting for its gate, across a restart of the service on the same database.

The service runs on a manual clock on a simulated cluster; the test drives the ticks itself
(each ``collect`` is one maintenance tick), and waits on conditions counted in ticks.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path

import pytest

from balancer.api.app import status_of
from balancer.errors import BalancerError, InputError
from balancer.service.ports import AuditFilter
from balancer.service.rolling import Gate, HostStep, RollingState
from balancer.service.runtime import Runtime
from balancer.service.views import RollingView
from balancer.settings import load_settings
from balancer.sim.clock import ManualClock
from balancer.sim.cluster import SimulatedCluster
from tests.factories import make_host, make_snapshot, make_vm
from tests.service.running import TOKENS, write_settings

pytestmark = pytest.mark.timeout(300)

HOSTS = ["h1", "h2", "h3", "h4"]


def cluster(clock: ManualClock) -> SimulatedCluster:
    """Four hosts with three small VMs each: any two hosts hold them all."""
    hosts = [make_host(h, cpu_cores=32, memory_mib=65536) for h in HOSTS]
    vms = [
        make_vm(f"vm{i}{j}", h, memory_mib=4096, cpu_used_cores=0.5)
        for i, h in enumerate(HOSTS, 1)
        for j in range(3)
    ]
    return SimulatedCluster(make_snapshot(hosts, vms), clock=clock, link_mib_s=20000.0)


def settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    for user, token in TOKENS.items():
        monkeypatch.setenv(f"TEST_TOKEN_{user.upper()}", token)
    return write_settings(
        tmp_path,
        policy={"automation": "partial", "threshold": 1, "exclude": []},
        intervals={"collect_s": 0.5, "balance_s": 1.0, "policy_reload_s": 5},
    )


@contextmanager
def service(cfg: Path, sim: SimulatedCluster, clock: ManualClock) -> Iterator[Runtime]:
    """A runtime on ``sim`` without its scheduler: the test drives the ticks."""
    rt = Runtime.build(load_settings(cfg), port=sim, clock=clock)
    try:
        rt.service.start()
        yield rt
    finally:
        # the first signal's path: no new work, the migrations in flight finish (they move
        # on the manual clock, so the clock is advanced until the executor is idle)
        rt.begin_stop("test")
        for _ in range(400):
            clock.advance(0.5)
            if rt.executor.wait_idle(0.05):
                break
        rt.close()


def tick(rt: Runtime, clock: ManualClock) -> None:
    clock.advance(0.5)
    rt.service.collect()


def ticks_until(
    rt: Runtime,
    clock: ManualClock,
    what: str,
    done: Callable[[RollingView], bool],
    rid: int,
    limit: int = 400,
) -> RollingView:
    view = rt.service.rolling.view(rid)
    for _ in range(limit):
        if done(view):
            return view
        tick(rt, clock)
        view = rt.service.rolling.view(rid)
    raise AssertionError(f"{what}: not within {limit} ticks; last {view}")


def steps(view: RollingView) -> dict[str, str]:
    return {h.host: h.state for h in view.hosts}


def awaiting(*hosts: str) -> Callable[[RollingView], bool]:
    return lambda v: all(steps(v)[h] == HostStep.AWAITING_GATE for h in hosts)


def placement(sim: SimulatedCluster) -> dict[str, str]:
    return sim.snapshot().placement()


def test_four_hosts_two_at_a_time_with_an_operator_gate_survive_a_restart(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cfg = settings(tmp_path, monkeypatch)
    clock = ManualClock(datetime.now(UTC).replace(microsecond=0))
    sim = cluster(clock)
    vms = set(placement(sim))
    with service(cfg, sim, clock) as rt:
        started = rt.service.rolling.start(HOSTS, at_a_time=2, gate=Gate(), who="bob")
        rid = started.id
        assert started.state == RollingState.RUNNING and started.current_batch == 0
        assert steps(started) == {
            "h1": "evacuating",
            "h2": "evacuating",
            "h3": "waiting",
            "h4": "waiting",
        }
        first = ticks_until(rt, clock, "h1 and h2 empty", awaiting("h1", "h2"), rid)
        assert {h.host: h.blocker for h in first.hosts}["h1"] == (
            "waiting for an operator's continue"
        )
        on = placement(sim)
        assert not {vm for vm, h in on.items() if h in ("h1", "h2")}
        # the gate holds: ticks change nothing
        for _ in range(3):
            tick(rt, clock)
        assert steps(rt.service.rolling.view(rid))["h3"] == "waiting"
        # the operator's continue: h1 and h2 exit, the second batch starts
        after = rt.service.rolling.continue_(rid, who="alice")
        assert steps(after) == {
            "h1": "done",
            "h2": "done",
            "h3": "evacuating",
            "h4": "evacuating",
        }
        assert after.current_batch == 1
        assert {h.name: h.state.value for h in rt.service.snapshot().hosts}["h1"] == "active"
    # the service stops mid-way; a new one on the same database resumes where it was
    with service(cfg, sim, clock) as rt:
        resumed = rt.service.rolling.view(rid)
        assert steps(resumed)["h1"] == "done" and steps(resumed)["h3"] in (
            "evacuating",
            "awaiting_gate",
        )
        ticks_until(rt, clock, "h3 and h4 empty", awaiting("h3", "h4"), rid)
        done = rt.service.rolling.continue_(rid, who="alice")
        assert done.state == RollingState.DONE and done.finished_at is not None
        assert set(steps(done).values()) == {"done"}
        hosts = {h.name: h.state.value for h in rt.service.snapshot().hosts}
        assert hosts == dict.fromkeys(HOSTS, "active")
        assert set(placement(sim)) == vms  # no VM lost
        audited = [
            a.result for a in rt.service.audit_records(AuditFilter(kind="maintenance", limit=500))
        ]
        for result in ("rolling_started", "rolling_batch", "rolling_evacuated", "rolling_done"):
            assert result in audited, audited
        assert audited.count("rolling_host_done") == 4


@pytest.mark.parametrize("kind", ["file", "command"])
def test_a_file_or_command_gate_opens_by_itself(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, kind: str
) -> None:
    cfg = settings(tmp_path, monkeypatch)
    clock = ManualClock(datetime.now(UTC).replace(microsecond=0))
    sim = cluster(clock)
    flag = tmp_path / "ok-h2"
    if kind == "file":
        gate = Gate.make(until_file=str(flag), until_command=None, timeout_s=None)
        blocker = f"waiting for the file {flag}"
    else:
        # `test -e PATH` exits 1 until the file exists; run as a word list, never by a shell
        gate = Gate.make(
            until_file=None, until_command=f"test -e {tmp_path}/ok-{{host}}", timeout_s=10
        )
        blocker = "the gate command exited 1"
    with service(cfg, sim, clock) as rt:
        rid = rt.service.rolling.start(["h2"], at_a_time=1, gate=gate, who="bob").id
        v = ticks_until(rt, clock, "h2 empty", awaiting("h2"), rid)
        assert v.hosts[0].blocker == blocker
        flag.write_text("")
        v = ticks_until(rt, clock, "done", lambda v: v.state == RollingState.DONE, rid, limit=2)
        assert steps(v) == {"h2": "done"}


BAD = [
    (["h1", "nope"], 1, 404, "hosts[1]: no host 'nope' in the cluster"),
    (["h1", "h2", "h1"], 1, 422, "hosts[2]: 'h1' is given twice (also hosts[0])"),
    (["h1"], 0, 422, "at_a_time: 0 is below 1"),
    ([], 1, 422, "hosts: give at least one host"),
    (["h1", "h3"], 1, 409, "hosts[1]: h3 is already entering or in maintenance"),
]


def test_bad_requests_name_the_item(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = settings(tmp_path, monkeypatch)
    clock = ManualClock(datetime.now(UTC).replace(microsecond=0))
    with service(cfg, cluster(clock), clock) as rt:
        rt.service.enter_maintenance("h3", who="bob")
        for hosts, at_a_time, status, message in BAD:
            with pytest.raises(BalancerError) as err:
                rt.service.rolling.start(hosts, at_a_time=at_a_time, gate=Gate(), who="bob")
            assert status_of(err.value) == status, (hosts, err.value)
            assert str(err.value).startswith(message), str(err.value)
        assert rt.service.rolling.views() == []
        for bad in (
            {"until_file": "f", "until_command": "true"},
            {"until_file": None, "until_command": "'unclosed"},
            {"until_file": None, "until_command": "  "},
        ):
            with pytest.raises(InputError, match=r"^until_command: "):
                Gate.make(**bad, timeout_s=None)
        with pytest.raises(InputError, match=r"^gate_timeout_s: "):
            Gate.make(until_file=None, until_command="true", timeout_s=0)
