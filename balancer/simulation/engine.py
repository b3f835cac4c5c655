"""The simulation loop: trace demand -> collect -> decide -> execute -> advance the clock.

One run replays one trace set on a fresh :class:`~balancer.sim.cluster.SimulatedCluster`
driven by a :class:`~balancer.sim.clock.ManualClock`: one day of PlanetLab (288 five-minute
steps, :func:`simulate_day`), or the days of a continuous trace one after the other on the same
cluster (:func:`simulate_trace`: one initial placement, clock, collectors window and move
history; a :class:`DayResult` per day). Per run:

* **VMs**: one per trace; VM ``i`` follows trace ``i``; its size is VM type ``i mod k``
  (``vm_pick="modulo"``, the paper's convention) or drawn with the seed (``"random"``), or
  given (:class:`SimVM`: a continuous trace's ``vms.csv``).
* **Initial placement**: the balancer's own. The optimizer has no initial-placement entry point,
  so a deliberately naive start (VMs round-robin over the hosts, skipping a host whose memory
  is full) is handed to :func:`balancer.optimizer.optimize` with the built-in default policy at
  threshold 5 (the tightest target: placing costs no migration, so there is no reason to stop
  at a looser one) and an unlimited move budget, and its target placement is taken as the
  start (no migration is counted for it). The same start is used whatever policy is simulated.
* **Every tick** (one trace step): the VMs' CPU use is set from the traces
  (:class:`collectors.trace.TraceSampler`, scaled to each VM's cores), the port is sampled into
  the collectors' :class:`~collectors.window.Window`; every decision interval the demand view
  (``max(EWM, p95)`` over the window) goes to the decider (:mod:`balancer.simulation.decide`;
  it also ``observe``-s the raw snapshot on every tick, before deciding), whose moves run on
  the simulated cluster (:class:`~balancer.simulation.execute.StepRunner`):
  migrations take simulated time (memory and dirty rate, the cluster's pre-copy model) and
  load both hosts while they run. Then the clock advances to the next tick.

Everything but the decision time is deterministic: same traces, hosts, policy and seed give the
same figures.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta

import numpy as np
import numpy.typing as npt

from balancer.errors import InputError
from balancer.model import VM, Host, HostState, Snapshot
from balancer.optimizer import optimize
from balancer.port import MigrationOptions
from balancer.service.store import MoveRecord
from balancer.sim.clock import ManualClock
from balancer.sim.cluster import DEFAULT_LINK_MIB_S, SimulatedCluster
from balancer.simulation.decide import Decider, Decision
from balancer.simulation.execute import ExecutorRunner, StepRunner
from balancer.simulation.figures import (
    Figures,
    Flight,
    MigrationRecord,
    TickRecord,
    imbalance,
    power_w,
    summarize,
    tick_overload,
)
from balancer.simulation.spec import PAPER_VM_TYPES, HostType, VMType
from balancer.storage import Store
from collectors.sampler import batch_from_snapshot
from collectors.settings import CollectorSettings
from collectors.trace import TraceSampler, TraceSet
from collectors.window import Window, demand_view
from policies.model import Limits, Policy

START = datetime(2026, 1, 1, tzinfo=UTC)
ProgressFn = Callable[[int, int], None]


@dataclass(frozen=True, slots=True, kw_only=True)
class SimConfig:
    #: decision interval (a multiple of the trace step)
    interval_s: float = 300.0
    seed: int = 0
    vm_types: tuple[VMType, ...] = PAPER_VM_TYPES
    #: "modulo": VM i gets type i mod k; "random": drawn with the seed
    vm_pick: str = "modulo"
    #: the optimizer's time limit per decision (deterministic time of CP-SAT)
    solve_time_limit_s: float = 0.3
    #: extra CPU on source and target while a migration copies memory
    migration_cpu_cores: float = 0.25
    link_mib_s: float = DEFAULT_LINK_MIB_S
    #: the collectors' window over the trace samples (one sample per trace step)
    window_s: float = 3600.0
    percentile: float = 95.0
    halflife_s: float = 600.0
    #: steps to simulate (None: the whole trace)
    steps: int | None = None
    start: datetime = START
    #: "executor": the balancer's executor (journal in memory); "steps": the light adapter
    runner: str = "executor"


@dataclass(frozen=True, slots=True, kw_only=True)
class DayResult:
    label: str
    figures: Figures
    ticks: tuple[TickRecord, ...]
    migrations: tuple[MigrationRecord, ...]
    host_names: tuple[str, ...]
    #: CPU load per tick (rows) and host (columns) at the start of each tick
    host_load: npt.NDArray[np.float32]
    tick_s: float
    initial_moves: int = 0
    extra: dict[str, float] = field(default_factory=dict)


def make_vms(
    traces: TraceSet, vm_types: Sequence[VMType], *, pick: str, seed: int
) -> list[tuple[str, VMType]]:
    """One VM per trace: (name, type). Pure."""
    if not vm_types:
        raise InputError("no VM types given")
    n = len(traces.names)
    width = max(4, len(str(n - 1)))
    rng = random.Random(seed)
    out = []
    for i in range(n):
        if pick == "modulo":
            t = vm_types[i % len(vm_types)]
        elif pick == "random":
            t = vm_types[rng.randrange(len(vm_types))]
        else:
            raise InputError(f"unknown VM type pick {pick!r} (modulo | random)", subject=pick)
        out.append((f"vm{i:0{width}d}", t))
    return out


def naive_start(hosts: Sequence[Host], vms: Sequence[VM], memory_headroom: float) -> list[str]:
    """Round-robin over the hosts, skipping hosts whose memory (with headroom) is full."""
    if not hosts:
        raise InputError("no hosts")
    free = [h.memory_mib * (1 - memory_headroom) for h in hosts]
    out: list[str] = []
    k = 0
    for v in vms:
        for tries in range(len(hosts)):
            h = (k + tries) % len(hosts)
            if free[h] >= v.memory_mib and v.runs_on(hosts[h]):
                free[h] -= v.memory_mib
                out.append(hosts[h].name)
                k = h + 1
                break
        else:
            total = sum(x.memory_mib for x in vms) / 1024
            cap = sum(h.memory_mib for h in hosts) / 1024
            raise InputError(
                f"the hosts cannot hold the VMs: {v.name} ({v.memory_mib} MiB) fits on no host "
                f"(VMs need {total:.0f} GiB, hosts have {cap:.0f} GiB with "
                f"{memory_headroom:.0%} kept free)"
            )
    return out


def initial_placement(snapshot: Snapshot, *, seed: int, time_limit_s: float) -> Snapshot:
    """The balancer's placement of a naive start (see the module docstring)."""
    base = Policy()
    n = max(1, len(snapshot.vms))
    policy = Policy(
        threshold=5,
        limits=Limits(moves_per_cycle=n, concurrent_per_host=n, concurrent_total=n),
        headroom=base.headroom,
    )
    solution = optimize(snapshot, policy, time_limit_s=time_limit_s, seed=seed)
    ctx = solution.ctx
    return snapshot.with_placement(
        {ctx.vm_names[v]: ctx.host_names[h] for v, h in enumerate(solution.placement)}
    )


def _options(policy: Policy | None) -> MigrationOptions:
    m = (policy or Policy()).migration
    return MigrationOptions(
        bandwidth_mib_s=m.bandwidth_mib_s,
        max_downtime_ms=m.max_downtime_ms,
        auto_converge=m.auto_converge,
        post_copy=m.post_copy,
        copy_storage=m.allow_storage_copy,
    )


@dataclass(frozen=True, slots=True, kw_only=True)
class SimVM:
    """One simulated VM: its size, and the cores its trace's percentages are of (VM ``i`` of a
    run follows trace row ``i``)."""

    name: str
    vcpus: int
    #: demand = ``cpu_cores x percent / 100`` (fractional for the paper's types)
    cpu_cores: float
    memory_mib: int


@dataclass(frozen=True, slots=True, kw_only=True)
class TraceDay:
    """One day of a continuous run: its label and its number of trace steps (the days follow
    each other in the trace's columns)."""

    label: str
    steps: int


def typed_vms(traces: TraceSet, vm_types: Sequence[VMType], *, pick: str, seed: int) -> list[SimVM]:
    """The VMs of :func:`make_vms` as :class:`SimVM` values. Pure."""
    return [
        SimVM(name=n, vcpus=t.vcpus, cpu_cores=t.cpu_cores, memory_mib=t.memory_mib)
        for n, t in make_vms(traces, vm_types, pick=pick, seed=seed)
    ]


def simulate_day(
    traces: TraceSet,
    hosts: Sequence[Host],
    host_types: dict[str, HostType],
    decider: Decider,
    config: SimConfig,
    *,
    label: str = "",
    progress: ProgressFn | None = None,
) -> DayResult:
    """Replay one trace set on a fresh cluster (see the module docstring); VMs from
    ``config.vm_types``, the first ``config.steps`` steps."""
    steps = traces.steps if config.steps is None else min(config.steps, traces.steps)
    (day,) = simulate_trace(
        traces,
        hosts,
        host_types,
        decider,
        config,
        days=(TraceDay(label=label, steps=steps),),
        progress=progress,
    )
    return day


def simulate_trace(
    traces: TraceSet,
    hosts: Sequence[Host],
    host_types: dict[str, HostType],
    decider: Decider,
    config: SimConfig,
    *,
    days: Sequence[TraceDay],
    vms: Sequence[SimVM] | None = None,
    progress: ProgressFn | None = None,
) -> tuple[DayResult, ...]:
    """Replay ``days`` one after the other on one cluster: one initial placement at the start,
    one clock, one collectors window, one move history (a VM stays where it was at midnight,
    cooldowns and ping-pong holds carry over). VM ``i`` follows trace row ``i``; ``vms`` gives
    their sizes (default: ``config.vm_types``, see :func:`make_vms`). ``config.steps`` is not
    applied here: ``days`` says how many steps each day has. One :class:`DayResult` per day,
    its tick and migration times counted from the day's start."""
    tick_s = traces.step_s
    ratio = config.interval_s / tick_s
    if ratio < 1 or abs(ratio - round(ratio)) > 1e-9:
        raise InputError(
            f"the interval ({config.interval_s:g} s) must be a multiple of the trace step "
            f"({tick_s:g} s)"
        )
    decide_every = round(ratio)
    if not days:
        raise InputError("no days to simulate")
    total_steps = sum(d.steps for d in days)
    if any(d.steps < 1 for d in days) or total_steps > traces.steps:
        raise InputError(
            f"the days need {total_steps} steps (at least one each); the trace has {traces.steps}"
        )

    # -- VMs and their initial placement -----------------------------------------------------
    sims = (
        list(vms)
        if vms is not None
        else typed_vms(traces, config.vm_types, pick=config.vm_pick, seed=config.seed)
    )
    if len(sims) != len(traces.names):
        raise InputError(f"{len(sims)} VMs for {len(traces.names)} traces")
    names = [v.name for v in sims]
    cores = np.array([v.cpu_cores for v in sims], dtype=np.float64)
    sampler = TraceSampler(
        traces,
        Snapshot(hosts=tuple(hosts), vms=()),
        start=config.start,
        assignment={n: i for i, n in enumerate(names)},
    )
    first = np.round(sampler.utilisation(names, config.start).astype(np.float64) * cores, 4)
    start_vms = [
        VM(name=v.name, host="", vcpus=v.vcpus, memory_mib=v.memory_mib, cpu_used_cores=float(c))
        for v, c in zip(sims, first, strict=True)
    ]
    start_hosts = naive_start(hosts, start_vms, Policy().headroom.memory)
    naive = Snapshot(
        hosts=tuple(hosts),
        vms=tuple(v.on(h) for v, h in zip(start_vms, start_hosts, strict=True)),
    )
    placed = initial_placement(naive, seed=config.seed, time_limit_s=2.0)
    initial_moves = sum(1 for a, b in zip(naive.vms, placed.vms, strict=True) if a.host != b.host)

    # -- the simulated cluster, its clock and the collectors ---------------------------------
    clock = ManualClock(config.start)
    cluster = SimulatedCluster(placed, clock=clock, link_mib_s=config.link_mib_s)
    window = Window(
        CollectorSettings(
            window_s=config.window_s,
            sample_interval_s=tick_s,
            stale_after_s=2 * tick_s,
            percentile=config.percentile,
            halflife_s=config.halflife_s,
        )
    )
    policy = decider.policy
    limits = (policy or Policy()).limits
    time_limit = (policy or Policy()).migration.time_limit_s
    options = _options(policy)
    host_index = {h.name: i for i, h in enumerate(hosts)}
    capacity = np.array([h.cpu_cores for h in hosts], dtype=np.float64)
    idle = np.array([host_types[h.name].idle_w for h in hosts], dtype=np.float64)
    peak = np.array([host_types[h.name].peak_w for h in hosts], dtype=np.float64)
    vm_pos = {n: i for i, n in enumerate(names)}
    if config.runner not in ("executor", "steps"):
        raise InputError(f"unknown runner {config.runner!r} (executor | steps)")
    store = Store.open("sqlite://") if config.runner == "executor" and policy else None

    history: list[MoveRecord] = []
    results: list[DayResult] = []
    k = 0  # ticks since the start of the run
    for day in days:
        day_start = config.start + timedelta(seconds=k * tick_s)
        ticks: list[TickRecord] = []
        migrations: list[MigrationRecord] = []
        host_load = np.zeros((day.steps, len(hosts)), dtype=np.float32)
        for j in range(day.steps):
            now = day_start + timedelta(seconds=j * tick_s)
            if clock.now() < now:
                clock.advance((now - clock.now()).total_seconds())
            # demand from the traces
            util = sampler.utilisation(names, now).astype(np.float64)
            vm_cpu = np.round(util * cores, 4)
            cluster.set_cpu_usage(dict(zip(names, vm_cpu.tolist(), strict=True)))
            # collect
            snap = cluster.snapshot()
            window.ingest(batch_from_snapshot(snap, now))
            decider.observe(snap, now)
            placement = np.array([host_index[v.host] for v in snap.vms], dtype=np.intp)
            order = np.array([vm_pos[v.name] for v in snap.vms], dtype=np.intp)
            cpu_by_snap = vm_cpu[order]
            # decide
            decided = k % decide_every == 0
            decision = Decision()
            decide_s = 0.0
            if decided:
                t0 = time.perf_counter()
                view = demand_view(window, snap, now).snapshot
                decision = decider.decide(view, now, history)
                decide_s = time.perf_counter() - t0
            for p in decision.power:
                if p.on:
                    cluster.set_host_state(p.host, HostState.ACTIVE)
            active = np.array(
                [h.state is HostState.ACTIVE for h in cluster.snapshot().hosts], dtype=np.bool_
            )
            # execute
            outcomes = []
            if decision.execute:
                runner: StepRunner | ExecutorRunner
                if store is not None and policy is not None:
                    runner = ExecutorRunner(
                        cluster, clock, policy=policy, store=store, plan_id=f"sim-{day.label}-{k}"
                    )
                else:
                    runner = StepRunner(
                        cluster, clock, limits=limits, options=options, time_limit_s=time_limit
                    )
                outcomes = runner.run(
                    decision.execute, start_before=now + timedelta(seconds=tick_s)
                )
            flights = []
            mib = 0.0
            failed = 0
            for o in outcomes:
                m = o.move
                flights.append(
                    Flight(
                        vm=vm_pos_in(snap, m.vm),
                        source=host_index[m.source],
                        target=host_index[m.target],
                        start_s=(o.started - now).total_seconds(),
                        end_s=(o.ended - now).total_seconds(),
                        succeeded=o.succeeded,
                    )
                )
                mib += o.data_mib
                failed += 0 if o.succeeded else 1
                migrations.append(
                    MigrationRecord(
                        time_s=(o.started - day_start).total_seconds(),
                        vm=m.vm,
                        source=m.source,
                        target=m.target,
                        reason=m.reason_label,
                        duration_s=(o.ended - o.started).total_seconds(),
                        data_mib=o.data_mib,
                        succeeded=o.succeeded,
                        error=o.error,
                    )
                )
                if o.succeeded:
                    history.append(
                        MoveRecord(
                            at=o.ended,
                            vm=m.vm,
                            source=m.source,
                            target=m.target,
                            reason=m.reason.value,
                        )
                    )
            if outcomes:
                # every job is final: a fresh port keeps the simulated job table small
                cluster = SimulatedCluster(
                    cluster.snapshot(), clock=clock, link_mib_s=config.link_mib_s
                )
            after = cluster.snapshot()
            occupied = {v.host for v in after.vms}
            for p in decision.power:
                if not p.on and p.host not in occupied:
                    cluster.set_host_state(p.host, HostState.MAINTENANCE)
            # figures of the tick
            load = tick_overload(
                capacity=capacity,
                placement=placement,
                vm_cpu=cpu_by_snap,
                flights=flights,
                tick_s=tick_s,
                migration_cpu_cores=config.migration_cpu_cores,
            )
            host_load[j] = load.host_load
            act_loads = load.host_load[active]
            watts = power_w(load.host_load, active, idle, peak)
            ticks.append(
                TickRecord(
                    index=j,
                    time_s=j * tick_s,
                    tick_s=tick_s,
                    active_hosts=int(active.sum()),
                    vms=len(names),
                    overloaded_hosts=int(np.count_nonzero(load.host_overload_s > 0)),
                    host_overload_s=float(load.host_overload_s.sum()),
                    vm_overload_s=float(load.vm_overload_s.sum()),
                    imbalance=imbalance(load.host_load, active),
                    mean_load=float(act_loads.mean()) if len(act_loads) else 0.0,
                    max_load=float(act_loads.max()) if len(act_loads) else 0.0,
                    migrations_started=sum(1 for o in outcomes if o.ended > o.started),
                    migrations_failed=failed,
                    mib_copied=mib,
                    recommended=len(decision.recommend),
                    decided=decided and policy is not None,
                    decide_seconds=decide_s,
                    power_w=watts,
                    power_all_on_w=watts + float(idle[~active].sum()),
                )
            )
            k += 1
            if progress is not None:
                progress(k, total_steps)
        results.append(
            DayResult(
                label=day.label,
                figures=summarize(ticks, migrations, hosts=len(hosts)),
                ticks=tuple(ticks),
                migrations=tuple(migrations),
                host_names=tuple(h.name for h in hosts),
                host_load=host_load,
                tick_s=tick_s,
                initial_moves=initial_moves if not results else 0,
            )
        )
    if store is not None:
        store.close()
    return tuple(results)


def vm_pos_in(snapshot: Snapshot, vm: str) -> int:
    for i, v in enumerate(snapshot.vms):
        if v.name == vm:
            return i
    raise KeyError(vm)


def combine(days: Sequence[DayResult], *, hosts: int, continuous: bool = False) -> Figures:
    """Figures over several days run one after the other: ping-pong counted within a day, or,
    for the days of one continuous run (``continuous``: the same VMs on one cluster), across
    the days too (a move back after midnight is a ping-pong)."""
    ticks: list[TickRecord] = []
    migrations: list[MigrationRecord] = []
    offset = 0.0
    for d in days:
        ticks.extend(replace(t, time_s=t.time_s + offset) for t in d.ticks)
        migrations.extend(
            replace(m, time_s=m.time_s + offset, vm=m.vm if continuous else f"{d.label}/{m.vm}")
            for m in d.migrations
        )
        offset += sum(t.tick_s for t in d.ticks)
    return summarize(ticks, migrations, hosts=hosts)
