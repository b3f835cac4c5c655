"""A whole simulation run: trace files, hosts, a policy (or the baseline ``none``), one or more
days. The shell around :func:`balancer.simulation.engine.simulate_day` (reads files)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from balancer.errors import InputError
from balancer.inputs import MAX_TRACE_FILES, TRACE, check_regular, files_in
from balancer.model import Host
from balancer.simulation.decide import Decider, NeverMigrate, ServiceDecider
from balancer.simulation.engine import DayResult, SimConfig, combine, simulate_day
from balancer.simulation.figures import Figures
from balancer.simulation.spec import HostType, build_hosts, parse_host_spec
from balancer.snapshot_io import load_snapshot
from collectors.trace import TraceSet, load_traces
from policies.loader import load_policy

NONE = "none"
#: progress callback: (ticks done, ticks in all)
RunProgress = Callable[[int, int], None]


@dataclass(frozen=True, slots=True, kw_only=True)
class RunResult:
    policy: str
    hosts_spec: str
    config: SimConfig
    days: tuple[DayResult, ...]
    figures: Figures


def trace_files(path: str | Path) -> list[Path]:
    """The day files of a trace directory (``*.csv``, ``*.csv.gz``, sorted), or the one file."""
    p = Path(path)
    if p.is_file():
        return [p]
    if not p.is_dir():
        if p.exists():  # a FIFO, a device...: refused by name (balancer.inputs)
            check_regular(p, TRACE)
        raise InputError(f"{p}: no such trace file or directory", subject=str(p))
    files = files_in(p, ("*.csv", "*.csv.gz"), TRACE, MAX_TRACE_FILES)
    if not files:
        raise InputError(f"{p}: no *.csv or *.csv.gz trace file", subject=str(p))
    return files


def day_label(path: Path) -> str:
    return path.name.removesuffix(".gz").removesuffix(".csv")


def load_day(path: Path) -> TraceSet:
    return load_traces([path])


def hosts_from(spec: str) -> tuple[tuple[Host, ...], dict[str, HostType]]:
    """Hosts from a spec (see :mod:`balancer.simulation.spec`) or from a snapshot file (its
    hosts only, with the default watts)."""
    p = Path(spec)
    if p.suffix in (".json", ".yaml", ".yml") or p.is_file():
        snap = load_snapshot(p)
        hosts = tuple(h for h in snap.hosts)
        if not hosts:
            raise InputError(f"{p}: the snapshot has no hosts", subject=str(p))
        return hosts, {
            h.name: HostType(cpu_cores=h.cpu_cores, memory_mib=h.memory_mib) for h in hosts
        }
    return build_hosts(parse_host_spec(spec))


def decider_for(policy: str, config: SimConfig) -> Decider:
    """``none`` (the built-in baseline) or a policy file / directory."""
    if policy == NONE:
        return NeverMigrate()
    loaded = load_policy([policy])
    name = Path(policy).name.removesuffix(".yaml").removesuffix(".yml")
    return ServiceDecider(
        loaded, name=name, time_limit_s=config.solve_time_limit_s, seed=config.seed
    )


def run(
    traces: str | Path,
    hosts_spec: str,
    policy: str,
    config: SimConfig,
    *,
    days: int = 1,
    progress: RunProgress | None = None,
    files: Sequence[Path] | None = None,
) -> RunResult:
    """Simulate ``days`` days: day ``k`` replays trace file ``k`` (looping over the files),
    each on a fresh cluster with the same hosts (the PlanetLab days are separate VM sets)."""
    if days < 1:
        raise InputError("--days must be at least 1")
    found = list(files) if files is not None else trace_files(traces)
    hosts, types = hosts_from(hosts_spec)
    decider = decider_for(policy, config)
    chosen = [found[k % len(found)] for k in range(days)]
    loaded = [load_day(f) for f in chosen]
    per_day = [t.steps if config.steps is None else min(config.steps, t.steps) for t in loaded]
    total = sum(per_day)
    done = 0
    results: list[DayResult] = []
    for k, (path, tr) in enumerate(zip(chosen, loaded, strict=True)):
        offset = done

        def tick(i: int, n: int, offset: int = offset) -> None:
            if progress is not None:
                progress(offset + i, total)

        label = day_label(path) if days <= len(found) else f"{day_label(path)}#{k + 1}"
        results.append(simulate_day(tr, hosts, types, decider, config, label=label, progress=tick))
        done += per_day[k]
    return RunResult(
        policy=decider.name if policy == NONE else policy,
        hosts_spec=hosts_spec,
        config=config,
        days=tuple(results),
        figures=combine(results, hosts=len(hosts)),
    )
