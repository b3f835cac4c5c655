"""The adaptive cooldown (issue 16): a VM moved for balance again soon after its last move is
held longer each time, doubling up to the policy's ceiling; left alone, it starts again from
the base."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from hypothesis import given, settings
from hypothesis import strategies as st

from balancer.service import decisions as D
from balancer.service.store import MoveRecord

T0 = datetime(2026, 6, 1, tzinfo=UTC)
BASE = timedelta(minutes=60)
CAP = timedelta(minutes=480)
#: short enough that moving a VM back and forth is no ping-pong hold: the cooldown is the hold
WINDOW = timedelta(minutes=1)
HOSTS = ("h1", "h2")


def _moves(at: list[datetime], reason: str = "balance") -> list[MoveRecord]:
    """vm1 moved back and forth between h1 and h2 at the given times."""
    return [
        MoveRecord(at=t, vm="vm1", source=HOSTS[i % 2], target=HOSTS[(i + 1) % 2], reason=reason)
        for i, t in enumerate(at)
    ]


def _hold(at: list[datetime], now: datetime) -> D.Hold | None:
    return D.holds(
        _moves(at), now=now, cooldown=BASE, cooldown_max=CAP, pingpong_window=WINDOW
    ).get("vm1")


def test_moved_back_and_forth_as_soon_as_allowed_the_cooldown_doubles_up_to_the_ceiling() -> None:
    at = [T0]
    lengths = []
    for _ in range(6):
        hold = _hold(at, at[-1] + timedelta(seconds=1))
        assert hold is not None and hold.reason is D.HoldReason.COOLDOWN
        assert hold.until is not None
        lengths.append(hold.until - at[-1])
        # still held a second before it ends, free at its end; moved again at once
        assert _hold(at, hold.until - timedelta(seconds=1)) is not None
        assert _hold(at, hold.until) is None
        at.append(hold.until)
    assert [x.total_seconds() / 60 for x in lengths] == [60, 120, 240, 480, 480, 480]
    last = _hold(at, at[-1])
    assert last is not None and "cooldown 480 min" in last.detail


def test_a_vm_left_alone_longer_than_its_cooldown_starts_again_from_the_base() -> None:
    # 60 then 120 min; then left alone 5 h (more than twice 120 min): back to 60
    at = [T0, T0 + BASE, T0 + BASE + timedelta(hours=5)]
    hold = _hold(at, at[-1])
    assert hold is not None and hold.until == at[-1] + BASE
    # the ceiling below the base (a policy built in code) counts as the base
    cool = D.cooldown_after([T0, T0 + BASE], base=BASE, cap=timedelta(minutes=10))
    assert cool.length == BASE


def test_only_balance_moves_count() -> None:
    def mv(at: datetime, src: str, dst: str, reason: str) -> MoveRecord:
        return MoveRecord(at=at, vm="vm1", source=src, target=dst, reason=reason)

    # balance, an evacuation soon after, balance again soon after that
    moves = [
        mv(T0, "h1", "h2", "balance"),
        mv(T0 + BASE, "h2", "h3", "maintenance"),
        mv(T0 + 2 * BASE, "h3", "h4", "balance"),
    ]
    now = T0 + 2 * BASE
    h = D.holds(moves, now=now, cooldown=BASE, cooldown_max=CAP, pingpong_window=WINDOW)
    # the evacuation neither holds nor doubles; the two balance moves double once
    assert h["vm1"].until == now + 2 * BASE
    # before the second balance move: the evacuation did not lengthen the first one's hour
    before = T0 + BASE + timedelta(minutes=1)
    h = D.holds(moves[:2], now=before, cooldown=BASE, cooldown_max=CAP, pingpong_window=WINDOW)
    assert h == {}


def test_without_a_ceiling_the_cooldown_stays_the_base() -> None:
    at = [T0, T0 + BASE, T0 + 2 * BASE]
    h = D.holds(_moves(at), now=at[-1], cooldown=BASE, pingpong_window=WINDOW)
    assert h["vm1"].until == at[-1] + BASE


@settings(max_examples=200, deadline=None)
@given(
    gaps=st.lists(st.integers(min_value=0, max_value=24 * 60), min_size=1, max_size=12),
    base_min=st.integers(min_value=1, max_value=240),
    factor=st.integers(min_value=1, max_value=16),
)
def test_the_cooldown_stays_between_base_and_ceiling_and_doubles_when_moved_at_once(
    gaps: list[int], base_min: int, factor: int
) -> None:
    base = timedelta(minutes=base_min)
    cap = base * factor
    at = [T0]
    for g in gaps:
        at.append(at[-1] + timedelta(minutes=g))
    previous: timedelta | None = None
    for n in range(1, len(at) + 1):
        cool = D.cooldown_after(at[:n], base=base, cap=cap)
        assert base <= cool.length <= cap
        if previous is not None:
            gap = at[n - 1] - at[n - 2]
            if gap <= 2 * previous:
                # moved again soon: doubled (up to the ceiling)
                assert cool.length == min(cap, 2 * previous)
                assert cool.doublings >= 1
            else:
                assert cool.length == base and cool.doublings == 0
        previous = cool.length
    # the history the service reads (cooldown_history back) is long enough for the ceiling;
    # cut there, a chain that began before the cut starts again from the base: the cooldown
    # is never longer than the whole history's, and the same when the whole chain is inside
    span = D.cooldown_history(base=base, cap=cap, pingpong_window=WINDOW)
    assert span >= 2 * cap
    now = at[-1]
    cut = [t for t in at if t >= now - span]
    whole = D.cooldown_after(at, base=base, cap=cap)
    part = D.cooldown_after(cut, base=base, cap=cap)
    assert base <= part.length <= whole.length
    if cut == at:
        assert part == whole
