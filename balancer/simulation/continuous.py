"""Continuous multi-day traces (the bitbrains layout): one trace of the same VMs across days.

A trace directory that holds a ``vms.csv`` is continuous:

* ``vms.csv``: a header ``vm,vcpus,cpu_capacity_mhz,memory_mib`` (in any column order), then one
  row per VM: its name, its vCPUs (a whole number, 1..65536), its provisioned CPU capacity in
  MHz (a finite number > 0; recorded, not used: host capacity is in cores) and its memory in
  MiB (a whole number, 1..2^30). Rows for VMs that are in no day file are ignored.
* The other ``*.csv`` / ``*.csv.gz`` files are the days, in name order, each in the PlanetLab
  format (:func:`collectors.trace.read_trace_file`): every file holds the same VM names (rows
  in any order); they are concatenated in time (day 2's first step follows day 1's last).
* VM ``v`` is named as in the trace, sized from its ``vms.csv`` row; its CPU demand in cores is
  ``vcpus x percent / 100``.

Errors are one :class:`~balancer.errors.InputError` naming the file, the line and the VM: a day
file whose VM set differs from the first day's, a VM twice in a file, a trace VM without a
``vms.csv`` row, a bad number in ``vms.csv``. :func:`parse_vm_sizes` is pure (text in);
:func:`load_continuous` reads the files through :mod:`balancer.inputs`.
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt

from balancer.errors import InputError
from balancer.inputs import VM_SIZES, printable, read_text
from balancer.model import MAX_MEMORY_MIB, MAX_VCPUS
from balancer.simulation.engine import SimVM, TraceDay
from collectors.trace import TraceSet, read_trace_file

VMS_FILE = "vms.csv"
COLUMNS = ("vm", "vcpus", "cpu_capacity_mhz", "memory_mib")
#: the largest CPU capacity accepted in ``vms.csv`` (MHz): 65536 vCPUs at 100 GHz
MAX_CAPACITY_MHZ = 65_536 * 100_000.0


@dataclass(frozen=True, slots=True, kw_only=True)
class VmSize:
    """One ``vms.csv`` row."""

    vm: str
    vcpus: int
    cpu_capacity_mhz: float
    memory_mib: int
    line: int


@dataclass(frozen=True, slots=True, kw_only=True, eq=False)
class ContinuousTrace:
    """A continuous trace: ``traces.percent[i]`` is VM ``vms[i]`` over all days, the days
    following each other in its columns."""

    traces: TraceSet
    days: tuple[TraceDay, ...]
    vms: tuple[SimVM, ...]
    files: tuple[Path, ...]


def is_continuous(path: str | Path) -> bool:
    """A directory that holds a ``vms.csv`` (whatever it is: reading refuses a non-file)."""
    p = Path(path)
    return p.is_dir() and (p / VMS_FILE).exists()


def _whole(raw: str, field: str, maximum: int, where: str, path: str) -> int:
    try:
        value = int(raw.strip())
    except ValueError:
        value = 0
    if not 0 < value <= maximum:
        raise InputError(
            f"{where}: {field} {printable(raw)!r} is not a whole number in 1..{maximum}",
            subject=path,
        )
    return value


def parse_vm_sizes(text: str, path: str) -> tuple[VmSize, ...]:
    """The rows of a ``vms.csv`` (see the module docstring). Pure: ``path`` only names errors."""
    reader = csv.reader(io.StringIO(text))
    header: list[str] | None = None
    rows: list[VmSize] = []
    seen: dict[str, int] = {}
    for record in reader:
        line = reader.line_num
        if not any(c.strip() for c in record):
            continue
        if header is None:
            header = [c.strip() for c in record]
            missing = [c for c in COLUMNS if c not in header]
            if missing:
                raise InputError(
                    f"{path}: line {line}: the header needs the columns {','.join(COLUMNS)} "
                    f"(missing: {', '.join(missing)})",
                    subject=path,
                )
            continue
        if len(record) != len(header):
            raise InputError(
                f"{path}: line {line}: {len(record)} fields, the header has {len(header)}",
                subject=path,
            )
        cells = dict(zip(header, record, strict=True))
        vm = cells["vm"].strip()
        if not vm or len(vm) > 253 or not vm.isprintable():
            raise InputError(f"{path}: line {line}: bad VM name {printable(vm)!r}", subject=path)
        where = f"{path}: line {line}: VM {vm}"
        if vm in seen:
            raise InputError(f"{where}: given twice (also line {seen[vm]})", subject=path)
        seen[vm] = line
        try:
            capacity = float(cells["cpu_capacity_mhz"].strip())
        except ValueError:
            capacity = math.nan
        if not (math.isfinite(capacity) and 0 < capacity <= MAX_CAPACITY_MHZ):
            raise InputError(
                f"{where}: cpu_capacity_mhz {printable(cells['cpu_capacity_mhz'])!r} is not a "
                f"number in (0, {MAX_CAPACITY_MHZ:.0f}]",
                subject=path,
            )
        rows.append(
            VmSize(
                vm=vm,
                vcpus=_whole(cells["vcpus"], "vcpus", MAX_VCPUS, where, path),
                cpu_capacity_mhz=capacity,
                memory_mib=_whole(cells["memory_mib"], "memory_mib", MAX_MEMORY_MIB, where, path),
                line=line,
            )
        )
    if header is None:
        raise InputError(f"{path}: empty: no header {','.join(COLUMNS)}", subject=path)
    return tuple(rows)


def read_vm_sizes(path: Path) -> tuple[VmSize, ...]:
    return parse_vm_sizes(read_text(path, VM_SIZES), str(path))


def day_files(files: Sequence[Path]) -> list[Path]:
    """The day files among a continuous directory's CSV files (all but ``vms.csv``)."""
    return [f for f in files if f.name != VMS_FILE]


def _day_rows(path: Path, names: list[str], first: Path, order: dict[str, int]) -> list[int]:
    """Row of each VM of the first day (``order``; empty: this is the first day) in this
    file; the VM sets must be equal."""
    lines: dict[str, int] = {}
    for i, name in enumerate(names):
        if name in lines:
            raise InputError(
                f"{path}: line {i + 2}: VM {printable(name)} given twice (also line {lines[name]})",
                subject=str(path),
            )
        lines[name] = i + 2
        if order and name not in order:
            raise InputError(
                f"{path}: line {i + 2}: VM {printable(name)} is not in {first.name}"
                " (every day file must hold the same VMs)",
                subject=str(path),
            )
    missing = [n for n in order if n not in lines]
    if missing:
        raise InputError(
            f"{path}: no row for VM {printable(missing[0])} of {first.name}"
            f"{f' (and {len(missing) - 1} more)' if len(missing) > 1 else ''}"
            " (every day file must hold the same VMs)",
            subject=str(path),
        )
    return [lines[n] - 2 for n in order] if order else list(range(len(names)))


def day_label(path: Path) -> str:
    return path.name.removesuffix(".gz").removesuffix(".csv")


def load_continuous(
    directory: Path,
    files: Sequence[Path],
    *,
    days: int | None = None,
    steps_per_day: int | None = None,
) -> ContinuousTrace:
    """Read a continuous trace: ``files`` are the directory's CSV files (``vms.csv`` among
    them or not), the first ``days`` day files are used, each cut to ``steps_per_day`` steps."""
    found = day_files(files)
    if not found:
        raise InputError(f"{directory}: no day file beside {VMS_FILE}", subject=str(directory))
    if days is not None and days > len(found):
        raise InputError(
            f"--days {days}: the continuous trace {directory} has {len(found)} days",
            subject=str(directory),
        )
    chosen = found[: days or len(found)]
    order: dict[str, int] = {}
    first_lines: dict[str, int] = {}
    blocks: list[npt.NDArray[np.float32]] = []
    out_days: list[TraceDay] = []
    for path in chosen:
        names, percent = read_trace_file(path)
        rows = _day_rows(path, names, chosen[0], order)
        if not order:
            order = {n: i for i, n in enumerate(names)}
            first_lines = {n: i + 2 for i, n in enumerate(names)}
        block = percent[rows]
        if steps_per_day is not None:
            block = block[:, :steps_per_day]
        blocks.append(block)
        out_days.append(TraceDay(label=day_label(path), steps=int(block.shape[1])))
    vms_path = directory / VMS_FILE
    sizes = {s.vm: s for s in read_vm_sizes(vms_path)}
    vms: list[SimVM] = []
    for name in order:
        size = sizes.get(name)
        if size is None:
            raise InputError(
                f"{vms_path}: no row for VM {printable(name)} "
                f"({chosen[0].name} line {first_lines[name]})",
                subject=str(vms_path),
            )
        vms.append(
            SimVM(
                name=name,
                vcpus=size.vcpus,
                cpu_cores=float(size.vcpus),
                memory_mib=size.memory_mib,
            )
        )
    traces = TraceSet(
        names=tuple(order),
        percent=np.ascontiguousarray(np.hstack(blocks)),
        sources=tuple(str(p) for p in chosen),
    )
    return ContinuousTrace(traces=traces, days=tuple(out_days), vms=tuple(vms), files=tuple(chosen))
