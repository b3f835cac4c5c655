"""The figures of a simulation run (pure: arrays and records in, numbers out; time is an
argument, never read from a clock).

Definitions (one place):

* **Host overloaded**: its CPU demand exceeds its capacity (``demand > cpu_cores``), demand being
  the sum of the trace demand of the VMs on it plus, while migrations touch it, the migrating
  VM's demand on the *target* too and :attr:`~balancer.simulation.engine.SimConfig.
  migration_cpu_cores` on both source and target (the copy costs CPU on both ends).
* ``overload_host_share`` = overloaded host-seconds / active host-seconds (SLATAH of
  Beloglazov & Buyya: the share of active host time at 100 % CPU).
* ``overload_vm_share`` = VM-seconds spent on an overloaded host / all VM-seconds.
* ``imbalance`` (per tick) = population standard deviation of the CPU loads (demand /
  capacity) of the powered-on hosts at the start of the tick; the figures give its mean and
  95th percentile over the ticks. CPU only: the traces drive CPU, memory is static.
* ``migrations``: migrations that succeeded; ``migrations_per_vm_day`` = migrations / VMs /
  simulated days; ``pingpong_moves``: succeeded moves that take a VM back to the host it left
  in an earlier move within 24 h (A -> B then B -> A); ``gib_copied``: data sent by every
  migration, finished or not.
* ``decide_seconds_mean``: wall time of one decision (demand, holds, optimizer, planner) -
  the only figure that is measured, not simulated, so it differs between runs.
* Energy: linear power model per powered-on host, ``idle_w + (peak_w - idle_w) x min(1, load)``.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np
import numpy.typing as npt

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.intp]

#: a host is overloaded when demand exceeds capacity by more than this (float noise)
EPS_CORES = 1e-9
PINGPONG_WINDOW_S = 86_400.0


@dataclass(frozen=True, slots=True, kw_only=True)
class Flight:
    """One migration as seen by one tick: offsets in seconds from the tick's start."""

    vm: int
    source: int
    target: int
    start_s: float
    end_s: float
    succeeded: bool


@dataclass(frozen=True, slots=True, kw_only=True)
class TickLoad:
    #: CPU load (demand / capacity) of every host at the start of the tick
    host_load: FloatArray
    host_overload_s: FloatArray
    vm_overload_s: FloatArray


def tick_overload(
    *,
    capacity: FloatArray,
    placement: IntArray,
    vm_cpu: FloatArray,
    flights: Sequence[Flight],
    tick_s: float,
    migration_cpu_cores: float,
) -> TickLoad:
    """Overloaded seconds per host and per VM within one tick of ``tick_s`` seconds.

    ``placement[v]`` is VM ``v``'s host at the start of the tick; a succeeded flight moves it
    at its ``end_s``. The tick is cut at every flight start and end, and each piece is checked
    with the demand of that piece (see the module docstring)."""
    n_hosts = len(capacity)
    cuts = {0.0, tick_s}
    for f in flights:
        for t in (f.start_s, f.end_s):
            if 0.0 < t < tick_s:
                cuts.add(t)
    times = sorted(cuts)
    host_over = np.zeros(n_hosts)
    vm_over = np.zeros(len(vm_cpu))
    start_load = np.zeros(n_hosts)
    for i, (a, b) in enumerate(itertools.pairwise(times)):
        where = placement
        landed = [f for f in flights if f.succeeded and f.end_s <= a]
        if landed:
            where = placement.copy()
            for f in landed:
                where[f.vm] = f.target
        demand = np.bincount(where, weights=vm_cpu, minlength=n_hosts).astype(np.float64)
        for f in flights:
            if f.start_s <= a < f.end_s:
                demand[f.target] += vm_cpu[f.vm] + migration_cpu_cores
                demand[f.source] += migration_cpu_cores
        if i == 0:
            start_load = demand / capacity
        over = demand > capacity + EPS_CORES
        host_over += (b - a) * over
        vm_over += (b - a) * over[where]
    return TickLoad(host_load=start_load, host_overload_s=host_over, vm_overload_s=vm_over)


def imbalance(loads: FloatArray, active: npt.NDArray[np.bool_]) -> float:
    """Population standard deviation of the loads of the active hosts (0 for fewer than 2)."""
    values = loads[active]
    if len(values) < 2:
        return 0.0
    return float(np.std(values))


def power_w(
    loads: FloatArray, active: npt.NDArray[np.bool_], idle_w: FloatArray, peak_w: FloatArray
) -> float:
    """Watts drawn by the powered-on hosts (linear model)."""
    per_host = idle_w + (peak_w - idle_w) * np.minimum(1.0, loads)
    return float(per_host[active].sum())


@dataclass(frozen=True, slots=True, kw_only=True)
class MigrationRecord:
    #: seconds since the start of the run when it started
    time_s: float
    vm: str
    source: str
    target: str
    reason: str
    duration_s: float
    data_mib: float
    succeeded: bool
    error: str = ""


@dataclass(frozen=True, slots=True, kw_only=True)
class TickRecord:
    """What one tick contributes to the figures (and one row of the time-series CSV)."""

    index: int
    time_s: float
    tick_s: float
    active_hosts: int
    vms: int
    overloaded_hosts: int
    host_overload_s: float
    vm_overload_s: float
    imbalance: float
    mean_load: float
    max_load: float
    migrations_started: int
    migrations_failed: int
    mib_copied: float
    recommended: int
    decided: bool
    decide_seconds: float
    power_w: float
    power_all_on_w: float


def pingpong_moves(
    migrations: Sequence[MigrationRecord], window_s: float = PINGPONG_WINDOW_S
) -> int:
    """Succeeded moves that reverse an earlier succeeded move of the same VM within the window."""
    count = 0
    history: dict[str, list[MigrationRecord]] = {}
    for m in sorted(migrations, key=lambda r: r.time_s):
        if not m.succeeded:
            continue
        earlier = history.setdefault(m.vm, [])
        if any(
            e.source == m.target and e.target == m.source and m.time_s - e.time_s <= window_s
            for e in earlier
        ):
            count += 1
        earlier.append(m)
    return count


@dataclass(frozen=True, slots=True, kw_only=True)
class Figures:
    overload_host_share: float
    overload_vm_share: float
    imbalance_mean: float
    imbalance_p95: float
    migrations: int
    migrations_per_vm_day: float
    pingpong_moves: int
    gib_copied: float
    decide_seconds_mean: float
    migrations_failed: int
    recommended_moves: int
    max_host_load: float
    hosts_active_mean: float
    hosts_off_mean: float
    energy_kwh: float
    energy_kwh_all_on: float
    vms: int
    hosts: int
    days: float
    ticks: int
    decisions: int

    def as_dict(self) -> dict[str, float | int]:
        return asdict(self)


#: the figures whose value does not depend on the machine (everything but decision time)
DETERMINISTIC = tuple(f for f in Figures.__dataclass_fields__ if f not in ("decide_seconds_mean",))


def summarize(
    ticks: Sequence[TickRecord],
    migrations: Sequence[MigrationRecord],
    *,
    hosts: int,
) -> Figures:
    """The run's figures from its tick records and migrations (see the module docstring)."""
    host_s = sum(t.active_hosts * t.tick_s for t in ticks)
    vm_s = sum(t.vms * t.tick_s for t in ticks)
    total_s = sum(t.tick_s for t in ticks)
    days = total_s / 86_400.0
    imb = np.array([t.imbalance for t in ticks]) if ticks else np.zeros(1)
    decided = [t.decide_seconds for t in ticks if t.decided]
    done = [m for m in migrations if m.succeeded]
    vm_days = vm_s / 86_400.0
    return Figures(
        overload_host_share=sum(t.host_overload_s for t in ticks) / host_s if host_s else 0.0,
        overload_vm_share=sum(t.vm_overload_s for t in ticks) / vm_s if vm_s else 0.0,
        imbalance_mean=float(imb.mean()),
        imbalance_p95=float(np.percentile(imb, 95)),
        migrations=len(done),
        migrations_per_vm_day=len(done) / vm_days if vm_days else 0.0,
        pingpong_moves=pingpong_moves(migrations),
        gib_copied=sum(m.data_mib for m in migrations) / 1024.0,
        decide_seconds_mean=float(np.mean(decided)) if decided else 0.0,
        migrations_failed=len(migrations) - len(done),
        recommended_moves=sum(t.recommended for t in ticks),
        max_host_load=max((t.max_load for t in ticks), default=0.0),
        hosts_active_mean=(sum(t.active_hosts * t.tick_s for t in ticks) / total_s)
        if total_s
        else 0.0,
        hosts_off_mean=(sum((hosts - t.active_hosts) * t.tick_s for t in ticks) / total_s)
        if total_s
        else 0.0,
        energy_kwh=sum(t.power_w * t.tick_s for t in ticks) / 3.6e6,
        energy_kwh_all_on=sum(t.power_all_on_w * t.tick_s for t in ticks) / 3.6e6,
        vms=max((t.vms for t in ticks), default=0),
        hosts=hosts,
        days=days,
        ticks=len(ticks),
        decisions=len(decided),
    )
