"""Host health: which hosts show signs of failing, and which the service quarantines or releases.

Words:

* a **fact** is one thing the service observed about a host, with its time: a failed collect
  of the host (a **connection failure**: no answer, a timeout), a failed migration to or from
  it, an agent sample's pressure (PSI ``some`` avg60 of cpu, memory, io) or its hardware error
  counters (EDAC corrected and uncorrected, machine checks);
* a **signal** (:class:`Signal`) is one kind of evidence that a host is failing; it is
  **raised** when the host's facts cross the policy's limit (``policies.model.Health``):

  - ``connection_failures``: at least ``connection_failures`` failed collects within
    ``window_minutes``;
  - ``migration_failures``: at least ``migration_failures`` failed migrations to or from the
    host within ``window_minutes`` (a pair of hosts failing between each other raises both;
    the cap below takes one of them);
  - ``pressure``: a resource's PSI above its threshold in every sample for at least
    ``sustained_minutes`` (timed by the samples' own times; samples older than
    ``window_minutes`` no longer count);
  - ``hardware_errors``: an error counter that rose from one sample to the next within
    ``window_minutes`` (a counter that went down, e.g. after a reboot, is no rise);

  its ``since`` is when it crossed the limit;
* a host is **healthy** while no signal is raised; facts older than the host's last release
  from quarantine do not count (an operator who releases a host is not overruled by the
  evidence they saw);
* the **cap** limits the automatic quarantines: at most ``max_quarantined`` hosts quarantined
  by the service at a time, and never one whose quarantine would leave the hosts that accept
  VMs without the room for every VM's memory and CPU use. A host the cap holds is **held**.

:func:`signals` and :func:`decide` are pure (values in, values out; ``now`` is an argument).
:class:`HostWatch` keeps the facts (bounded by time) and what was last reported, so that a
change (a signal raised or cleared, a host held) is audited once; it does no I/O either. The
service feeds it from its collect, its agent ingest and its migration results, and acts on
:func:`decide`'s verdict (``Service.watch_health``).
"""

from __future__ import annotations

import itertools
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from enum import StrEnum

from collectors.samples import HostSample
from policies.model import Health

#: the pressure resources, as named in PSI and in the policy
RESOURCES = ("cpu", "memory", "io")


class Signal(StrEnum):
    CONNECTION_FAILURES = "connection_failures"
    MIGRATION_FAILURES = "migration_failures"
    PRESSURE = "pressure"
    HARDWARE_ERRORS = "hardware_errors"


@dataclass(frozen=True, slots=True, kw_only=True)
class PressurePoint:
    """One agent sample's PSI ``some`` avg60 (percent) per resource (None: not given)."""

    at: datetime
    cpu: float | None = None
    memory: float | None = None
    io: float | None = None

    def value(self, resource: str) -> float | None:
        v: float | None = getattr(self, resource)
        return v


@dataclass(frozen=True, slots=True, kw_only=True)
class HardwarePoint:
    """One agent sample's hardware error counters (by name, only those the kernel gave)."""

    at: datetime
    counters: Mapping[str, int]


def points_of(sample: HostSample) -> tuple[PressurePoint | None, HardwarePoint | None]:
    """The facts one agent sample gives (None where it has none)."""
    pressure = None
    if sample.psi is not None:
        some = {r: getattr(sample.psi, r) for r in RESOURCES}
        pressure = PressurePoint(
            at=sample.time, **{r: None if v is None else v.some.avg60 for r, v in some.items()}
        )
    hardware = None
    if sample.hardware is not None and sample.hardware.counters():
        hardware = HardwarePoint(at=sample.time, counters=sample.hardware.counters())
    return pressure, hardware


@dataclass(frozen=True, slots=True, kw_only=True)
class HostFacts:
    """What was observed about one host, oldest first in every sequence."""

    connection_failures: Sequence[datetime] = ()
    migration_failures: Sequence[datetime] = ()
    pressure: Sequence[PressurePoint] = ()
    hardware: Sequence[HardwarePoint] = ()


@dataclass(frozen=True, slots=True, kw_only=True)
class Raised:
    signal: Signal
    since: datetime
    #: the figures, for the audit trail and the status: "4 failed collects in 10 min (limit 3)"
    detail: str

    def text(self) -> str:
        return f"{self.signal.value}: {self.detail}"


def _count_signal(
    times: Sequence[datetime], *, limit: int, window: timedelta, now: datetime, what: str
) -> tuple[datetime, str] | None:
    recent = sorted(t for t in times if now - window <= t <= now)
    if len(recent) < limit:
        return None
    minutes = window.total_seconds() / 60
    return recent[limit - 1], f"{len(recent)} {what} in {minutes:g} min (limit {limit})"


def _pressure(
    points: Sequence[PressurePoint], health: Health, now: datetime
) -> tuple[datetime, str] | None:
    window = timedelta(minutes=health.window_minutes)
    sustained = timedelta(minutes=health.sustained_minutes)
    pts = sorted((p for p in points if p.at <= now), key=lambda p: p.at)
    if not pts or now - pts[-1].at > window:
        return None  # no fresh sample: the agent stopped, nothing is known now
    found: list[tuple[datetime, str]] = []
    for res in RESOURCES:
        limit = getattr(health.psi_some_avg60, res)
        if limit is None:
            continue
        # the run of samples above the limit that ends with the newest sample
        run: list[PressurePoint] = []
        for p in reversed(pts):
            v = p.value(res)
            if v is None or v < limit:
                break
            run.append(p)
        if not run or run[0].at - run[-1].at < sustained:
            continue
        low = min(float(p.value(res) or 0.0) for p in run)
        minutes = (run[0].at - run[-1].at).total_seconds() / 60
        found.append(
            (
                run[-1].at + sustained,
                f"{res} some avg60 >= {low:g} % for {minutes:.1f} min "
                f"(limit {limit:g} % for {health.sustained_minutes} min)",
            )
        )
    if not found:
        return None
    return min(f[0] for f in found), "; ".join(f[1] for f in found)


def _hardware(
    points: Sequence[HardwarePoint], window: timedelta, now: datetime
) -> tuple[datetime, str] | None:
    pts = sorted((p for p in points if p.at <= now), key=lambda p: p.at)
    rises: dict[str, tuple[datetime, int, int]] = {}  # counter -> (first rise, from, to)
    for before, after in itertools.pairwise(pts):
        if now - after.at > window:
            continue
        for name, value in after.counters.items():
            old = before.counters.get(name)
            if old is not None and value > old:
                first = rises.get(name)
                rises[name] = (
                    (after.at, old, value) if first is None else (first[0], first[1], value)
                )
    if not rises:
        return None
    since = min(r[0] for r in rises.values())
    detail = ", ".join(f"{n} rose {a} -> {b}" for n, (_, a, b) in sorted(rises.items()))
    return since, detail


def signals(facts: HostFacts, health: Health, *, now: datetime) -> tuple[Raised, ...]:
    """The signals raised for one host now, in :class:`Signal` order."""
    window = timedelta(minutes=health.window_minutes)
    found: dict[Signal, tuple[datetime, str] | None] = {
        Signal.CONNECTION_FAILURES: _count_signal(
            facts.connection_failures,
            limit=health.connection_failures,
            window=window,
            now=now,
            what="failed collects",
        ),
        Signal.MIGRATION_FAILURES: _count_signal(
            facts.migration_failures,
            limit=health.migration_failures,
            window=window,
            now=now,
            what="failed migrations to or from it",
        ),
        Signal.PRESSURE: _pressure(facts.pressure, health, now),
        Signal.HARDWARE_ERRORS: _hardware(facts.hardware, window, now)
        if health.hardware_errors
        else None,
    }
    return tuple(
        Raised(signal=s, since=f[0], detail=f[1]) for s, f in found.items() if f is not None
    )


# -- decisions ----------------------------------------------------------------------------------
class HostCondition(StrEnum):
    """A host's administrative condition, as far as the health watch cares."""

    ACTIVE = "active"
    #: quarantined by the service (``who`` is the service): the watch may release it
    QUARANTINED_BY_HEALTH = "quarantined_by_health"
    #: quarantined by an operator: only an operator releases it
    QUARANTINED = "quarantined"
    #: entering or in maintenance: never quarantined on top
    MAINTENANCE = "maintenance"


@dataclass(frozen=True, slots=True, kw_only=True)
class HostInfo:
    name: str
    condition: HostCondition
    #: the signals raised now (:func:`signals`)
    raised: tuple[Raised, ...]
    #: when it was last seen unhealthy, or quarantined (None: never)
    unhealthy_at: datetime | None
    #: capacity the host gives when it accepts VMs (cores and MiB, headroom taken off)
    cpu_cores: float
    memory_mib: float
    #: it takes VMs now (active and reachable)
    accepts_vms: bool


@dataclass(frozen=True, slots=True, kw_only=True)
class Demand:
    """What the hosts that accept VMs must hold: every VM's CPU use and memory."""

    cpu_cores: float
    memory_mib: float


@dataclass(frozen=True, slots=True, kw_only=True)
class Quarantine:
    host: str
    signal: Raised

    def reason(self) -> str:
        return f"health signal {self.signal.text()} (since {self.signal.since:%H:%M:%S})"


@dataclass(frozen=True, slots=True, kw_only=True)
class Held:
    host: str
    signal: Raised
    #: why the cap held it
    why: str


@dataclass(frozen=True, slots=True, kw_only=True)
class Release:
    host: str
    healthy_since: datetime

    def reason(self) -> str:
        return f"automatic release: no health signal since {self.healthy_since:%H:%M:%S}"


@dataclass(frozen=True, slots=True, kw_only=True)
class Verdict:
    quarantine: tuple[Quarantine, ...] = ()
    held: tuple[Held, ...] = ()
    release: tuple[Release, ...] = ()


def decide(hosts: Sequence[HostInfo], demand: Demand, health: Health, *, now: datetime) -> Verdict:
    """Which hosts to quarantine (oldest signal first, under the cap), which the cap holds, and
    which hosts quarantined by the service have been healthy long enough to return."""
    if not health.enabled:
        return Verdict()
    release: list[Release] = []
    if health.release_after_healthy_minutes is not None:
        after = timedelta(minutes=health.release_after_healthy_minutes)
        for h in hosts:
            if h.condition is not HostCondition.QUARANTINED_BY_HEALTH or h.raised:
                continue
            since = h.unhealthy_at
            if since is None or now - since >= after:
                release.append(Release(host=h.name, healthy_since=since or now))
    released = {r.host for r in release}
    taken = sum(
        1
        for h in hosts
        if h.condition is HostCondition.QUARANTINED_BY_HEALTH and h.name not in released
    )
    accepting = {h.name: h for h in hosts if h.accepts_vms}
    room_cpu = sum(h.cpu_cores for h in accepting.values())
    room_mem = sum(h.memory_mib for h in accepting.values())
    candidates = sorted(
        (h for h in hosts if h.condition is HostCondition.ACTIVE and h.raised),
        key=lambda h: (min(r.since for r in h.raised), h.name),
    )
    quarantine: list[Quarantine] = []
    held: list[Held] = []
    for h in candidates:
        first = min(h.raised, key=lambda r: r.since)
        why = ""
        if taken >= health.max_quarantined:
            why = (
                f"at most {health.max_quarantined} host"
                f"{'' if health.max_quarantined == 1 else 's'} quarantined by the service "
                f"at a time ({taken} already)"
            )
        elif h.name in accepting:
            cpu, mem = room_cpu - h.cpu_cores, room_mem - h.memory_mib
            if cpu < demand.cpu_cores or mem < demand.memory_mib:
                why = (
                    f"the other hosts could not hold the VMs ({cpu:.1f} cores and "
                    f"{mem:.0f} MiB for {demand.cpu_cores:.1f} cores and "
                    f"{demand.memory_mib:.0f} MiB)"
                )
        if why:
            held.append(Held(host=h.name, signal=first, why=why))
            continue
        quarantine.append(Quarantine(host=h.name, signal=first))
        taken += 1
        if h.name in accepting:
            room_cpu -= h.cpu_cores
            room_mem -= h.memory_mib
    return Verdict(quarantine=tuple(quarantine), held=tuple(held), release=tuple(release))


# -- the watch ------------------------------------------------------------------------------------
@dataclass(slots=True)
class _Facts:
    connection: deque[datetime] = field(default_factory=deque)
    migration: deque[datetime] = field(default_factory=deque)
    pressure: deque[PressurePoint] = field(default_factory=deque)
    hardware: deque[HardwarePoint] = field(default_factory=deque)


@dataclass(frozen=True, slots=True, kw_only=True)
class Change:
    """A signal raised or cleared on a host (for the audit trail)."""

    host: str
    signal: Signal
    raised: bool
    detail: str


class HostWatch:
    """The facts of every host (kept as long as the policy can look back) and the signals last
    reported (see the module docstring). Not thread-safe: the service calls it under a lock."""

    def __init__(self, started: datetime) -> None:
        self.started = started
        self._facts: dict[str, _Facts] = {}
        self._released: dict[str, datetime] = {}
        self._reported: dict[str, dict[Signal, Raised]] = {}
        self._held: set[tuple[str, Signal]] = set()
        self._unhealthy: dict[str, datetime] = {}

    def _of(self, host: str) -> _Facts:
        return self._facts.setdefault(host, _Facts())

    # facts
    def connection_failed(self, host: str, at: datetime) -> None:
        self._of(host).connection.append(at)

    def migration_failed(self, hosts: Sequence[str], at: datetime) -> None:
        for h in hosts:
            self._of(h).migration.append(at)

    def sampled(
        self, host: str, pressure: PressurePoint | None, hardware: HardwarePoint | None
    ) -> None:
        f = self._of(host)
        if pressure is not None:
            f.pressure.append(pressure)
        if hardware is not None:
            f.hardware.append(hardware)

    def released(self, host: str, at: datetime) -> None:
        """The host left quarantine: its facts until now no longer count."""
        self._released[host] = at
        self._unhealthy.pop(host, None)
        self._held = {k for k in self._held if k[0] != host}

    def _prune(self, health: Health, now: datetime) -> None:
        keep = now - timedelta(minutes=max(health.window_minutes, health.sustained_minutes) + 1)
        for f in self._facts.values():
            for q in (f.connection, f.migration):
                while q and q[0] < keep:
                    q.popleft()
            for pq in (f.pressure, f.hardware):
                # one point older than the window stays: a rise is measured against it
                while len(pq) > 1 and pq[1].at < keep:
                    pq.popleft()

    def facts(self, host: str) -> HostFacts:
        f = self._facts.get(host)
        if f is None:
            return HostFacts()
        cut = self._released.get(host)
        if cut is None:
            return HostFacts(
                connection_failures=tuple(f.connection),
                migration_failures=tuple(f.migration),
                pressure=tuple(f.pressure),
                hardware=tuple(f.hardware),
            )
        return HostFacts(
            connection_failures=tuple(t for t in f.connection if t > cut),
            migration_failures=tuple(t for t in f.migration if t > cut),
            pressure=tuple(p for p in f.pressure if p.at > cut),
            hardware=tuple(p for p in f.hardware if p.at > cut),
        )

    def evaluate(
        self, hosts: Sequence[str], health: Health, *, now: datetime
    ) -> tuple[dict[str, tuple[Raised, ...]], list[Change]]:
        """The signals of each host now, and the changes since the last call."""
        self._prune(health, now)
        out: dict[str, tuple[Raised, ...]] = {}
        changes: list[Change] = []
        for host in hosts:
            raised = signals(self.facts(host), health, now=now) if health.enabled else ()
            out[host] = raised
            if raised:
                self._unhealthy[host] = now
            was = self._reported.get(host, {})
            new = {r.signal: r for r in raised}
            for s, r in new.items():
                if s not in was:
                    changes.append(Change(host=host, signal=s, raised=True, detail=r.detail))
            for s, r in was.items():
                if s not in new:
                    changes.append(
                        Change(host=host, signal=s, raised=False, detail=f"cleared ({r.detail})")
                    )
                    self._held.discard((host, s))
            self._reported[host] = new
        return out, changes

    def unhealthy_at(self, host: str, quarantined_at: datetime | None) -> datetime:
        """The last moment the host was seen unhealthy: its last signal, its quarantine, or the
        watch's start (facts are kept in memory: a restart knows nothing older)."""
        times = [self.started, self._unhealthy.get(host, self.started)]
        if quarantined_at is not None:
            times.append(quarantined_at)
        return max(times)

    def newly_held(self, held: Sequence[Held]) -> list[Held]:
        """The held hosts not reported yet (each host and signal once while it stays raised)."""
        out = [h for h in held if (h.host, h.signal.signal) not in self._held]
        self._held.update((h.host, h.signal.signal) for h in out)
        return out
