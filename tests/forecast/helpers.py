"""Small continuous trace directories (the bitbrains layout) for the forecast tests."""

from __future__ import annotations

import gzip
from collections.abc import Sequence
from pathlib import Path

import numpy as np


def write_trace_dir(
    root: Path,
    *,
    days: int = 4,
    vms: Sequence[str] = ("a", "b", "c"),
    vcpus: Sequence[int] = (2, 4, 1),
    seed: int = 0,
) -> Path:
    """A directory with ``vms.csv`` and ``day01.csv.gz`` ...: a daily peak at 08:00 plus noise,
    in percent of each VM's capacity."""
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    (root / "vms.csv").write_text(
        "vm,vcpus,cpu_capacity_mhz,memory_mib\n"
        + "".join(f"{v},{c},{c * 2600}.0,4096\n" for v, c in zip(vms, vcpus, strict=True))
    )
    tod_h = np.arange(288) / 12.0
    shape = 20 + 60 * np.maximum(0, 1 - np.abs(tod_h - 8))
    for d in range(1, days + 1):
        rows = ["vm," + ",".join(f"t{i}" for i in range(288))]
        for v in vms:
            pct = np.clip(shape + rng.normal(0, 2, 288), 0, 100)
            rows.append(v + "," + ",".join(f"{x:.2f}" for x in pct))
        with gzip.open(root / f"day{d:02d}.csv.gz", "wt") as f:
            f.write("\n".join(rows) + "\n")
    return root
