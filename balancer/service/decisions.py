"""Pure decisions of the service: holds (cooldown, ping-pong), circuit breakers, what to do
with a plan under an automation level, and whether a recommendation still stands.

Values in, values out: no I/O, no clock (``now`` is an argument).
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum

from balancer.model import HostState, Snapshot
from balancer.plan import Move, MoveReason, Plan
from balancer.service.store import MoveRecord
from policies.model import Automation


# -- holds -------------------------------------------------------------------------------------
class HoldReason(StrEnum):
    COOLDOWN = "cooldown"  # moved for balance less than its (adaptive) cooldown ago
    PING_PONG = "ping_pong"  # went A -> B -> A within the ping-pong window
    IN_FLIGHT = "in_flight"  # a migration of it is queued or running


#: move reasons that count for ping-pong: a round trip made only of operator-intended moves
#: (an evacuation and its move-back, two manual moves) is not thrashing
AUTOMATIC = frozenset({"balance", "forecast", "consolidate", "external"})
#: moves that start a balance cooldown (a forecast move is a balance move planned ahead)
BALANCING = frozenset({MoveReason.BALANCE.value, MoveReason.FORECAST.value})


@dataclass(frozen=True, slots=True, kw_only=True)
class Hold:
    vm: str
    reason: HoldReason
    until: datetime | None
    detail: str


@dataclass(frozen=True, slots=True, kw_only=True)
class Cooldown:
    """The cooldown in force after a VM's last balance move."""

    length: timedelta
    #: consecutive balance moves, each soon after the previous (the length doubled that many
    #: times, up to the ceiling)
    doublings: int


def cooldown_after(moved_at: Sequence[datetime], *, base: timedelta, cap: timedelta) -> Cooldown:
    """The adaptive cooldown after the last of a VM's balance moves (``moved_at``, oldest
    first), as the descheduler's back-off does: the first move gets ``base``; a move made
    *soon* after the previous one (before the previous cooldown had passed a second time,
    i.e. within one more cooldown after its hold ended) doubles it, up to ``cap``; a VM left
    alone longer starts again from ``base``. ``cap`` below ``base`` counts as ``base``."""
    cap = max(cap, base)
    doublings = 0
    length = base
    for earlier, later in itertools.pairwise(moved_at):
        if later - earlier <= 2 * length:
            doublings += 1
            length = min(cap, 2 * length)
        else:
            doublings = 0
            length = base
    return Cooldown(length=length, doublings=doublings)


def cooldown_history(*, base: timedelta, cap: timedelta, pingpong_window: timedelta) -> timedelta:
    """How far back the move history must reach for :func:`holds`: the ping-pong window, and
    enough of a VM's chain of balance moves for its cooldown to reach the ceiling (each gap of
    a chain is at most twice the ceiling; one more doubling than it takes to reach it)."""
    cap = max(cap, base)
    levels = 0
    while base > timedelta(0) and base * 2**levels < cap:
        levels += 1
    return max(pingpong_window, 2 * cap * (levels + 2))


def holds(
    moves: Sequence[MoveRecord],
    *,
    now: datetime,
    cooldown: timedelta,
    pingpong_window: timedelta,
    in_flight: Iterable[str] = (),
    cooldown_max: timedelta | None = None,
) -> dict[str, Hold]:
    """VMs held from balancing and why. ``moves`` are completed moves, oldest first.

    The cooldown after a balance move is adaptive (:func:`cooldown_after`): ``cooldown`` for
    a VM moved once, doubling for one moved again soon after, up to ``cooldown_max`` (None:
    no doubling). ``moves`` should reach back :func:`cooldown_history`."""
    cap = cooldown if cooldown_max is None else cooldown_max
    out: dict[str, Hold] = {}
    by_vm: dict[str, list[MoveRecord]] = {}
    for m in moves:
        by_vm.setdefault(m.vm, []).append(m)
    for vm, ms in by_vm.items():
        recent = [m for m in ms if m.at >= now - pingpong_window]
        for i, later in enumerate(recent):
            back = next(
                (
                    earlier
                    for earlier in recent[:i]
                    if earlier.source == later.target
                    and earlier.target == later.source
                    and (earlier.reason in AUTOMATIC or later.reason in AUTOMATIC)
                ),
                None,
            )
            if back is not None:
                out[vm] = Hold(
                    vm=vm,
                    reason=HoldReason.PING_PONG,
                    until=back.at + pingpong_window,
                    detail=(
                        f"{back.source}->{back.target} at {back.at:%H:%M:%S}, "
                        f"back {later.source}->{later.target} at {later.at:%H:%M:%S}"
                    ),
                )
        if vm in out:
            continue
        balance = [m for m in ms if m.reason in BALANCING]
        if not balance:
            continue
        last_balance = balance[-1]
        cool = cooldown_after([m.at for m in balance], base=cooldown, cap=cap)
        if last_balance.at + cool.length > now:
            detail = f"moved for balance {last_balance.source}->{last_balance.target}"
            if cool.doublings:
                detail += (
                    f"; cooldown {cool.length.total_seconds() / 60:.0f} min: moved for balance "
                    f"again soon after the previous move {cool.doublings} times in a row"
                )
            out[vm] = Hold(
                vm=vm,
                reason=HoldReason.COOLDOWN,
                until=last_balance.at + cool.length,
                detail=detail,
            )
    for vm in in_flight:
        out.setdefault(
            vm, Hold(vm=vm, reason=HoldReason.IN_FLIGHT, until=None, detail="migration queued")
        )
    return out


def moved_vms(before: Snapshot, after: Snapshot) -> list[tuple[str, str, str]]:
    """(vm, source, target) for every VM whose host changed between two snapshots."""
    old = before.placement()
    return [
        (vm, old[vm], host)
        for vm, host in after.placement().items()
        if vm in old and old[vm] != host
    ]


# -- circuit breakers ---------------------------------------------------------------------------
class BreakerReason(StrEnum):
    OPERATOR_PAUSE = "operator_pause"
    STALE_METRICS = "stale_metrics"
    MIGRATION_FAILURES = "migration_failures"
    NO_POLICY = "no_policy"


@dataclass(frozen=True, slots=True, kw_only=True)
class Trip:
    reason: BreakerReason
    detail: str
    #: since when it has been open, where the facts tell (None: not known)
    since: datetime | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class Breakers:
    trips: tuple[Trip, ...]
    allow_mandatory: bool

    @property
    def open(self) -> bool:
        """Automation is paused."""
        return bool(self.trips)

    def allows(self, reason: MoveReason) -> bool:
        if not self.trips:
            return True
        if reason.mandatory or reason is MoveReason.TEMPORARY:
            # stale metrics do not block an evacuation: it does not depend on the load figures
            return self.allow_mandatory
        return False

    def explain(self) -> str:
        return "; ".join(f"{t.reason.value}: {t.detail}" for t in self.trips)


def breakers(
    *,
    now: datetime,
    pause: Mapping[str, object] | None,
    last_collect: datetime | None,
    stale_after: timedelta,
    stale_detail: str | None,
    failures: Sequence[datetime],
    failure_limit: int,
    failure_window: timedelta,
    allow_mandatory: bool,
) -> Breakers:
    """Which breakers are open now. ``failures`` are the end times of failed migrations."""
    trips: list[Trip] = []
    if pause is not None:
        trips.append(
            Trip(
                reason=BreakerReason.OPERATOR_PAUSE,
                detail=f"paused by {pause.get('who', '?')}: {pause.get('reason') or 'no reason'}",
            )
        )
    if last_collect is None:
        trips.append(Trip(reason=BreakerReason.STALE_METRICS, detail="no metrics collected yet"))
    elif now - last_collect > stale_after:
        age = (now - last_collect).total_seconds()
        trips.append(
            Trip(
                reason=BreakerReason.STALE_METRICS,
                detail=f"last metrics {age:.0f} s old (limit {stale_after.total_seconds():.0f} s)",
                since=last_collect + stale_after,
            )
        )
    elif stale_detail:
        trips.append(Trip(reason=BreakerReason.STALE_METRICS, detail=stale_detail))
    recent = sorted(t for t in failures if t >= now - failure_window)
    if len(recent) >= failure_limit:
        trips.append(
            Trip(
                reason=BreakerReason.MIGRATION_FAILURES,
                detail=(
                    f"{len(recent)} migrations failed in the last "
                    f"{failure_window.total_seconds() / 60:.0f} min (limit {failure_limit})"
                ),
                since=recent[failure_limit - 1],
            )
        )
    return Breakers(trips=tuple(trips), allow_mandatory=allow_mandatory)


# -- automation --------------------------------------------------------------------------------
class Disposition(StrEnum):
    EXECUTE = "execute"
    RECOMMEND = "recommend"
    HOLD = "hold"  # breaker open: neither executed nor recommended now


def dispose(move: Move, automation: Automation, brk: Breakers) -> Disposition:
    """What the service does with one planned move."""
    if automation is Automation.FULL or (automation is Automation.PARTIAL and mandatory(move)):
        return Disposition.EXECUTE if brk.allows(move.reason) else Disposition.HOLD
    return Disposition.RECOMMEND


def mandatory(move: Move) -> bool:
    """A move that runs whatever the windows say (maintenance, quarantine, rule repair, the
    parking moves that serve them)."""
    return move.reason.mandatory or move.reason is MoveReason.TEMPORARY


def hold_balancing(parts: Mapping[Disposition, list[Move]]) -> dict[Disposition, list[Move]]:
    """``parts`` with every balancing move (not :func:`mandatory`) held: outside the policy's
    balancing windows (policies/windows.py)."""
    out: dict[Disposition, list[Move]] = {d: [] for d in Disposition}
    for d, moves in parts.items():
        for m in moves:
            out[d if mandatory(m) else Disposition.HOLD].append(m)
    return out


def split_plan(plan: Plan, automation: Automation, brk: Breakers) -> dict[Disposition, list[Move]]:
    out: dict[Disposition, list[Move]] = {d: [] for d in Disposition}
    for m in plan.moves:
        out[dispose(m, automation, brk)].append(m)
    return out


# -- recommendations ---------------------------------------------------------------------------
def premise(snapshot: Snapshot, move: Move) -> dict[str, object]:
    """What must still hold for a recommendation to stand: the VM on its source, the host
    states of the cluster as they were."""
    return {
        "vm_host": move.source,
        "host_states": {h.name: h.state.value for h in snapshot.hosts},
    }


def premise_broken(snapshot: Snapshot, vm: str, target: str, prem: Mapping[str, object]) -> str:
    """Why a recommendation no longer stands ("" when it does)."""
    try:
        where = snapshot.vm(vm).host
    except KeyError:
        return f"{vm} no longer exists"
    if where != prem.get("vm_host"):
        return f"{vm} now runs on {where}"
    try:
        tstate = snapshot.host(target).state
    except KeyError:
        return f"host {target} no longer exists"
    if tstate is not HostState.ACTIVE:
        return f"host {target} is {tstate.value}"
    states = prem.get("host_states")
    if isinstance(states, Mapping):
        for h in snapshot.hosts:
            if states.get(h.name) not in (None, h.state.value):
                return f"host {h.name} changed to {h.state.value}"
    return ""
