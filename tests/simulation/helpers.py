"""Tiny traces and runs for the simulation tests."""

from __future__ import annotations

import gzip
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest
from ortools.sat.python import cp_model

from balancer.optimizer import cpsat
from balancer.simulation.decide import Decider, NeverMigrate, ServiceDecider
from balancer.simulation.engine import DayResult, SimConfig, simulate_day
from balancer.simulation.spec import build_hosts, parse_host_spec, parse_vm_types
from collectors.trace import TraceSet
from policies.loader import load_policy
from policies.model import Policy

DEFAULT_POLICY = Path(__file__).resolve().parents[2] / "config" / "policies"


def trace_set(percent: Sequence[Sequence[float]], step_s: float = 300.0) -> TraceSet:
    arr = np.asarray(percent, dtype=np.float32)
    return TraceSet(names=tuple(f"t{i}" for i in range(len(arr))), percent=arr, step_s=step_s)


def hot_spot(steps: int = 24, n: int = 8, hot: Sequence[int] = (0, 4)) -> TraceSet:
    """All VMs idle at 10 %; from step 3 on the VMs in ``hot`` (which the naive round-robin
    start puts on one host) run at 95 %, for the rest of the trace."""
    p = np.full((n, steps), 10.0)
    for v in hot:
        p[v, 3:] = 95.0
    return trace_set(p)


def flat(steps: int = 24, n: int = 8, level: float = 30.0) -> TraceSet:
    return trace_set(np.full((n, steps), level))


def default_policy() -> Policy:
    return load_policy([DEFAULT_POLICY])


def simulate(
    traces: TraceSet,
    *,
    hosts: str = "4x(2c,16G)",
    vm_types: str = "(1.2c,2048)",
    decider: Decider | None = None,
    seed: int = 0,
    **config: object,
) -> DayResult:
    hs, types = build_hosts(parse_host_spec(hosts))
    cfg = SimConfig(seed=seed, vm_types=parse_vm_types(vm_types), **config)  # type: ignore[arg-type]
    return simulate_day(traces, hs, types, decider or NeverMigrate(), cfg)


def service(
    policy: Policy | None = None, seed: int = 0, time_limit_s: float = 0.3
) -> ServiceDecider:
    return ServiceDecider(
        policy or default_policy(), name="default", seed=seed, time_limit_s=time_limit_s
    )


def write_trace_dir(path: Path, days: int = 2, vms: int = 12, steps: int = 12) -> Path:
    """A tiny PlanetLab-format trace directory (gzipped, one file per day), seeded."""
    rng = np.random.default_rng(7)
    path.mkdir(parents=True, exist_ok=True)
    for d in range(days):
        values = np.clip(rng.normal(35, 25, (vms, steps)), 0, 100).astype(int)
        values[0, steps // 3 :] = 100  # a hot VM
        lines = ["vm," + ",".join(f"t{k}" for k in range(steps))]
        lines += [f"trace{i}," + ",".join(map(str, row)) for i, row in enumerate(values)]
        with gzip.open(path / f"2011030{d + 1}.csv.gz", "wt") as fh:
            fh.write("\n".join(lines) + "\n")
    return path


def no_wall_clock_cutoff(monkeypatch: pytest.MonkeyPatch) -> None:
    """The optimizer stops CP-SAT at a deterministic time limit, but also at a wall-clock
    safety net (3x the limit, at least 30 s); on a loaded machine the safety net fires first
    and the plan depends on the load (reported to the optimizer's owner; see docs/simulation.md,
    "Determinism"). Lifting the safety net here tests that the simulation itself adds no
    randomness."""
    original = cpsat.solver_for

    def solver_for(seed: int, time_limit_s: float) -> cp_model.CpSolver:
        solver = original(seed, time_limit_s)
        solver.parameters.max_time_in_seconds = 600.0
        return solver

    monkeypatch.setattr(cpsat, "solver_for", solver_for)


def write_continuous_dir(
    path: Path,
    *,
    days: int = 3,
    steps: int = 12,
    vms: int = 12,
    hot: Sequence[int] = (0, 4, 8),
    hot_from: int = 3,
    vcpus: int = 1,
    memory_mib: int = 2048,
) -> Path:
    """A tiny continuous trace directory (the bitbrains layout): ``vms.csv`` (rows in reverse
    order) and ``dayNN.csv.gz``; the same VMs ``bb0100``, ``bb0107``, ... every day, day 1 in
    name order and later days in reverse row order. Every VM idles at 10 %; the VMs in ``hot``
    (which the naive round-robin start puts on one host of four) run at 95 % from step
    ``hot_from`` of day 1 to the end of the trace."""
    path.mkdir(parents=True, exist_ok=True)
    names = [f"bb{100 + 7 * i:04d}" for i in range(vms)]
    rows = ["vm,vcpus,cpu_capacity_mhz,memory_mib"]
    rows += [f"{n},{vcpus},{2600.0 * vcpus},{memory_mib}" for n in reversed(names)]
    (path / "vms.csv").write_text("\n".join(rows) + "\n")
    for d in range(days):
        values = np.full((vms, steps), 10.0)
        for v in hot:
            values[v, hot_from if d == 0 else 0 :] = 95.0
        lines = ["vm," + ",".join(f"t{k}" for k in range(steps))]
        body = [
            f"{n}," + ",".join(f"{x:.2f}" for x in row)
            for n, row in zip(names, values, strict=True)
        ]
        lines += body if d == 0 else body[::-1]
        with gzip.open(path / f"day{d + 1:02d}.csv.gz", "wt") as fh:
            fh.write("\n".join(lines) + "\n")
    return path
