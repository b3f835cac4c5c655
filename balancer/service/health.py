"""Health of the automation: which circuit breakers opened or closed since the last look.

Words:

* a **breaker** is one reason automation pauses by itself or by an operator
  (:class:`~balancer.service.decisions.BreakerReason`): stale metrics, repeated migration
  failures, an operator's pause, no policy;
* a **trip** is a breaker open now, with what it says (``decisions.breakers`` computes the trips
  from the facts: last collect, failures, the pause flag);
* a **change** is one breaker opening or closing, with the time it happened.

:class:`BreakerWatch` is pure: it keeps the set of breakers the audit trail has been told are
open and, given the trips of now, returns the changes in the order they happened (each breaker on
its own, so a stale-metrics outage that ends while the failure breaker opens is two records, in
order). The service evaluates it on a timer of its own (not only when a collect happens to run),
and writes the changes to the audit trail only while it leads the cluster: a standby's writes
would be fenced, so it writes none.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from balancer.service.decisions import BreakerReason, Breakers, Trip


@dataclass(frozen=True, slots=True, kw_only=True)
class BreakerChange:
    reason: BreakerReason
    opened: bool
    #: when it happened: a trip's ``since`` (e.g. the moment metrics became too old), the last
    #: successful collect for a stale-metrics breaker that closed, else the evaluation time
    at: datetime
    detail: str

    @property
    def result(self) -> str:
        return "open" if self.opened else "closed"

    def text(self) -> str:
        return f"{self.reason.value}: {self.detail}"


class BreakerWatch:
    """The breakers last reported open, and the changes since (see the module docstring)."""

    def __init__(self) -> None:
        self._open: dict[BreakerReason, Trip] = {}

    @property
    def reported_open(self) -> frozenset[BreakerReason]:
        return frozenset(self._open)

    def changes(
        self, brk: Breakers, *, now: datetime, last_collect: datetime | None
    ) -> list[BreakerChange]:
        """The openings and closings from the last call to ``brk``, oldest first; remembers
        ``brk`` as reported."""
        trips = {t.reason: t for t in brk.trips}
        out: list[BreakerChange] = []
        for reason, trip in trips.items():
            if reason not in self._open:
                at = trip.since if trip.since is not None and trip.since <= now else now
                out.append(BreakerChange(reason=reason, opened=True, at=at, detail=trip.detail))
        for reason, was in self._open.items():
            if reason in trips:
                continue
            at = now
            if (
                reason is BreakerReason.STALE_METRICS
                and last_collect is not None
                and (was.since is None or last_collect >= was.since)
            ):
                at = min(last_collect, now)  # fresh metrics arrived then
            out.append(
                BreakerChange(reason=reason, opened=False, at=at, detail=f"closed ({was.detail})")
            )
        self._open = trips
        # in the order they happened; at the same moment a closing comes before an opening
        out.sort(key=lambda c: (c.at, c.opened))
        return out
