"""Tiny traces and runs for the simulation tests."""

from __future__ import annotations

import gzip
from collections.abc import Sequence
from pathlib import Path

import numpy as np

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
