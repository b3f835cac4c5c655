"""Balancing windows (``windows:`` in the policy): when balancing moves may run.

Words: a window *starts* at each time its 5-field ``cron`` fires (in the policy's time zone)
and is *open* for ``duration_minutes`` after each start. Balancing is **held** while any
``freeze`` window is open, or, when the policy has ``allow`` windows, while none of them is
open. Mandatory moves (maintenance evacuation, quarantine, hard-rule repair) are never held by
a window. Pure: ``now`` is an argument; APScheduler's cron trigger only computes fire times.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from apscheduler.triggers.cron import CronTrigger

from policies.model import Policy, Window, WindowMode

_DAYS = ("sun", "mon", "tue", "wed", "thu", "fri", "sat", "sun")
_ZERO_RANGE = re.compile(r"\b0-([1-7])\b")


def _weekdays(field: str) -> str:
    """A cron weekday field in cron's numbering (0 and 7 Sunday) as day names: APScheduler
    3.x's ``from_crontab`` reads numbers as 0 = Monday, so "1-5" would be Tuesday-Saturday."""
    field = _ZERO_RANGE.sub(lambda m: "sun" + (f",1-{m[1]}" if m[1] != "7" else ",1-6"), field)
    return re.sub(r"(?<![/\d])([0-7])(?!\d)", lambda m: _DAYS[int(m[1])], field)


def trigger(cron: str, timezone: str) -> CronTrigger:
    """The cron trigger of a window (weekdays numbered as cron does: 0 and 7 Sunday);
    ValueError (with the reason) for a bad expression or time zone."""
    try:
        tz = ZoneInfo(timezone)
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise ValueError(f"unknown time zone {timezone!r}") from exc
    parts = cron.split()
    if len(parts) == 5:
        parts[4] = _weekdays(parts[4])
    return CronTrigger.from_crontab(" ".join(parts), timezone=tz)


@dataclass(frozen=True, slots=True, kw_only=True)
class WindowState:
    """Whether balancing is held now, by which window and until when."""

    held: bool
    #: the window that holds (a freeze window), or None (outside every allow window)
    window: str | None = None
    until: datetime | None = None
    #: one line for the status and the audit trail ("" when not held)
    detail: str = ""
    #: the same for every cycle of one hold, different for the next: audit once per hold
    key: str = ""


def _open_since(w: Window, timezone: str, now: datetime) -> datetime | None:
    """The latest start of ``w`` whose duration covers ``now`` (None: not open)."""
    t = trigger(w.cron, timezone)
    length = timedelta(minutes=w.duration_minutes)
    start = t.get_next_fire_time(None, now - length)
    latest: datetime | None = None
    while start is not None and start <= now:
        latest = start
        start = t.get_next_fire_time(start, start + timedelta(minutes=1))
    return latest


def window_state(policy: Policy, now: datetime) -> WindowState:
    """Whether the policy's windows hold balancing at ``now``."""
    if not policy.windows:
        return WindowState(held=False)
    tz = policy.timezone
    for w in policy.windows:
        if w.mode is WindowMode.FREEZE:
            since = _open_since(w, tz, now)
            if since is not None:
                until = since + timedelta(minutes=w.duration_minutes)
                return WindowState(
                    held=True,
                    window=w.name,
                    until=until,
                    detail=f"frozen by {w.name} until {until.isoformat(timespec='minutes')}",
                    key=f"{w.name}@{since.isoformat()}",
                )
    allow = [w for w in policy.windows if w.mode is WindowMode.ALLOW]
    if not allow or any(_open_since(w, tz, now) is not None for w in allow):
        return WindowState(held=False)
    starts = [
        (s, w.name)
        for w in allow
        if (s := trigger(w.cron, tz).get_next_fire_time(None, now)) is not None
    ]
    nxt = min(starts) if starts else None
    detail = "outside every allow window" + (
        f" until {nxt[0].isoformat(timespec='minutes')} ({nxt[1]})" if nxt else ""
    )
    return WindowState(
        held=True,
        until=nxt[0] if nxt else None,
        detail=detail,
        key=f"outside@{nxt[0].isoformat() if nxt else '-'}",
    )
