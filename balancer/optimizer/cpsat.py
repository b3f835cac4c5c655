"""The CP-SAT model: one boolean per (movable VM, candidate host), built by small modules.

Scaling: CPU in milli-cores, memory in MiB, loads in 1/LOAD_SCALE; the deviation terms in units
of ``OBJ_UNIT`` per 1.0 of total load deviation.

The objective is lexicographic in effect (weights far apart, see docs/optimizer.md):

1. VMs left on hosts that must be emptied (``EVACUATION_PENALTY``, ``QUARANTINE_PENALTY``);
2. when balancing (``ModelInput.target`` set): the weighted variance of the host loads above
   the square of the threshold's target imbalance (``TARGET_WEIGHT``): reach the target first,
   or get as close as the budget allows;
3. soft-rule penalties and the migration cost of every non-mandatory move (``COST_WEIGHT``
   times the costs of :mod:`balancer.optimizer.thresholds`): the fewest GiB and moves;
4. the remaining deviation from the average and the max load: where the VMs that move go.

Only *movable* VMs get variables (the rest are constants), and each gets only its candidate
hosts (filters and pruning decide which). Hard rules are added with an enforcement literal
each, so that an infeasible model can name the smallest set of conflicting rules
(:func:`explain_infeasible`). :data:`CONSTRAINTS` and :data:`OBJECTIVES` are the registry.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace

from ortools.sat.python import cp_model

from balancer.model import HostState
from balancer.optimizer import soft
from balancer.optimizer.context import LOAD_SCALE, Context, is_soft_vm_host, vm_host_allows
from balancer.optimizer.metrics import (
    DEVIATION_BREAKPOINTS,
    average_loads,
    deviation_penalty,
    weights,
)
from policies.model import RuleKind

#: 1.0 of total load deviation in objective units (weights are percentages, loads 1e5)
OBJ_UNIT = 100 * LOAD_SCALE
#: weight of each resource's max host load next to the total deviation
MAX_LOAD_WEIGHT = 1.0
#: level 3: move costs and soft-rule penalties (deviation units) weigh this many times the
#: level-4 deviation, so that the deviation only decides where a VM goes, never whether it goes
COST_WEIGHT = 1_000
#: level 2: squared loads in units of 1/SQ_SCALE, weighted by the resource weight in percent
SQ_SCALE = 1_000_000
#: objective per unit of weighted variance above the target: one move (threshold 5's fixed cost
#: is 0.001 x OBJ_UNIT x COST_WEIGHT = 1e7) pays when it removes about 1e-6 of the summed
#: squared deviations above the target
TARGET_WEIGHT = 100_000
#: the level-2 breakpoints, as multiples of the target imbalance: the squares are bounded from
#: above by chords (so meeting the constraint in the model meets it for real), fine up to the
#: target and coarse beyond
TARGET_CHORDS = (0.0, 0.25, 0.5, 0.75, 1.0, 1.25, 1.5, 2.0, 3.0, 5.0, 8.0, 13.0, 21.0)
#: chord breakpoints (load fractions) beyond the multiples of the target, up to a load of 100
FAR_CHORDS = (0.5, 1.0, 2.0, 5.0, 100.0)
#: level 1: cost of leaving a VM on a host that must be emptied / on a quarantined host
EVACUATION_PENALTY = 10**13
QUARANTINE_PENALTY = 10**12
#: deterministic-time units granted per second of time limit. Measured on the 2-core reference
#: machine with two interleaved workers: 0.13 to 0.2 units per wall second, so the deterministic
#: limit normally stops the search first and the result does not depend on machine load
DETERMINISTIC_PER_SECOND = 0.1
#: the wall-clock limit is this many times the time limit: only a safety net, which must not be
#: what stops a search on a loaded machine (the same input and seed would then give another
#: plan). Measured: at load average 11-14 on the 2-core machine, a 2 s limit's 0.2 deterministic
#: units took more than the former 5 s net. The service's planning worker gives up at 4x the
#: limit plus a grace, above this net.
WALL_SAFETY_FACTOR = 3.0
#: the wall-clock safety net is never shorter than this (seconds)
WALL_FLOOR_S = 30.0
#: share of the deterministic limit that presolve's probing may use
PRESOLVE_SHARE = 0.1
#: name of the assumption that stands for limits.moves_per_cycle in conflict reports
BUDGET = "limits.moves_per_cycle"


@dataclass(frozen=True, slots=True, kw_only=True)
class ModelInput:
    ctx: Context
    #: placement the moves start from (host index per VM)
    start: tuple[int, ...]
    #: movable VM -> candidate hosts (always includes its start host)
    candidates: Mapping[int, tuple[int, ...]]
    #: balance move cost per movable VM, in deviation units (0 for mandatory VMs)
    costs: Mapping[int, float]
    #: penalty per VM and host for a soft rule, in deviation units
    soft_penalty: float
    budget: int
    #: the target imbalance to reach (level 2 of the objective); None: no balancing
    target: float | None = None
    hint: tuple[int, ...] | None = None
    #: explaining an infeasible input: hard vm_host rules become constraints on every host
    explain: bool = False


@dataclass(slots=True, kw_only=True)
class Build:
    inp: ModelInput
    model: cp_model.CpModel = field(default_factory=cp_model.CpModel)
    x: dict[int, dict[int, cp_model.IntVar]] = field(default_factory=dict)
    #: name of a hard rule (or BUDGET) -> its enforcement literal
    enforce: dict[str, cp_model.IntVar] = field(default_factory=dict)
    objective: list[cp_model.LinearExprT] = field(default_factory=list)
    #: the hint for every variable (a complete hint lets CP-SAT start from it at once)
    hints: dict[int, tuple[cp_model.IntVar, int]] = field(default_factory=dict)
    #: the host loads, once built (see :func:`resource_loads`)
    loads: tuple[ResourceLoads, ...] | None = None

    def hint(self, var: cp_model.IntVar, value: int) -> None:
        if self.inp.hint is not None:
            self.hints[var.index] = (var, value)

    def hinted(self, var: cp_model.IntVar) -> int:
        return self.hints[var.index][1] if var.index in self.hints else 0

    @property
    def ctx(self) -> Context:
        return self.inp.ctx

    def literal(self, name: str) -> cp_model.IntVar:
        if name not in self.enforce:
            self.enforce[name] = self.model.new_bool_var(f"enforce[{name}]")
            self.hint(self.enforce[name], 1)
        return self.enforce[name]

    def on(self, v: int, h: int) -> cp_model.LinearExprT:
        """1 if VM ``v`` ends on ``h`` (a variable, or a constant for a fixed VM)."""
        if v in self.x:
            return self.x[v].get(h, 0)
        return 1 if self.inp.start[v] == h else 0


Module = Callable[[Build], None]


# -- constraints ---------------------------------------------------------------------------------
def assignment(b: Build) -> None:
    """Each movable VM ends on exactly one of its candidate hosts."""
    for v, hosts in b.inp.candidates.items():
        b.x[v] = {h: b.model.new_bool_var(f"x[{v},{h}]") for h in hosts}
        b.model.add_exactly_one(b.x[v].values())
        if b.inp.hint is not None:
            for h, var in b.x[v].items():
                b.hint(var, 1 if b.inp.hint[v] == h else 0)


def capacity(b: Build) -> None:
    """Memory and CPU with headroom on every host that receives a VM.

    A host already over a limit only needs to meet it when something moves in.
    """
    ctx, start = b.ctx, b.inp.start
    cpu_const = list(ctx.host_cpu_base)
    mem_const = list(ctx.host_mem_base)
    cpu_terms: list[list[tuple[cp_model.IntVar, int]]] = [[] for _ in range(ctx.n_hosts)]
    mem_terms: list[list[tuple[cp_model.IntVar, int]]] = [[] for _ in range(ctx.n_hosts)]
    incoming: list[list[cp_model.IntVar]] = [[] for _ in range(ctx.n_hosts)]
    for v in range(ctx.n_vms):
        if v not in b.x:
            cpu_const[start[v]] += ctx.vm_cpu[v]
            mem_const[start[v]] += ctx.vm_mem[v]
            continue
        for h, var in b.x[v].items():
            cpu_terms[h].append((var, ctx.vm_cpu[v]))
            mem_terms[h].append((var, ctx.vm_mem[v]))
            if h != start[v]:
                incoming[h].append(var)
    now_cpu = list(cpu_const)
    now_mem = list(mem_const)
    for v in b.x:
        now_cpu[start[v]] += ctx.vm_cpu[v]
        now_mem[start[v]] += ctx.vm_mem[v]
    for h in range(ctx.n_hosts):
        if not incoming[h]:
            continue
        cpu = cpu_const[h] + cp_model.LinearExpr.weighted_sum(
            [t[0] for t in cpu_terms[h]], [t[1] for t in cpu_terms[h]]
        )
        mem = mem_const[h] + cp_model.LinearExpr.weighted_sum(
            [t[0] for t in mem_terms[h]], [t[1] for t in mem_terms[h]]
        )
        if now_cpu[h] <= ctx.host_cpu_cap[h] and now_mem[h] <= ctx.host_mem_cap[h]:
            b.model.add(cpu <= ctx.host_cpu_cap[h])
            b.model.add(mem <= ctx.host_mem_cap[h])
        else:
            receives = b.model.new_bool_var(f"receives[{h}]")
            b.model.add_max_equality(receives, incoming[h])
            b.hint(receives, max(b.hinted(var) for var in incoming[h]))
            b.model.add(cpu <= ctx.host_cpu_cap[h]).only_enforce_if(receives)
            b.model.add(mem <= ctx.host_mem_cap[h]).only_enforce_if(receives)


def vm_host_rules(b: Build) -> None:
    """Hard vm_host rules: a member on a forbidden host must leave it (filters already keep
    forbidden hosts out of its candidates)."""
    ctx = b.ctx
    for r in ctx.rules:
        if r.rule.kind is not RuleKind.VM_HOST or not r.hard:
            continue
        for m in r.members:
            if m not in b.x:
                continue
            hosts = b.x[m] if b.inp.explain else [b.inp.start[m]]
            for h in hosts:
                if h in b.x[m] and not vm_host_allows(r, h):
                    b.model.add(b.x[m][h] == 0).only_enforce_if(b.literal(r.name))


def anti_affinity(b: Build) -> None:
    """anti_affinity: at most one member per host (as far as the fixed members allow)."""
    ctx = b.ctx
    for r in ctx.rules:
        if r.rule.kind is not RuleKind.ANTI_AFFINITY or len(r.members) < 2:
            continue
        if not r.hard:
            continue  # a should group is a penalty (balancer.optimizer.soft)
        fixed_count: dict[int, int] = {}
        hosts: set[int] = set()
        for m in r.members:
            if m in b.x:
                hosts.update(b.x[m])
            else:
                fixed_count[b.inp.start[m]] = fixed_count.get(b.inp.start[m], 0) + 1
        for h in sorted(hosts):
            terms = [b.x[m][h] for m in r.members if m in b.x and h in b.x[m]]
            if len(terms) + fixed_count.get(h, 0) <= 1:
                continue
            limit = max(1, fixed_count.get(h, 0))
            b.model.add(sum(terms) + fixed_count.get(h, 0) <= limit).only_enforce_if(
                b.literal(r.name)
            )


def affinity(b: Build) -> None:
    """affinity: all members on one host (the fixed members' host if they have one)."""
    ctx = b.ctx
    for r in ctx.rules:
        if r.rule.kind is not RuleKind.AFFINITY or len(r.members) < 2:
            continue
        if not r.hard:
            continue  # a should group is a penalty (balancer.optimizer.soft)
        fixed_hosts = {b.inp.start[m] for m in r.members if m not in b.x}
        if len(fixed_hosts) > 1:
            continue  # cannot be repaired by moves: reported as blocked
        moving = [m for m in r.members if m in b.x]
        if not moving:
            continue
        lit = b.literal(r.name)
        if fixed_hosts:
            (home,) = fixed_hosts
            for m in moving:
                b.model.add(b.on(m, home) == 1).only_enforce_if(lit)
            continue
        hosts = sorted(set().union(*(b.x[m].keys() for m in moving)))
        first = moving[0]
        for m in moving[1:]:
            for h in hosts:
                b.model.add(b.on(m, h) == b.on(first, h)).only_enforce_if(lit)


def move_budget(b: Build) -> None:
    """limits.moves_per_cycle: at most that many VMs change host."""
    moved = [1 - b.x[v][b.inp.start[v]] for v in b.x]
    if len(moved) > b.inp.budget:
        b.model.add(sum(moved) <= b.inp.budget).only_enforce_if(b.literal(BUDGET))


# -- objective terms -----------------------------------------------------------------------------
@dataclass(frozen=True, slots=True, kw_only=True)
class HostLoad:
    """One balanced host's load of one resource in 1/LOAD_SCALE: a constant plus terms, and
    (when there are terms) one variable equal to their sum, so that the deviation terms refer
    to one variable instead of repeating the sum (a much smaller model to presolve)."""

    host: int
    const: int
    terms: tuple[tuple[cp_model.IntVar, int], ...]
    var: cp_model.IntVar | None = None
    #: the load in the hint (the constant when there is no hint)
    hint: int = 0

    def expr(self) -> cp_model.LinearExprT:
        if self.var is not None:
            return self.var
        return self.const


@dataclass(frozen=True, slots=True, kw_only=True)
class ResourceLoads:
    """A resource's weight in percent, its ideal load and the balanced hosts' loads."""

    weight: int
    target: int
    hosts: tuple[HostLoad, ...]


def resource_loads(b: Build) -> tuple[ResourceLoads, ...]:
    """CPU and memory loads of the balanced hosts (resources of weight 0 left out), built
    once per model."""
    if b.loads is not None:
        return b.loads
    ctx, start = b.ctx, b.inp.start
    w_cpu, w_mem = weights(ctx)
    avg_cpu, avg_mem = average_loads(ctx)
    out: list[ResourceLoads] = []
    for weight, avg, demand, cap, base in (
        (w_cpu, avg_cpu, ctx.vm_cpu, ctx.host_cores, ctx.host_cpu_base),
        (w_mem, avg_mem, ctx.vm_mem, ctx.host_mem, ctx.host_mem_base),
    ):
        w = round(100 * weight)
        if w == 0:
            continue
        const = [base[h] * LOAD_SCALE // cap[h] for h in range(ctx.n_hosts)]
        terms: list[list[tuple[cp_model.IntVar, int]]] = [[] for _ in range(ctx.n_hosts)]
        hinted = [0] * ctx.n_hosts
        for v in range(ctx.n_vms):
            if v in b.x:
                for h, var in b.x[v].items():
                    terms[h].append((var, demand[v] * LOAD_SCALE // cap[h]))
                if b.inp.hint is not None:
                    h = b.inp.hint[v]
                    if h in b.x[v]:
                        hinted[h] += demand[v] * LOAD_SCALE // cap[h]
            else:
                const[start[v]] += demand[v] * LOAD_SCALE // cap[start[v]]
        hosts: list[HostLoad] = []
        for h in range(ctx.n_hosts):
            if not ctx.balanced_host(h):
                continue
            hl = HostLoad(host=h, const=const[h], terms=tuple(terms[h]), hint=const[h] + hinted[h])
            if hl.terms:
                top = const[h] + sum(c for _, c in hl.terms)
                var = b.model.new_int_var(const[h], top, f"load[{h}]")
                b.model.add(
                    var
                    == const[h]
                    + cp_model.LinearExpr.weighted_sum(
                        [t[0] for t in hl.terms], [t[1] for t in hl.terms]
                    )
                )
                hl = replace(hl, var=var)
                b.hint(var, hl.hint)
            hosts.append(hl)
        out.append(ResourceLoads(weight=w, target=round(avg * LOAD_SCALE), hosts=tuple(hosts)))
    b.loads = tuple(out)
    return b.loads


def imbalance(b: Build) -> None:
    """Level 4: weighted deviation penalty of active hosts' loads from the average (convex, see
    :func:`balancer.optimizer.metrics.deviation_penalty`), plus the max load."""
    for res in resource_loads(b):
        w = res.weight
        top = b.model.new_int_var(0, 100 * LOAD_SCALE, "max_load")
        top_hint = 0
        for hl in res.hosts:
            load = hl.expr()
            load_hint = hl.hint
            top_hint = max(top_hint, load_hint)
            if hl.terms:
                # convex piecewise-linear deviation: one more unit of slope past each breakpoint
                for k, t in enumerate(DEVIATION_BREAKPOINTS):
                    step = round(t * LOAD_SCALE)
                    over = b.model.new_int_var(0, 100 * LOAD_SCALE, f"over[{hl.host},{k}]")
                    under = b.model.new_int_var(0, 100 * LOAD_SCALE, f"under[{hl.host},{k}]")
                    b.model.add(over >= load - res.target - step)
                    b.model.add(under >= res.target - load - step)
                    b.hint(over, max(0, load_hint - res.target - step))
                    b.hint(under, max(0, res.target - load_hint - step))
                    b.objective.append(w * (over + under))
            else:
                b.objective.append(
                    round(w * LOAD_SCALE * deviation_penalty((hl.const - res.target) / LOAD_SCALE))
                )
            b.model.add(top >= load)
        b.hint(top, top_hint)
        b.objective.append(round(w * MAX_LOAD_WEIGHT) * top)


def chords(target: float) -> tuple[tuple[int, int], ...]:
    """Breakpoints (in 1/LOAD_SCALE) of the chords that bound a square from above."""
    points = sorted(
        {round(m * target * LOAD_SCALE) for m in TARGET_CHORDS}
        | {round(f * LOAD_SCALE) for f in FAR_CHORDS if f > TARGET_CHORDS[-1] * target}
    )
    return tuple(itertools.pairwise(points))


#: 1/LOAD_SCALE squared, in 1/SQ_SCALE: a chord's value is divided by this
_SQ_DIV = LOAD_SCALE * LOAD_SCALE // SQ_SCALE


def _square_hint(a: int, segments: Sequence[tuple[int, int]]) -> int:
    return max(0, *(-((x0 * x1 - (x0 + x1) * a) // _SQ_DIV) for x0, x1 in segments))


def target(b: Build) -> None:
    """Level 2: the weighted variance of the balanced hosts' loads around the ideal load at or
    below the target's square, or as little above it as the moves allow.

    ``sum_r w_r * var_r <= t**2`` (weights summing to 1) gives ``sum_r w_r * sd_r <= t``: as
    ``sd <= (var + t**2) / (2 t)``, the imbalance meets the target whenever the weighted
    variance does (and the variance around the ideal load is at least the variance around the
    mean). Each square is bounded from above by chords, so the model never claims a target
    the real loads miss.
    """
    t = b.inp.target
    if t is None or not t > 0:
        return
    resources = resource_loads(b)
    n = len(resources[0].hosts) if resources else 0
    if n < 2:
        return
    segments = chords(t)
    total: list[cp_model.LinearExprT] = []
    constant = 0
    hinted = 0
    sq_max = 0
    for res in resources:
        for hl in res.hosts:
            if not hl.terms:
                sq_const = _square_hint(abs(hl.const - res.target), segments)
                constant += res.weight * sq_const
                hinted += res.weight * sq_const
                continue
            load = hl.expr()
            # the largest deviation this host can have (every candidate VM on it, or none)
            top = max(hl.const + sum(c for _, c in hl.terms) - res.target, res.target - hl.const)
            top = max(1, top)
            dev = b.model.new_int_var(0, top, f"dev[{hl.host}]")
            b.model.add(dev >= load - res.target)
            b.model.add(dev >= res.target - load)
            sq_top = _square_hint(top, segments)
            sq_max += res.weight * sq_top
            sq = b.model.new_int_var(0, sq_top, f"sq[{hl.host}]")
            for x0, x1 in segments:
                b.model.add(_SQ_DIV * sq >= (x0 + x1) * dev - x0 * x1)
            dev_hint = min(top, abs(hl.hint - res.target))
            b.hint(dev, dev_hint)
            sq_hint = _square_hint(dev_hint, segments)
            b.hint(sq, sq_hint)
            hinted += res.weight * sq_hint
            total.append(res.weight * sq)
    bound = round(100 * n * t * t * SQ_SCALE)
    excess = b.model.new_int_var(0, max(0, constant + sq_max - bound), "excess")
    b.model.add(constant + sum(total) <= bound + excess)
    b.hint(excess, max(0, hinted - bound))
    if b.inp.hint is not None:
        # never further from the target than the hint (the heuristic stops at the target, so
        # when it reaches it the solver only looks for a cheaper way there)
        b.model.add(excess <= max(0, hinted - bound))
    b.objective.append(TARGET_WEIGHT * excess)


def migration_cost(b: Build) -> None:
    """Level 3: balance moves pay their cost (GiB expected to be copied and a fixed cost)."""
    for v, cost in b.inp.costs.items():
        c = round(cost * OBJ_UNIT * COST_WEIGHT)
        if c and v in b.x:
            b.objective.append(c * (1 - b.x[v][b.inp.start[v]]))


def evacuation(b: Build) -> None:
    """VMs left on a maintenance host (or a quarantined one) cost a large penalty."""
    ctx = b.ctx
    for v, hosts in b.x.items():
        h = b.inp.start[v]
        state = ctx.host_state[h]
        if state.must_evacuate:
            b.objective.append(EVACUATION_PENALTY * hosts[h])
        elif state is HostState.QUARANTINED:
            b.objective.append(QUARANTINE_PENALTY * hosts[h])


def soft_rules(b: Build) -> None:
    """should / should_not vm_host rules: a penalty per member on a host they advise against."""
    ctx = b.ctx
    penalty = round(b.inp.soft_penalty * OBJ_UNIT * COST_WEIGHT)
    for r in ctx.rules:
        if not is_soft_vm_host(r) or penalty == 0:
            continue
        for m in r.members:
            if m in b.x:
                for h, var in b.x[m].items():
                    if not vm_host_allows(r, h):
                        b.objective.append(penalty * var)


#: the registry: hard constraints, then objective terms (order is the build order)
CONSTRAINTS: tuple[tuple[str, Module], ...] = (
    ("assignment", assignment),
    ("capacity", capacity),
    ("vm_host", vm_host_rules),
    ("anti_affinity", anti_affinity),
    ("affinity", affinity),
    ("move_budget", move_budget),
)
OBJECTIVES: tuple[tuple[str, Module], ...] = (
    ("imbalance", imbalance),
    ("target", target),
    ("migration_cost", migration_cost),
    ("evacuation", evacuation),
    ("soft_rules", soft_rules),
    ("soft_affinity", soft.soft_affinity),
    ("soft_anti_affinity", soft.soft_anti_affinity),
)


def build(inp: ModelInput) -> Build:
    b = Build(inp=inp)
    for _, module in CONSTRAINTS + OBJECTIVES:
        module(b)
    b.model.minimize(sum(b.objective))
    for var, value in b.hints.values():
        b.model.add_hint(var, value)
    return b


@dataclass(frozen=True, slots=True, kw_only=True)
class SolveResult:
    placement: tuple[int, ...] | None  # None when no solution was found
    infeasible: bool
    optimal: bool
    wall_seconds: float
    #: the share of the time limit the solve used, in the deterministic units the limit is
    #: given in (what a later phase may still spend: wall time would make it depend on load)
    limit_seconds: float = 0.0


def _used(solver: cp_model.CpSolver) -> float:
    return solver.deterministic_time / DETERMINISTIC_PER_SECOND


def solver_for(seed: int, time_limit_s: float) -> cp_model.CpSolver:
    solver = cp_model.CpSolver()
    p = solver.parameters
    p.random_seed = seed
    p.num_workers = 2
    p.interleave_search = True  # deterministic for a fixed seed, whatever the thread timing
    # the deterministic limit is what normally stops the search (same input, same answer, at
    # about half the time limit on the reference machine); the wall-clock limit is a safety net
    p.max_deterministic_time = max(0.05, DETERMINISTIC_PER_SECOND * time_limit_s)
    # never below WALL_FLOOR_S: with short limits (the simulation uses 0.3 s) a loaded machine
    # reached the wall limit first, and the same input and seed then gave another plan
    p.max_time_in_seconds = max(WALL_FLOOR_S, WALL_SAFETY_FACTOR * time_limit_s)
    # presolve gets a small share: the hint is complete and feasible, so the search should
    # start from it at once (measured: probing and the linear-overlap detection took the whole
    # deterministic budget at 500 VMs, and the solve stopped with no solution at all)
    p.presolve_probing_deterministic_time_limit = PRESOLVE_SHARE * p.max_deterministic_time
    p.find_big_linear_overlap = False
    return solver


def solve(inp: ModelInput, *, seed: int, time_limit_s: float) -> SolveResult:
    b = build(inp)
    # every hard-rule enforcement literal holds in a normal solve
    for lit in b.enforce.values():
        b.model.add(lit == 1)
    solver = solver_for(seed, time_limit_s)
    status = solver.solve(b.model)
    if status == cp_model.INFEASIBLE:
        return SolveResult(
            placement=None,
            infeasible=True,
            optimal=False,
            wall_seconds=solver.wall_time,
            limit_seconds=_used(solver),
        )
    if status not in (cp_model.OPTIMAL, cp_model.FEASIBLE):
        return SolveResult(
            placement=None,
            infeasible=False,
            optimal=False,
            wall_seconds=solver.wall_time,
            limit_seconds=_used(solver),
        )
    placement = list(inp.start)
    for v, hosts in b.x.items():
        for h, var in hosts.items():
            if solver.boolean_value(var):
                placement[v] = h
    return SolveResult(
        placement=tuple(placement),
        infeasible=False,
        optimal=status == cp_model.OPTIMAL,
        wall_seconds=solver.wall_time,
        limit_seconds=_used(solver),
    )


def explain_infeasible(
    inp: ModelInput, *, seed: int, time_limit_s: float, max_rounds: int = 12
) -> tuple[str, ...]:
    """The smallest set of hard rules (and limits) found in conflict.

    Every hard rule has an enforcement literal; solving with them as assumptions gives a
    sufficient subset, which is then shrunk by deletion (each literal is dropped in turn and
    kept out if the rest is still infeasible).
    """
    b = build(inp)
    b.model.clear_objective()  # type: ignore[no-untyped-call]
    names = sorted(b.enforce)
    core = _core(b, names, seed, time_limit_s)
    if core is None:
        return ()
    for rounds, name in enumerate(list(core)):
        if rounds >= max_rounds or len(core) <= 1:
            break
        trial = [n for n in core if n != name]
        smaller = _core(b, trial, seed, time_limit_s)
        if smaller is not None:
            core = smaller
    return tuple(sorted(core))


def _core(b: Build, names: Sequence[str], seed: int, time_limit_s: float) -> list[str] | None:
    b.model.clear_assumptions()
    b.model.add_assumptions([b.enforce[n] for n in names])
    solver = solver_for(seed, time_limit_s)
    solver.parameters.num_workers = 1
    solver.parameters.interleave_search = False
    status = solver.solve(b.model)
    if status != cp_model.INFEASIBLE:
        return None
    by_index = {b.enforce[n].index: n for n in names}
    core = [by_index[i] for i in solver.sufficient_assumptions_for_infeasibility() if i in by_index]
    return sorted(core) if core else list(names)
