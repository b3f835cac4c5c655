"""Continuous multi-day traces (the bitbrains layout) read as one demand matrix.

A directory holds ``vms.csv`` (``vm,vcpus,...``: one row per VM) and day files
``dayNN.csv(.gz)`` in the PlanetLab layout (``vm,t0..tK``, percent of the VM's provisioned
capacity) that list the same VMs; read in name order, they form one continuous trace.
Demand in cores is ``vcpus * percent / 100``. Every file is read through
:func:`collectors.trace.read_trace_file` / :mod:`balancer.inputs` (size and encoding limits);
every error is an :class:`~balancer.errors.InputError` naming the file (and the VM or field).
"""

from __future__ import annotations

import io
import math
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pandas as pd

from balancer.errors import InputError
from balancer.inputs import TRACE, read_text
from collectors.trace import PLANETLAB_STEP_S, read_trace_file

DAY_FILE = re.compile(r"^day\d+\.csv(\.gz)?$")


@dataclass(frozen=True, slots=True, kw_only=True, eq=False)
class ContinuousTrace:
    """``demand_cores[i, j]``: VM ``names[i]`` at step ``j`` of the whole trace."""

    names: tuple[str, ...]
    vcpus: npt.NDArray[np.int64]
    demand_cores: npt.NDArray[np.float32]
    step_s: float
    steps_per_file: tuple[int, ...]
    sources: tuple[str, ...]


def read_vms_csv(path: Path) -> dict[str, int]:
    """``vm -> vcpus`` from a ``vms.csv`` (columns ``vm`` and ``vcpus``, a positive integer)."""
    text = read_text(path, TRACE)
    try:
        frame = pd.read_csv(io.StringIO(text), dtype={"vm": str})
    except (OSError, ValueError) as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise InputError(f"{path}: cannot read VM list: {first}", subject=str(path)) from exc
    for col in ("vm", "vcpus"):
        if col not in frame.columns:
            raise InputError(f"{path}: missing column {col!r}", subject=str(path))
    out: dict[str, int] = {}
    for row, (vm, raw) in enumerate(zip(frame["vm"], frame["vcpus"], strict=True), start=2):
        try:
            value = float(raw)
        except (TypeError, ValueError):
            value = math.nan
        if not (math.isfinite(value) and value >= 1 and value == int(value) and value <= 4096):
            raise InputError(
                f"{path}: row {row}: vcpus {raw!r} is not a whole number in 1..4096",
                subject=str(path),
            )
        name = str(vm)
        if not name or name == "nan":
            raise InputError(f"{path}: row {row}: empty vm name", subject=str(path))
        if name in out:
            raise InputError(f"{path}: row {row}: VM {name!r} listed twice", subject=str(path))
        out[name] = int(value)
    if not out:
        raise InputError(f"{path}: no VMs", subject=str(path))
    return out


def read_continuous_trace(
    directory: Path, *, vms_csv: Path | None = None, step_s: float = PLANETLAB_STEP_S
) -> ContinuousTrace:
    """Read ``directory`` (see the module docstring); ``vms_csv`` defaults to its
    ``vms.csv``. The VMs are those of the first day file, in its order."""
    if not directory.is_dir():
        what = "does not exist" if not directory.exists() else "is not a directory"
        raise InputError(f"{directory}: trace directory {what}", subject=str(directory))
    files = sorted(p for p in directory.iterdir() if DAY_FILE.match(p.name))
    if not files:
        raise InputError(
            f"{directory}: no day files (dayNN.csv or dayNN.csv.gz)", subject=str(directory)
        )
    sizes = read_vms_csv(vms_csv or directory / "vms.csv")
    names: list[str] = []
    blocks: list[npt.NDArray[np.float32]] = []
    for path in files:
        file_names, percent = read_trace_file(path)
        if len(set(file_names)) != len(file_names):
            dup = next(n for n in file_names if file_names.count(n) > 1)
            raise InputError(f"{path}: VM {dup!r} listed twice", subject=str(path))
        if not names:
            names = file_names
            missing = [n for n in names if n not in sizes]
            if missing:
                where = vms_csv or directory / "vms.csv"
                raise InputError(
                    f"{where}: no row for VM {missing[0]!r} of {path.name}", subject=str(where)
                )
        elif set(file_names) != set(names):
            extra = sorted(set(file_names) - set(names))
            lost = sorted(set(names) - set(file_names))
            what = f"VM {extra[0]!r} is not in" if extra else f"VM {lost[0]!r} of"
            raise InputError(
                f"{path}: {what} {files[0].name} (day files must list the same VMs)",
                subject=str(path),
            )
        order = {n: i for i, n in enumerate(file_names)}
        blocks.append(percent[[order[n] for n in names]])
    vcpus = np.asarray([sizes[n] for n in names], dtype=np.int64)
    percent_all = np.hstack(blocks)
    demand = (percent_all * vcpus[:, None].astype(np.float32) / np.float32(100)).astype(np.float32)
    return ContinuousTrace(
        names=tuple(names),
        vcpus=vcpus,
        demand_cores=demand,
        step_s=step_s,
        steps_per_file=tuple(int(b.shape[1]) for b in blocks),
        sources=tuple(str(p) for p in files),
    )
