"""Breaker changes (pure): each breaker on its own, in the order it happened."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from balancer.service.decisions import BreakerReason, Breakers, breakers
from balancer.service.health import BreakerWatch

T0 = datetime(2026, 1, 5, 8, 0, tzinfo=UTC)


def _brk(now: datetime, *, last_collect: datetime, failures: list[datetime]) -> Breakers:
    return breakers(
        now=now,
        pause=None,
        last_collect=last_collect,
        stale_after=timedelta(seconds=60),
        stale_detail=None,
        failures=failures,
        failure_limit=2,
        failure_window=timedelta(minutes=10),
        allow_mandatory=True,
    )


def test_a_stale_outage_opens_when_metrics_became_too_old_and_closes_at_the_fresh_collect() -> None:
    w = BreakerWatch()
    assert w.changes(_brk(T0, last_collect=T0, failures=[]), now=T0, last_collect=T0) == []
    later = T0 + timedelta(seconds=95)
    (opened,) = w.changes(_brk(later, last_collect=T0, failures=[]), now=later, last_collect=T0)
    assert opened.opened and opened.reason is BreakerReason.STALE_METRICS
    assert opened.at == T0 + timedelta(seconds=60)  # when the metrics became too old
    fresh = T0 + timedelta(seconds=100)
    (closed,) = w.changes(
        _brk(fresh + timedelta(seconds=1), last_collect=fresh, failures=[]),
        now=fresh + timedelta(seconds=1),
        last_collect=fresh,
    )
    assert not closed.opened and closed.at == fresh
    assert w.reported_open == frozenset()


def test_changes_seen_together_come_out_in_the_order_they_happened() -> None:
    w = BreakerWatch()
    late = T0 + timedelta(seconds=90)
    w.changes(_brk(late, last_collect=T0, failures=[]), now=late, last_collect=T0)
    assert w.reported_open == {BreakerReason.STALE_METRICS}
    # fresh metrics at +100 s, then two failures at +110 s and +120 s: one evaluation at +130 s
    fresh = T0 + timedelta(seconds=100)
    fails = [T0 + timedelta(seconds=110), T0 + timedelta(seconds=120)]
    now = T0 + timedelta(seconds=130)
    out = w.changes(_brk(now, last_collect=fresh, failures=fails), now=now, last_collect=fresh)
    assert [(c.reason, c.opened, c.at) for c in out] == [
        (BreakerReason.STALE_METRICS, False, fresh),
        (BreakerReason.MIGRATION_FAILURES, True, fails[1]),
    ]
    # nothing new: no change reported twice
    assert (
        w.changes(_brk(now, last_collect=fresh, failures=fails), now=now, last_collect=fresh) == []
    )
