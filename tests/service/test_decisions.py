"""The service's pure decisions: holds, breakers, automation, recommendation premises."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from balancer.model import HostState
from balancer.plan import Move, MoveReason
from balancer.service import decisions as D
from balancer.service.store import MoveRecord
from policies.model import Automation
from tests.factories import small_cluster

NOW = datetime(2026, 6, 1, 12, tzinfo=UTC)
COOL = timedelta(minutes=60)
DAY = timedelta(hours=24)


def _mv(vm: str, src: str, dst: str, ago_min: float, reason: str = "balance") -> MoveRecord:
    return MoveRecord(
        at=NOW - timedelta(minutes=ago_min), vm=vm, source=src, target=dst, reason=reason
    )


def test_cooldown_holds_a_vm_moved_for_balance_recently() -> None:
    h = D.holds([_mv("vm1", "h1", "h2", 10)], now=NOW, cooldown=COOL, pingpong_window=DAY)
    assert h["vm1"].reason is D.HoldReason.COOLDOWN
    assert h["vm1"].until == NOW + timedelta(minutes=50)
    # after the cooldown, or when the move was not for balance: no hold
    assert D.holds([_mv("vm1", "h1", "h2", 61)], now=NOW, cooldown=COOL, pingpong_window=DAY) == {}
    maint = [_mv("vm1", "h1", "h2", 10, reason="maintenance")]
    assert D.holds(maint, now=NOW, cooldown=COOL, pingpong_window=DAY) == {}


def test_a_to_b_to_a_within_a_day_is_held_and_reported() -> None:
    moves = [_mv("vm1", "h1", "h2", 600), _mv("vm1", "h2", "h1", 300)]
    h = D.holds(moves, now=NOW, cooldown=COOL, pingpong_window=DAY)
    assert h["vm1"].reason is D.HoldReason.PING_PONG
    assert "h1->h2" in h["vm1"].detail and "h2->h1" in h["vm1"].detail
    # a round trip longer ago than the window is forgotten
    old = [_mv("vm1", "h1", "h2", 2000), _mv("vm1", "h2", "h1", 1500)]
    assert D.holds(old, now=NOW, cooldown=COOL, pingpong_window=DAY) == {}
    # an evacuation and its move-back are what the operator asked for, not thrashing
    back = [
        _mv("vm1", "h1", "h2", 600, reason="maintenance"),
        _mv("vm1", "h2", "h1", 300, reason="manual"),
    ]
    assert D.holds(back, now=NOW, cooldown=COOL, pingpong_window=DAY) == {}
    # A -> B -> C is no ping-pong
    chain = [_mv("vm1", "h1", "h2", 600), _mv("vm1", "h2", "h3", 300)]
    assert D.holds(chain, now=NOW, cooldown=COOL, pingpong_window=DAY) == {}


def test_in_flight_vms_are_held() -> None:
    h = D.holds([], now=NOW, cooldown=COOL, pingpong_window=DAY, in_flight=["vm9"])
    assert h["vm9"].reason is D.HoldReason.IN_FLIGHT


def _brk(**kw: object) -> D.Breakers:
    args: dict[str, object] = {
        "now": NOW,
        "pause": None,
        "last_collect": NOW - timedelta(seconds=5),
        "stale_after": timedelta(seconds=60),
        "stale_detail": None,
        "failures": [],
        "failure_limit": 3,
        "failure_window": timedelta(minutes=15),
        "allow_mandatory": True,
    }
    args.update(kw)
    return D.breakers(**args)  # type: ignore[arg-type]


def test_breakers_open_on_pause_stale_metrics_and_failures() -> None:
    assert not _brk().open
    paused = _brk(pause={"who": "alice", "reason": "backup"})
    assert paused.open and "alice" in paused.explain() and "backup" in paused.explain()
    stale = _brk(last_collect=NOW - timedelta(seconds=300))
    assert [t.reason for t in stale.trips] == [D.BreakerReason.STALE_METRICS]
    window_stale = _brk(stale_detail="no sample from host h3")
    assert "h3" in window_stale.explain()
    fails = _brk(failures=[NOW - timedelta(minutes=m) for m in (1, 2, 3)])
    assert [t.reason for t in fails.trips] == [D.BreakerReason.MIGRATION_FAILURES]
    old_fails = _brk(failures=[NOW - timedelta(minutes=m) for m in (20, 30, 40)])
    assert not old_fails.open


def test_mandatory_moves_continue_while_paused_when_allowed() -> None:
    brk = _brk(pause={"who": "alice", "reason": ""})
    assert brk.allows(MoveReason.MAINTENANCE) and not brk.allows(MoveReason.BALANCE)
    strict = _brk(pause={"who": "alice", "reason": ""}, allow_mandatory=False)
    assert not strict.allows(MoveReason.MAINTENANCE)


def _move(reason: MoveReason) -> Move:
    return Move(vm="vm1", source="h1", target="h2", step=0, reason=reason)


def test_automation_levels() -> None:
    ok = _brk()
    bal, rule = _move(MoveReason.BALANCE), _move(MoveReason.RULE)
    assert D.dispose(bal, Automation.FULL, ok) is D.Disposition.EXECUTE
    assert D.dispose(bal, Automation.PARTIAL, ok) is D.Disposition.RECOMMEND
    assert D.dispose(rule, Automation.PARTIAL, ok) is D.Disposition.EXECUTE
    assert D.dispose(rule, Automation.MANUAL, ok) is D.Disposition.RECOMMEND
    paused = _brk(pause={"who": "a", "reason": ""})
    assert D.dispose(bal, Automation.FULL, paused) is D.Disposition.HOLD
    assert D.dispose(rule, Automation.FULL, paused) is D.Disposition.EXECUTE


def test_recommendation_premise_breaks_when_the_cluster_changes() -> None:
    snap = small_cluster(3, 2)
    move = Move(vm="vm1", source="h1", target="h2", step=0, reason=MoveReason.BALANCE)
    prem = D.premise(snap, move)
    assert D.premise_broken(snap, "vm1", "h2", prem) == ""
    moved = snap.with_placement({"vm1": "h3"})
    assert "now runs on h3" in D.premise_broken(moved, "vm1", "h2", prem)
    maint = snap.with_host_state("h2", HostState.ENTERING_MAINTENANCE)
    assert "h2 is entering_maintenance" in D.premise_broken(maint, "vm1", "h2", prem)
    other = snap.with_host_state("h3", HostState.QUARANTINED)
    assert "h3 changed" in D.premise_broken(other, "vm1", "h2", prem)
