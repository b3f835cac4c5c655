"""Trace replay for simulations: per-VM CPU utilisation series from CSV files, scaled to each
VM's vCPUs.

File format (the PlanetLab files in ``/work/shared/traces/planetlab``): one row per trace, first
column the trace's name, then one column per step with the utilisation in percent of the VM's
allotted capacity; plain or gzipped CSV (by the file name). Loading is the only I/O here;
:class:`TraceSampler` is pure given the loaded :class:`TraceSet` and takes time as an argument.

Replay: at time ``now`` the step is ``floor((now - start) / step_s)``, wrapped around the trace
length (``loop=True``) or held at the last step; the value is held for the whole step
(sample-and-hold, no interpolation). VM ``v`` follows trace ``assignment[v]`` when given, else
trace ``crc32(v) mod n`` (stable when VMs come and go). ``cpu_used_cores = vcpus * percent / 100``.
"""

from __future__ import annotations

import io
import math
import zlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pandas as pd

from balancer.errors import InputError
from balancer.inputs import TRACE, read_text
from balancer.model import Snapshot
from collectors.sampler import batch_from_snapshot
from collectors.samples import SampleBatch, epoch_s

PLANETLAB_STEP_S = 300.0


@dataclass(frozen=True, slots=True, kw_only=True, eq=False)
class TraceSet:
    """Loaded traces: ``percent[i, k]`` is trace ``names[i]`` at step ``k`` (0..100)."""

    names: tuple[str, ...]
    percent: npt.NDArray[np.float32]
    step_s: float = PLANETLAB_STEP_S
    sources: tuple[str, ...] = field(default=())

    @property
    def steps(self) -> int:
        return int(self.percent.shape[1])


def read_trace_file(path: Path) -> tuple[list[str], npt.NDArray[np.float32]]:
    """One CSV(.gz) trace file: names and a (traces x steps) percent matrix. Read through
    :mod:`balancer.inputs`: a regular file, at most 64 MiB (also decompressed), strict UTF-8."""
    text = read_text(path, TRACE)
    try:
        frame = pd.read_csv(io.StringIO(text))
    except (OSError, ValueError) as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise InputError(f"{path}: cannot read trace file: {first}", subject=str(path)) from exc
    if frame.shape[1] < 2:
        raise InputError(
            f"{path}: a trace row needs a name and at least one value", subject=str(path)
        )
    values = frame.iloc[:, 1:].apply(pd.to_numeric, errors="coerce")
    if values.isna().to_numpy().any():
        bad_row = int(np.flatnonzero(values.isna().to_numpy().any(axis=1))[0])
        raise InputError(f"{path}: row {bad_row + 2}: non-numeric utilisation", subject=str(path))
    percent = np.clip(values.to_numpy(dtype=np.float32), 0.0, 100.0)
    return [str(n) for n in frame.iloc[:, 0]], percent


def load_traces(paths: Iterable[Path], *, step_s: float = PLANETLAB_STEP_S) -> TraceSet:
    """Load trace files; all must have the same number of steps (rows are concatenated)."""
    names: list[str] = []
    blocks: list[npt.NDArray[np.float32]] = []
    sources: list[str] = []
    for path in sorted(paths):
        file_names, percent = read_trace_file(path)
        if blocks and percent.shape[1] != blocks[0].shape[1]:
            raise InputError(
                f"{path}: {percent.shape[1]} steps, expected {blocks[0].shape[1]}",
                subject=str(path),
            )
        names.extend(f"{path.name}:{n}" for n in file_names)
        blocks.append(percent)
        sources.append(str(path))
    if not blocks:
        raise InputError("no trace files given")
    return TraceSet(
        names=tuple(names), percent=np.vstack(blocks), step_s=step_s, sources=tuple(sources)
    )


def assign_in_order(vm_names: Sequence[str], traces: TraceSet) -> dict[str, int]:
    """Trace ``i mod n`` drives the i-th VM (CloudSim's convention)."""
    return {name: i % len(traces.names) for i, name in enumerate(vm_names)}


class TraceSampler:
    """Replays a :class:`TraceSet` onto the VMs of a snapshot (see the module docstring)."""

    def __init__(
        self,
        traces: TraceSet,
        snapshot: Snapshot,
        *,
        start: datetime,
        assignment: Mapping[str, int] | None = None,
        loop: bool = True,
    ) -> None:
        self.traces = traces
        self.snapshot = snapshot
        self._start_s = epoch_s(start)
        self._assignment = dict(assignment or {})
        self._loop = loop

    def trace_of(self, vm: str) -> int:
        found = self._assignment.get(vm)
        if found is not None:
            return found % len(self.traces.names)
        return zlib.crc32(vm.encode()) % len(self.traces.names)

    def step_at(self, now: datetime) -> int:
        step = math.floor((epoch_s(now) - self._start_s) / self.traces.step_s)
        if self._loop:
            return step % self.traces.steps
        return min(max(step, 0), self.traces.steps - 1)

    def utilisation(self, vms: Sequence[str], now: datetime) -> npt.NDArray[np.float32]:
        """Utilisation (0..1 of the VM's vCPUs) of each VM at ``now``."""
        rows = np.fromiter((self.trace_of(v) for v in vms), np.intp, len(vms))
        out: npt.NDArray[np.float32] = self.traces.percent[rows, self.step_at(now)] / np.float32(
            100
        )
        return out

    def apply(self, snapshot: Snapshot, now: datetime) -> Snapshot:
        """``snapshot`` with each VM's ``cpu_used_cores`` set from its trace at ``now``."""
        util = self.utilisation([v.name for v in snapshot.vms], now)
        return snapshot.with_vms(
            replace(v, cpu_used_cores=round(float(v.vcpus * u), 4))
            for v, u in zip(snapshot.vms, util, strict=True)
        )

    def sample(self, now: datetime) -> SampleBatch:
        """Samples of every VM (and host totals: VMs plus the host's own use) at ``now``."""
        return batch_from_snapshot(self.apply(self.snapshot, now), now)
