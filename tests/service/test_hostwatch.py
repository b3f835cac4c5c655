"""The host health evaluator (pure): each signal and its threshold, sustained pressure timed by
the samples, rising hardware counters, the release after the healthy period, and the cap."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta

from balancer.service.hostwatch import (
    Demand,
    HardwarePoint,
    HostCondition,
    HostFacts,
    HostInfo,
    HostWatch,
    PressurePoint,
    Raised,
    Signal,
    decide,
    signals,
)
from policies.model import Health, PsiThresholds

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
HEALTH = Health(enabled=True)


def at(minutes: float) -> datetime:
    return T0 + timedelta(minutes=minutes)


def kinds(raised: tuple[Raised, ...]) -> list[Signal]:
    return [r.signal for r in raised]


def test_connection_failures_count_within_the_window() -> None:
    facts = HostFacts(connection_failures=(at(0), at(1)))
    assert signals(facts, HEALTH, now=at(2)) == ()
    facts = HostFacts(connection_failures=(at(0), at(1), at(2)))
    (r,) = signals(facts, HEALTH, now=at(3))
    assert r.signal is Signal.CONNECTION_FAILURES and r.since == at(2)
    assert r.detail == "3 failed collects in 10 min (limit 3)"
    # the window passes: the oldest failure no longer counts
    assert signals(facts, HEALTH, now=at(10.5)) == ()


def test_migration_failures_use_their_own_limit() -> None:
    facts = HostFacts(migration_failures=(at(0), at(1)))
    assert signals(facts, HEALTH, now=at(2)) == ()
    two = replace(HEALTH, migration_failures=2)
    (r,) = signals(facts, two, now=at(2))
    assert r.signal is Signal.MIGRATION_FAILURES and "2 failed migrations" in r.detail


def _pressure(minutes: list[float], *, cpu: float = 0, memory: float = 0) -> HostFacts:
    return HostFacts(
        pressure=tuple(PressurePoint(at=at(m), cpu=cpu, memory=memory, io=None) for m in minutes)
    )


def test_pressure_must_be_sustained_in_every_sample() -> None:
    every_20s = [i / 3 for i in range(16)]  # 0 .. 5 min
    high = _pressure(every_20s, memory=55)
    (r,) = signals(high, HEALTH, now=at(5.1))
    assert r.signal is Signal.PRESSURE and r.since == at(5)
    assert r.detail == "memory some avg60 >= 55 % for 5.0 min (limit 40 % for 5 min)"
    # not yet five minutes
    assert signals(_pressure(every_20s[:-1], memory=55), HEALTH, now=at(5.1)) == ()
    # one low sample in between restarts the run
    dip = HostFacts(
        pressure=(*high.pressure[:5], PressurePoint(at=at(1.7), memory=10), *high.pressure[6:])
    )
    assert signals(dip, HEALTH, now=at(5.1)) == ()
    # below its threshold (cpu 80) a resource is no signal; an unwatched resource neither
    assert signals(_pressure(every_20s, cpu=79), HEALTH, now=at(5.1)) == ()
    off = replace(HEALTH, psi_some_avg60=PsiThresholds(cpu=None, memory=None, io=None))
    assert signals(high, off, now=at(5.1)) == ()
    # the agent stopped: samples older than the window are no evidence now
    assert signals(high, HEALTH, now=at(16)) == ()


def test_a_rising_hardware_counter_is_a_signal_a_reset_is_not() -> None:
    def hw(*values: tuple[float, dict[str, int]]) -> HostFacts:
        return HostFacts(hardware=tuple(HardwarePoint(at=at(m), counters=c) for m, c in values))

    steady = hw((0, {"edac_corrected": 4, "mce": 0}), (1, {"edac_corrected": 4, "mce": 0}))
    assert signals(steady, HEALTH, now=at(2)) == ()
    rising = hw((0, {"edac_corrected": 4}), (1, {"edac_corrected": 6}), (2, {"edac_corrected": 7}))
    (r,) = signals(rising, HEALTH, now=at(3))
    assert r.signal is Signal.HARDWARE_ERRORS and r.since == at(1)
    assert r.detail == "edac_corrected rose 4 -> 7"
    assert signals(rising, replace(HEALTH, hardware_errors=False), now=at(3)) == ()
    # a counter that went down (a reboot) is no rise; a rise older than the window expires
    assert signals(hw((0, {"mce": 9}), (1, {"mce": 0})), HEALTH, now=at(2)) == ()
    assert signals(rising, HEALTH, now=at(12.5)) == ()


def test_signals_come_in_their_order() -> None:
    facts = HostFacts(
        connection_failures=(at(0), at(1), at(2)),
        migration_failures=(at(0), at(1), at(2)),
    )
    assert kinds(signals(facts, HEALTH, now=at(3))) == [
        Signal.CONNECTION_FAILURES,
        Signal.MIGRATION_FAILURES,
    ]


def _raised(minute: float) -> tuple[Raised, ...]:
    return (Raised(signal=Signal.CONNECTION_FAILURES, since=at(minute), detail="x"),)


def host(
    name: str,
    *,
    raised: tuple[Raised, ...] = (),
    condition: HostCondition = HostCondition.ACTIVE,
    unhealthy_at: datetime | None = None,
) -> HostInfo:
    return HostInfo(
        name=name,
        condition=condition,
        raised=raised,
        unhealthy_at=unhealthy_at,
        cpu_cores=10.0,
        memory_mib=1000.0,
        accepts_vms=condition is HostCondition.ACTIVE,
    )


SMALL = Demand(cpu_cores=5.0, memory_mib=500.0)


def test_decide_quarantines_the_oldest_signal_first_and_the_cap_holds_the_rest() -> None:
    hosts = [host("h1"), host("h2", raised=_raised(2)), host("h3", raised=_raised(1))]
    v = decide(hosts, SMALL, HEALTH, now=at(3))
    assert [q.host for q in v.quarantine] == ["h3"]
    assert [(h.host, h.why) for h in v.held] == [
        ("h2", "at most 1 host quarantined by the service at a time (1 already)")
    ]
    assert "connection_failures: x" in v.quarantine[0].reason()
    two = decide(hosts, SMALL, replace(HEALTH, max_quarantined=2), now=at(3))
    assert [q.host for q in two.quarantine] == ["h3", "h2"]
    # one quarantined by the service already counts against the cap
    taken = [host("h0", condition=HostCondition.QUARANTINED_BY_HEALTH, raised=_raised(0)), *hosts]
    assert not decide(taken, SMALL, HEALTH, now=at(3)).quarantine
    assert decide(hosts, SMALL, replace(HEALTH, enabled=False), now=at(3)) == decide(
        [], SMALL, HEALTH, now=at(3)
    )


def test_decide_never_leaves_too_little_room_and_skips_maintenance_and_operator_quarantine() -> (
    None
):
    hosts = [host("h1", raised=_raised(1)), host("h2")]
    big = Demand(cpu_cores=12.0, memory_mib=500.0)
    v = decide(hosts, big, replace(HEALTH, max_quarantined=5), now=at(3))
    assert not v.quarantine
    assert v.held[0].why.startswith("the other hosts could not hold the VMs (10.0 cores")
    others = [
        host("h1", raised=_raised(1), condition=HostCondition.MAINTENANCE),
        host("h2", raised=_raised(1), condition=HostCondition.QUARANTINED),
        host("h3"),
    ]
    v = decide(others, SMALL, HEALTH, now=at(3))
    assert v.quarantine == () and v.held == () and v.release == ()


def test_release_after_the_healthy_period_or_never() -> None:
    q = HostCondition.QUARANTINED_BY_HEALTH
    hosts = [host("h1", condition=q, unhealthy_at=at(0)), host("h2")]
    assert decide(hosts, SMALL, HEALTH, now=at(29)).release == ()
    (r,) = decide(hosts, SMALL, HEALTH, now=at(30)).release
    assert r.host == "h1" and r.healthy_since == at(0)
    # still unhealthy: stays; operator only: stays; quarantined by an operator: stays
    sick = [host("h1", condition=q, unhealthy_at=at(0), raised=_raised(40))]
    assert decide(sick, SMALL, HEALTH, now=at(60)).release == ()
    manual = replace(HEALTH, release_after_healthy_minutes=None)
    assert decide(hosts, SMALL, manual, now=at(60)).release == ()
    op = [host("h1", condition=HostCondition.QUARANTINED, unhealthy_at=at(0))]
    assert decide(op, SMALL, HEALTH, now=at(60)).release == ()


def test_watch_reports_changes_once_and_forgets_facts_before_a_release() -> None:
    w = HostWatch(at(0))
    for m in (1, 2, 3):
        w.connection_failed("h1", at(m))
    raised, changes = w.evaluate(["h1", "h2"], HEALTH, now=at(3))
    assert kinds(raised["h1"]) == [Signal.CONNECTION_FAILURES] and raised["h2"] == ()
    assert [(c.host, c.signal, c.raised) for c in changes] == [
        ("h1", Signal.CONNECTION_FAILURES, True)
    ]
    assert w.evaluate(["h1", "h2"], HEALTH, now=at(4))[1] == []
    assert w.unhealthy_at("h1", at(3)) == at(4)
    held = decide(
        [host("h1", raised=raised["h1"])], Demand(cpu_cores=50, memory_mib=0), HEALTH, now=at(4)
    ).held
    assert len(w.newly_held(held)) == 1 and w.newly_held(held) == []
    # an operator released it: the failures before do not count
    w.released("h1", at(5))
    raised, changes = w.evaluate(["h1"], HEALTH, now=at(6))
    assert raised["h1"] == () and [c.raised for c in changes] == [False]
    # and the facts are kept no longer than the policy looks back
    raised, _ = w.evaluate(["h1"], HEALTH, now=at(60))
    assert w.facts("h1") == HostFacts()
