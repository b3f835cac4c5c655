"""Failover with real service processes: the leader killed, paused past its lease, and the
database restarted, each in the middle of an evacuation (PostgreSQL + simulated cluster)."""

from __future__ import annotations

import signal
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
import sqlalchemy as sa

from balancer.errors import FencedError
from balancer.storage import Fence, NewRequest, Store
from tests.ha.checks import check_outcomes, evacuate, placement
from tests.ha.harness import Deployment, Instance, Postgres, postgres, wait_for

pytestmark = [pytest.mark.postgres, pytest.mark.timeout(240)]

LEASE_S = 2.0


@pytest.fixture
def pair(ha_postgres: Postgres, tmp_path: Path) -> Iterator[Deployment]:
    d = Deployment(
        tmp_path, ha_postgres.create_database(), instances=2, lease_s=LEASE_S, link_mib_s=4000.0
    )
    try:
        d.start()
        yield d
    finally:
        d.close()


def _evacuate(d: Deployment, via: Instance, min_vms: int = 4) -> tuple[str, list[str]]:
    """Put the host with the most VMs that can all leave into maintenance."""
    return evacuate(d, via, min_vms=min_vms)


def _running(d: Deployment) -> int:
    return sum(j["state"] == "running" for j in d.sim_state()["jobs"])


def _succeeded(d: Deployment) -> int:
    return sum(j["state"] == "succeeded" for j in d.sim_state()["jobs"])


def _wait_evacuated(d: Deployment, host: str, timeout_s: float = 120.0) -> None:
    def done() -> bool:
        try:
            leader = d.leader_of(timeout_s=5)
            view = leader.get(f"/maintenance/{host}")
        except (AssertionError, Exception):
            return False
        return bool(view["state"] == "maintenance")

    wait_for(
        done,
        timeout_s,
        f"{host} evacuated",
        interval_s=0.5,
        logs=lambda: "\n".join(i.log_text()[-2500:] for i in d.instances),
    )


def test_leader_killed_during_evacuation_standby_finishes_it(pair: Deployment) -> None:
    d = pair
    leader = d.leader_of()
    standby = next(i for i in d.instances if i is not leader)
    # the request goes to the standby, which takes it into the shared database
    host, vms = _evacuate(d, via=standby)
    wait_for(lambda: _succeeded(d) >= 1 and _running(d) >= 1, 60, "evacuation under way")
    leader.kill()
    t_kill = time.monotonic()
    new = d.leader_of(timeout_s=LEASE_S * 5)
    assert new is standby
    took = time.monotonic() - t_kill
    assert took < LEASE_S * 4, f"takeover took {took:.1f} s"
    _wait_evacuated(d, host)
    where = placement(d)
    assert all(where[v] != host for v in vms), "a VM was left on the host in maintenance"
    figures = check_outcomes(d)
    assert figures["succeeded"] >= len(vms)
    assert len(figures["epochs"]) >= 2, figures  # both leaders wrote to the journal
    assert "recovered" in standby.log_text() or figures["epochs"][-1] > 1


def test_paused_leader_is_fenced_and_steps_down(pair: Deployment) -> None:
    d = pair
    leader = d.leader_of()
    standby = next(i for i in d.instances if i is not leader)
    host, vms = _evacuate(d, via=leader)
    wait_for(lambda: _running(d) >= 1, 60, "migrations in flight")
    old_epoch = int(leader.get("/status")["clusters"][0]["epoch"])
    leader.signal(signal.SIGSTOP)
    try:
        new = d.leader_of(timeout_s=LEASE_S * 5)
        assert new is standby
        time.sleep(LEASE_S)  # the successor is at work while the old leader sleeps
    finally:
        leader.signal(signal.SIGCONT)
    # the old leader wakes up believing nothing; it must find out and step down
    wait_for(
        lambda: "stepped down from epoch" in leader.log_text(),
        LEASE_S * 5,
        "the old leader steps down",
        logs=leader.log_text,
    )
    assert leader.roles() == {"default": False}
    # the database refuses a write carrying the old epoch (what the old leader's next
    # journal write carries)
    store = Store.open(d.url_of("default"))
    try:
        with pytest.raises(FencedError):
            store.fenced(Fence(cluster="default", epoch=old_epoch)).add_request(
                NewRequest(
                    vm=vms[0],
                    source=host,
                    target=host,
                    priority=10,
                    priority_class="manual_low",
                    who="zombie",
                    reason="manual",
                ),
                at=datetime.now(UTC),
            )
    finally:
        store.close()
    # nothing of the old epoch reached the journal after the successor took over
    since = datetime.fromisoformat(new.get("/status")["clusters"][0]["since"])
    store = Store.open(d.url_of("default"))
    try:
        with store.engine.connect() as conn:
            late = conn.execute(
                sa.text("SELECT count(*) FROM journal WHERE epoch = :e AND at > :t"),
                {"e": old_epoch, "t": since},
            ).scalar_one()
    finally:
        store.close()
    assert late == 0
    _wait_evacuated(d, host)
    figures = check_outcomes(d)  # includes: no migration started twice
    assert max(figures["epochs"]) > old_epoch
    # the old leader, a standby now, serves a fresh read API (it reads the hypervisors)
    wait_for(
        lambda: {v["name"]: v["host"] for v in leader.get("/status")["vms"]} == placement(d),
        10,
        "the standby's view follows the cluster",
    )
    # when the old leader's executor ticked before its election thread noticed, its writes
    # were refused by the database (logged); otherwise it stepped down before trying
    log_text = leader.log_text()
    print(f"old leader's refused writes: {log_text.count('write refused')}; figures {figures}")


def test_postgres_restart_under_load(tmp_path: Path) -> None:
    with postgres() as pg:
        d = Deployment(
            tmp_path, pg.create_database(), instances=2, lease_s=LEASE_S, link_mib_s=4000.0
        )
        try:
            d.start()
            leader = d.leader_of()
            host, vms = _evacuate(d, via=leader)
            wait_for(lambda: _running(d) >= 1, 60, "migrations in flight")
            pg.stop("fast")  # every connection is cut
            time.sleep(LEASE_S * 1.5)
            assert d.leaders()["default"] == [], "a leader without its database"
            pg.start()  # same port
            _wait_evacuated(d, host, timeout_s=150)
            assert all(placement(d)[v] != host for v in vms)
            figures = check_outcomes(d)
            assert len(figures["epochs"]) >= 2  # leadership was taken again, a new epoch
            assert all(i.alive for i in d.instances)
        finally:
            d.close()
