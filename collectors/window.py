"""The sample window: recent samples per host and per VM, and the demand computed from them.

Storage: per kind of entity (hosts, VMs) one float32 ring buffer per resource, ``slots`` rows by
``columns`` entities. Time is cut into slots of ``sample_interval_s``; a sample lands in the row of
its slot (``floor(t / interval) % slots``; a later sample in the same slot overwrites it), so
samples from different sources (the port, each host agent) share rows and memory stays at
``slots x entities x resources x 4 bytes`` however often samples arrive. Entities with no sample
left in the window are dropped (compaction), so the column count follows the cluster.

Host rows hold the host's *total* use and its *unmanaged* use: at each host sample,
``overhead = max(0, host total - sum of the latest fresh samples of the VMs on that host)``.

:func:`demand_view` is the function the service calls: a new :class:`~balancer.model.Snapshot`
whose VMs carry their demand (``cpu_used_cores``, ``memory_used_mib``) and whose hosts carry the
demand of their unmanaged load (``overhead_cpu_cores``, ``overhead_memory_mib``), plus the
:class:`Freshness` verdict. No I/O; time is an argument.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import datetime

import numpy as np
import numpy.typing as npt
import pandas as pd

from balancer.model import HostState, Snapshot
from collectors.demand import demand
from collectors.samples import (
    EntityKind,
    HostSample,
    SampleBatch,
    SampleSource,
    epoch_s,
    from_epoch_s,
)
from collectors.settings import CollectorSettings

VM_FIELDS = ("cpu_used_cores", "memory_used_mib")
HOST_FIELDS = ("cpu_used_cores", "memory_used_mib", "overhead_cpu_cores", "overhead_memory_mib")
_DTYPE = np.float32
_MIN_COLUMNS = 16


class _Ring:
    """Slot-indexed ring buffers for one kind of entity (rows = time slots, columns = entities)."""

    def __init__(self, fields: tuple[str, ...], slots: int, interval_s: float) -> None:
        self.fields = fields
        self.slots = slots
        self.interval_s = interval_s
        self.slot_ids = np.full(slots, -1, dtype=np.int64)
        self.capacity = _MIN_COLUMNS
        self.data = {f: np.full((slots, self.capacity), np.nan, dtype=_DTYPE) for f in fields}
        self.last = {f: np.full(self.capacity, np.nan, dtype=_DTYPE) for f in fields}
        self.last_s = np.full(self.capacity, np.nan, dtype=np.float64)
        #: for VMs: the host of the latest sample (object array of str)
        self.host_of = np.full(self.capacity, "", dtype=object)
        self.index: dict[str, int] = {}
        self.names: list[str] = []
        self.newest_slot = -1
        self.dropped_late = 0

    # -- columns -----------------------------------------------------------------------------
    def columns(self, names: Sequence[str]) -> npt.NDArray[np.intp]:
        index = self.index
        missing = [n for n in dict.fromkeys(names) if n not in index]
        if missing:
            need = len(self.names) + len(missing)
            if need > self.capacity:
                self._grow(max(need, self.capacity * 2))
            for n in missing:
                index[n] = len(self.names)
                self.names.append(n)
        return np.fromiter((index[n] for n in names), dtype=np.intp, count=len(names))

    def _grow(self, capacity: int) -> None:
        extra = capacity - self.capacity
        for f in self.fields:
            self.data[f] = np.concatenate(
                [self.data[f], np.full((self.slots, extra), np.nan, dtype=_DTYPE)], axis=1
            )
            self.last[f] = np.concatenate([self.last[f], np.full(extra, np.nan, dtype=_DTYPE)])
        self.last_s = np.concatenate([self.last_s, np.full(extra, np.nan)])
        self.host_of = np.concatenate([self.host_of, np.full(extra, "", dtype=object)])
        self.capacity = capacity

    def compact(self, oldest_s: float) -> None:
        """Drop entities whose latest sample is older than ``oldest_s`` (none left in window)."""
        n = len(self.names)
        keep = np.flatnonzero(self.last_s[:n] >= oldest_s)
        if len(keep) == n:
            return
        capacity = max(_MIN_COLUMNS, len(keep) * 2)
        pad = capacity - len(keep)
        for f in self.fields:
            self.data[f] = np.concatenate(
                [self.data[f][:, keep], np.full((self.slots, pad), np.nan, dtype=_DTYPE)], axis=1
            )
            self.last[f] = np.concatenate([self.last[f][keep], np.full(pad, np.nan, dtype=_DTYPE)])
        self.last_s = np.concatenate([self.last_s[keep], np.full(pad, np.nan)])
        self.host_of = np.concatenate([self.host_of[keep], np.full(pad, "", dtype=object)])
        self.names = [self.names[i] for i in keep]
        self.index = {name: i for i, name in enumerate(self.names)}
        self.capacity = capacity

    # -- rows --------------------------------------------------------------------------------
    def row_for(self, time_s: float) -> int | None:
        """The row of ``time_s``'s slot, cleared if it held an older slot; None if too old."""
        slot = math.floor(time_s / self.interval_s)
        if self.newest_slot >= 0 and slot <= self.newest_slot - self.slots:
            self.dropped_late += 1
            return None
        self.newest_slot = max(self.newest_slot, slot)
        row = slot % self.slots
        if self.slot_ids[row] != slot:
            for f in self.fields:
                self.data[f][row, :] = np.nan
            self.slot_ids[row] = slot
        return row

    def write(
        self, time_s: float, cols: npt.NDArray[np.intp], values: dict[str, npt.NDArray[np.floating]]
    ) -> npt.NDArray[np.bool_]:
        """Write one sample per column; returns which of ``cols`` took it as their latest
        sample (an out-of-order sample is stored in its slot but does not become "latest"; a
        sample older than the window is dropped: all False)."""
        row = self.row_for(time_s)
        if row is None:
            return np.zeros(len(cols), dtype=np.bool_)
        newer = ~(self.last_s[cols] > time_s)
        latest = cols[newer]
        for f in self.fields:
            v = values[f]
            self.data[f][row, cols] = v
            self.last[f][latest] = v[newer]
        self.last_s[latest] = time_s
        return newer

    def in_window(
        self, now_s: float, window_s: float
    ) -> tuple[npt.NDArray[np.intp], npt.NDArray[np.float64]]:
        """Rows whose slot lies in ``(now - window, now]``, oldest first, and their slot times."""
        first = math.floor((now_s - window_s) / self.interval_s) + 1
        last = math.floor(now_s / self.interval_s)
        ok = (self.slot_ids >= first) & (self.slot_ids <= last)
        rows = np.flatnonzero(ok)
        rows = rows[np.argsort(self.slot_ids[rows])]
        return rows, self.slot_ids[rows].astype(np.float64) * self.interval_s

    @property
    def nbytes(self) -> int:
        total = self.slot_ids.nbytes + self.last_s.nbytes + self.host_of.nbytes
        total += sum(a.nbytes for a in self.data.values())
        total += sum(a.nbytes for a in self.last.values())
        return total


@dataclass(frozen=True, slots=True, kw_only=True)
class StaleEntity:
    kind: EntityKind
    name: str
    #: None when the entity was never sampled
    last_sample: datetime | None
    age_s: float | None
    #: False for hosts not in state ``active`` and their VMs: their state already governs them
    blocks_balancing: bool


@dataclass(frozen=True, slots=True, kw_only=True)
class Freshness:
    """Staleness verdict: balancing moves pause while any blocking entity is stale.

    Maintenance evacuations are not affected: they do not depend on measured demand."""

    time: datetime
    stale_after_s: float
    stale: tuple[StaleEntity, ...] = ()

    @property
    def balancing_allowed(self) -> bool:
        return not any(s.blocks_balancing for s in self.stale)

    @property
    def evacuations_allowed(self) -> bool:
        return True

    def explain(self) -> str:
        blocking = [s for s in self.stale if s.blocks_balancing]
        if not blocking:
            return "all samples are fresh"
        names = ", ".join(f"{s.kind.value} {s.name}" for s in blocking[:5])
        more = f" and {len(blocking) - 5} more" if len(blocking) > 5 else ""
        return (
            f"balancing paused: no sample for more than {self.stale_after_s:g} s from {names}{more}"
        )


@dataclass(frozen=True, slots=True, kw_only=True)
class DemandView:
    """What the service decides on: the demand snapshot and whether the data is fresh."""

    time: datetime
    snapshot: Snapshot
    freshness: Freshness
    #: VMs / hosts whose figures come from the window (the others keep the input snapshot's)
    measured_vms: int
    measured_hosts: int


class Window:
    """Recent samples of every host and VM, bounded in memory (see the module docstring)."""

    def __init__(self, settings: CollectorSettings) -> None:
        self.settings = settings
        slots = settings.window_slots
        self.hosts = _Ring(HOST_FIELDS, slots, settings.sample_interval_s)
        self.vms = _Ring(VM_FIELDS, slots, settings.sample_interval_s)
        #: held by every ingest and by demand_view/freshness (the service ingests from the API
        #: thread and decides on the scheduler thread)
        self.lock = threading.RLock()
        #: latest agent sample time per host (agent samples win over the port's)
        self._agent_last: dict[str, float] = {}

    # -- ingest ------------------------------------------------------------------------------
    def ingest(self, batch: SampleBatch) -> SampleBatch:
        """Add a batch: VM samples first, then host samples (their overhead uses the VMs').

        A port host sample is left out while the host has an agent sample not older than
        ``stale_after_s`` (the agent measures the whole host). Returns what was taken (for
        export, so a host's series has one writer)."""
        with self.lock:
            if batch.vms:
                by_time: dict[float, list[int]] = {}
                for i, s in enumerate(batch.vms):
                    by_time.setdefault(epoch_s(s.time), []).append(i)
                for t, idx in sorted(by_time.items()):
                    vms = [batch.vms[i] for i in idx]
                    self.ingest_vm_columns(
                        t,
                        [s.vm for s in vms],
                        [s.host for s in vms],
                        np.fromiter((s.cpu_used_cores for s in vms), _DTYPE, len(vms)),
                        np.fromiter((s.memory_used_mib for s in vms), _DTYPE, len(vms)),
                    )
            taken: list[HostSample] = []
            for h in batch.hosts:
                t = epoch_s(h.time)
                if h.source is SampleSource.AGENT:
                    self._agent_last[h.host] = max(t, self._agent_last.get(h.host, t))
                elif t - self._agent_last.get(h.host, -math.inf) <= self.settings.stale_after_s:
                    continue
                self.ingest_host(t, h.host, h.cpu_used_cores, h.memory_used_mib)
                taken.append(h)
        if len(taken) == len(batch.hosts):
            return batch
        return replace(batch, hosts=tuple(taken))

    def ingest_vm_columns(
        self,
        time_s: float,
        names: Sequence[str],
        hosts: Sequence[str],
        cpu_used_cores: npt.NDArray[np.floating],
        memory_used_mib: npt.NDArray[np.floating],
    ) -> None:
        """Columnar ingest of VM samples taken at one time (the fast path)."""
        ring = self.vms
        with self.lock:
            cols = ring.columns(names)
            newer = ring.write(
                time_s,
                cols,
                {
                    "cpu_used_cores": np.asarray(cpu_used_cores, _DTYPE),
                    "memory_used_mib": np.asarray(memory_used_mib, _DTYPE),
                },
            )
            ring.host_of[cols[newer]] = np.asarray(hosts, dtype=object)[newer]
            self._maybe_compact(ring, time_s)

    def ingest_host(
        self, time_s: float, host: str, cpu_used_cores: float, memory_used_mib: float
    ) -> None:
        """A host's total use at ``time_s``; its unmanaged load is derived here."""
        with self.lock:
            vm_cpu, vm_mem = self._vm_sums(time_s, host)
            cols = self.hosts.columns([host])
            self.hosts.write(
                time_s,
                cols,
                {
                    "cpu_used_cores": np.array([cpu_used_cores], _DTYPE),
                    "memory_used_mib": np.array([memory_used_mib], _DTYPE),
                    "overhead_cpu_cores": np.array([max(0.0, cpu_used_cores - vm_cpu)], _DTYPE),
                    "overhead_memory_mib": np.array([max(0.0, memory_used_mib - vm_mem)], _DTYPE),
                },
            )
            self._maybe_compact(self.hosts, time_s)

    def _vm_sums(self, time_s: float, host: str) -> tuple[float, float]:
        ring = self.vms
        n = len(ring.names)
        fresh = (ring.host_of[:n] == host) & (
            ring.last_s[:n] >= time_s - self.settings.stale_after_s
        )
        cpu = float(np.nansum(ring.last["cpu_used_cores"][:n][fresh], dtype=np.float64))
        mem = float(np.nansum(ring.last["memory_used_mib"][:n][fresh], dtype=np.float64))
        return cpu, mem

    def _maybe_compact(self, ring: _Ring, now_s: float) -> None:
        n = len(ring.names)
        oldest = now_s - self.settings.window_s
        dead = int(np.count_nonzero(~(ring.last_s[:n] >= oldest)))  # NaN: never written
        if dead and dead >= max(64, n // 4):
            ring.compact(oldest)

    # -- reads -------------------------------------------------------------------------------
    def _ring(self, kind: EntityKind) -> _Ring:
        return self.hosts if kind is EntityKind.HOST else self.vms

    def frame(self, kind: EntityKind, field: str, now: datetime) -> pd.DataFrame:
        """The window of one resource as a DataFrame: UTC time index (slot starts), one column
        per entity (a copy; for inspection, export and tests)."""
        with self.lock:
            return self._frame(kind, field, now)

    def _frame(self, kind: EntityKind, field: str, now: datetime) -> pd.DataFrame:
        ring = self._ring(kind)
        rows, times = ring.in_window(epoch_s(now), self.settings.window_s)
        n = len(ring.names)
        return pd.DataFrame(
            ring.data[field][rows, :n],
            columns=list(ring.names),
            index=pd.to_datetime(times, unit="s", utc=True),
        )

    def demand(self, kind: EntityKind, field: str, now: datetime) -> dict[str, float]:
        """Demand (see :mod:`collectors.demand`) of every entity with a sample in the window."""
        with self.lock:
            names, values = self._demand_array(kind, field, epoch_s(now))
        return {n: float(v) for n, v in zip(names, values, strict=True) if not np.isnan(v)}

    def _demand_array(
        self, kind: EntityKind, field: str, now_s: float
    ) -> tuple[list[str], npt.NDArray[np.float64]]:
        ring = self._ring(kind)
        rows, times = ring.in_window(now_s, self.settings.window_s)
        n = len(ring.names)
        block = ring.data[field][rows, :n]
        values = demand(
            block, now_s - times, halflife_s=self.settings.halflife_s, q=self.settings.percentile
        )
        return ring.names, values

    def last_sample(self, kind: EntityKind, name: str) -> datetime | None:
        ring = self._ring(kind)
        col = ring.index.get(name)
        if col is None or np.isnan(ring.last_s[col]):
            return None
        return from_epoch_s(float(ring.last_s[col]))

    @property
    def nbytes(self) -> int:
        """Bytes held by the window's arrays (the bounded part)."""
        return self.hosts.nbytes + self.vms.nbytes

    @property
    def dropped_late(self) -> int:
        """Samples dropped because they were older than the window when they arrived."""
        return self.hosts.dropped_late + self.vms.dropped_late


def freshness(window: Window, snapshot: Snapshot, now: datetime) -> Freshness:
    """Which hosts and VMs of ``snapshot`` have no sample newer than ``stale_after_s``."""
    with window.lock:
        return _freshness(window, snapshot, now)


def _freshness(window: Window, snapshot: Snapshot, now: datetime) -> Freshness:
    now_s = epoch_s(now)
    limit = window.settings.stale_after_s
    active = {h.name for h in snapshot.hosts if h.state is HostState.ACTIVE}
    stale: list[StaleEntity] = []
    for kind, ring, items in (
        (EntityKind.HOST, window.hosts, [(h.name, h.name) for h in snapshot.hosts]),
        (EntityKind.VM, window.vms, [(v.name, v.host) for v in snapshot.vms]),
    ):
        if not items:
            continue
        cols = np.fromiter((ring.index.get(name, -1) for name, _ in items), np.intp, len(items))
        last = np.where(cols >= 0, ring.last_s[np.maximum(cols, 0)], np.nan)
        age = now_s - last
        bad = np.flatnonzero(np.isnan(age) | (age > limit))
        for i in bad:
            name, host = items[i]
            never = bool(np.isnan(age[i]))
            stale.append(
                StaleEntity(
                    kind=kind,
                    name=name,
                    last_sample=None if never else from_epoch_s(float(last[i])),
                    age_s=None if never else float(age[i]),
                    blocks_balancing=host in active,
                )
            )
    return Freshness(time=now, stale_after_s=limit, stale=tuple(stale))


def demand_view(window: Window, snapshot: Snapshot, now: datetime) -> DemandView:
    """A new snapshot whose figures are the window's demand, and the freshness verdict.

    * VM ``cpu_used_cores`` / ``memory_used_mib`` = demand of the VM's samples;
    * host ``overhead_cpu_cores`` / ``overhead_memory_mib`` = demand of the host's unmanaged
      load (total measured use minus its VMs' use at each host sample);
    * entities without a sample in the window keep the input snapshot's figures (and show as
      stale in ``freshness``)."""
    with window.lock:
        return _demand_view(window, snapshot, now)


def _demand_view(window: Window, snapshot: Snapshot, now: datetime) -> DemandView:
    now_s = epoch_s(now)
    vm_names, vm_cpu = window._demand_array(EntityKind.VM, "cpu_used_cores", now_s)
    _, vm_mem = window._demand_array(EntityKind.VM, "memory_used_mib", now_s)
    h_names, h_cpu = window._demand_array(EntityKind.HOST, "overhead_cpu_cores", now_s)
    _, h_mem = window._demand_array(EntityKind.HOST, "overhead_memory_mib", now_s)
    vm_index = window.vms.index
    host_index = window.hosts.index
    del vm_names, h_names

    vms = []
    measured_vms = 0
    for v in snapshot.vms:
        col = vm_index.get(v.name)
        if col is None or np.isnan(vm_cpu[col]):
            vms.append(v)
            continue
        measured_vms += 1
        mem = vm_mem[col]
        vms.append(
            replace(
                v,
                # a VM uses at most its vCPUs and its memory: a sample above them is timing
                # jitter of the counters (measured on the lab: 1.006 cores of a 1-vCPU guest)
                cpu_used_cores=round(min(float(vm_cpu[col]), float(v.vcpus)), 4),
                memory_used_mib=v.memory_used_mib
                if np.isnan(mem)
                else min(round(float(mem)), v.memory_mib),
            )
        )
    hosts = []
    measured_hosts = 0
    for h in snapshot.hosts:
        col = host_index.get(h.name)
        if col is None or np.isnan(h_cpu[col]):
            hosts.append(h)
            continue
        measured_hosts += 1
        mem = h_mem[col]
        hosts.append(
            replace(
                h,
                overhead_cpu_cores=round(float(h_cpu[col]), 4),
                overhead_memory_mib=h.overhead_memory_mib if np.isnan(mem) else round(float(mem)),
            )
        )
    return DemandView(
        time=now,
        snapshot=replace(snapshot, hosts=tuple(hosts), vms=tuple(vms)),
        freshness=_freshness(window, snapshot, now),
        measured_vms=measured_vms,
        measured_hosts=measured_hosts,
    )
