"""A whole simulation run: trace files, hosts, a policy (or the baseline ``none``), one or more
days, independent (the PlanetLab layout) or one continuous trace (a directory with ``vms.csv``,
:mod:`balancer.simulation.continuous`). The shell around
:func:`balancer.simulation.engine.simulate_trace` (reads files)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from balancer.errors import InputError
from balancer.inputs import MAX_TRACE_FILES, TRACE, check_regular, files_in
from balancer.model import Host
from balancer.simulation.continuous import day_label, is_continuous, load_continuous
from balancer.simulation.decide import Decider, NeverMigrate, ServiceDecider
from balancer.simulation.engine import (
    DayResult,
    SimConfig,
    combine,
    simulate_day,
    simulate_trace,
)
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
    #: the figures over the report range (all days when no range is given)
    figures: Figures
    #: the figures over every simulated day
    all_figures: Figures | None = None
    #: one continuous trace on one cluster (the bitbrains layout), or independent days
    continuous: bool = False
    #: the report range: first and last day, numbered from 1 (None: every day)
    report_days: tuple[int, int] | None = None

    @property
    def report(self) -> tuple[DayResult, ...]:
        """The days of the report range."""
        if self.report_days is None:
            return self.days
        first, last = self.report_days
        return self.days[first - 1 : last]


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


def _report_range(report_days: tuple[int, int] | None, simulated: int) -> tuple[int, int] | None:
    if report_days is None:
        return None
    first, last = report_days
    if not 1 <= first <= last <= simulated:
        raise InputError(
            f"--report-days {first}-{last}: the run simulates days 1-{simulated}",
            subject=f"{first}-{last}",
        )
    return report_days


def run(
    traces: str | Path,
    hosts_spec: str,
    policy: str,
    config: SimConfig,
    *,
    days: int | None = None,
    report_days: tuple[int, int] | None = None,
    progress: RunProgress | None = None,
    files: Sequence[Path] | None = None,
) -> RunResult:
    """Simulate a trace directory (or file).

    * **Continuous** (a directory with ``vms.csv``, :mod:`balancer.simulation.continuous`): the
      first ``days`` day files (default: all) as one trace on one cluster.
    * **Independent days** (the PlanetLab layout): ``days`` days (default 1); day ``k`` replays
      trace file ``k`` (looping over the files), each on a fresh cluster with the same hosts
      (the PlanetLab days are separate VM sets).

    ``report_days`` (first, last; numbered from 1) limits :attr:`RunResult.figures` to those
    days (learning days excluded); every day keeps its own :class:`DayResult`."""
    if days is not None and days < 1:
        raise InputError("--days must be at least 1")
    found = list(files) if files is not None else trace_files(traces)
    hosts, types = hosts_from(hosts_spec)
    decider = decider_for(policy, config)
    name = decider.name if policy == NONE else policy
    if is_continuous(traces):
        trace = load_continuous(Path(traces), found, days=days, steps_per_day=config.steps)
        report = _report_range(report_days, len(trace.days))
        results = simulate_trace(
            trace.traces,
            hosts,
            types,
            decider,
            config,
            days=trace.days,
            vms=trace.vms,
            progress=progress,
        )
        everything = combine(results, hosts=len(hosts), continuous=True)
        result = RunResult(
            policy=name,
            hosts_spec=hosts_spec,
            config=config,
            days=results,
            figures=everything,
            all_figures=everything,
            continuous=True,
            report_days=report,
        )
        if report is None:
            return result
        return replace(result, figures=combine(result.report, hosts=len(hosts), continuous=True))
    n_days = 1 if days is None else days
    report = _report_range(report_days, n_days)
    chosen = [found[k % len(found)] for k in range(n_days)]
    loaded = [load_day(f) for f in chosen]
    per_day = [t.steps if config.steps is None else min(config.steps, t.steps) for t in loaded]
    total = sum(per_day)
    done = 0
    out: list[DayResult] = []
    for k, (path, tr) in enumerate(zip(chosen, loaded, strict=True)):
        offset = done

        def tick(i: int, n: int, offset: int = offset) -> None:
            if progress is not None:
                progress(offset + i, total)

        label = day_label(path) if n_days <= len(found) else f"{day_label(path)}#{k + 1}"
        out.append(simulate_day(tr, hosts, types, decider, config, label=label, progress=tick))
        done += per_day[k]
    everything = combine(out, hosts=len(hosts))
    result = RunResult(
        policy=name,
        hosts_spec=hosts_spec,
        config=config,
        days=tuple(out),
        figures=everything,
        all_figures=everything,
        report_days=report,
    )
    if report is None:
        return result
    return replace(result, figures=combine(result.report, hosts=len(hosts)))
