"""Fast greedy heuristic: the CP-SAT model's warm start (and its fallback).

It scores placements with the same terms as the CP-SAT objective (total load deviation from
the average, move costs; see :mod:`balancer.optimizer.thresholds`), in floating point:

1. :func:`place_mandatory` puts each VM that must leave its host on the feasible host where it
   adds the least deviation (largest VMs first); VMs with no feasible host stay.
2. :func:`balance` repeatedly takes the most loaded active host and makes the single move off
   it that lowers ``deviation + move cost`` the most, until no move pays or the budget is used.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass

from balancer.model import stddev
from balancer.optimizer.context import Context
from balancer.optimizer.filters import Loads, anti_affinity_conflict, fits, in_affinity_group
from balancer.optimizer.metrics import average_loads, deviation_penalty, weights

#: per move, how many of the hot host's largest VMs (per CPU-feature class) and how many
#: targets are tried
TOP_VMS = 8
TOP_TARGETS = 6
#: (one move per round, the best off the hottest host. Batches of 4 improving moves per round
#: made more moves than needed: their later moves were improving but not the best, and the
#: best ones would have made them unnecessary. Peer snapshots at threshold 5, batches of 4
#: against single moves: 16x500 42 moves against 34, 32x1000 152 against 132, 64x4000 336
#: against 307. The best move off any of the 3 hottest hosts gave 33 and 135.)


@dataclass(slots=True, kw_only=True)
class Scorer:
    """Deviation of a host's load from the average, per resource, weighted."""

    ctx: Context
    avg_cpu: float
    avg_mem: float
    w_cpu: float
    w_mem: float

    @classmethod
    def of(cls, ctx: Context) -> Scorer:
        avg_cpu, avg_mem = average_loads(ctx)
        w_cpu, w_mem = weights(ctx)
        return cls(ctx=ctx, avg_cpu=avg_cpu, avg_mem=avg_mem, w_cpu=w_cpu, w_mem=w_mem)

    def term(self, h: int, cpu: int, mem: int) -> float:
        if not self.ctx.balanced_host(h):
            return 0.0
        return self.w_cpu * deviation_penalty(
            cpu / self.ctx.host_cores[h] - self.avg_cpu
        ) + self.w_mem * deviation_penalty(mem / self.ctx.host_mem[h] - self.avg_mem)

    def excess(self, h: int, loads: Loads) -> float:
        """Signed weighted distance above the average (negative: below)."""
        return self.w_cpu * (loads.cpu[h] / self.ctx.host_cores[h] - self.avg_cpu) + self.w_mem * (
            loads.mem[h] / self.ctx.host_mem[h] - self.avg_mem
        )

    def above(self, h: int, loads: Loads) -> bool:
        """Whether some weighted resource of the host is above the average."""
        return (self.w_cpu > 0 and loads.cpu[h] / self.ctx.host_cores[h] > self.avg_cpu) or (
            self.w_mem > 0 and loads.mem[h] / self.ctx.host_mem[h] > self.avg_mem
        )

    def delta(self, loads: Loads, v: int, a: int, b: int) -> float:
        c, m = self.ctx.vm_cpu[v], self.ctx.vm_mem[v]
        return (
            self.term(a, loads.cpu[a] - c, loads.mem[a] - m)
            + self.term(b, loads.cpu[b] + c, loads.mem[b] + m)
            - self.term(a, loads.cpu[a], loads.mem[a])
            - self.term(b, loads.cpu[b], loads.mem[b])
        )


def _allowed(
    ctx: Context,
    placement: Sequence[int],
    loads: Loads,
    v: int,
    h: int,
    candidates: Mapping[int, frozenset[int]],
) -> bool:
    return (
        h in candidates[v]
        and fits(ctx, loads, v, h)
        and anti_affinity_conflict(ctx, placement, v, h) is None
    )


def place_mandatory(
    ctx: Context, start: Sequence[int], vms: Sequence[int], candidates: Mapping[int, frozenset[int]]
) -> list[int]:
    """Greedy placement of VMs that must leave their host (affinity members are left out)."""
    placement = list(start)
    loads = Loads.of(ctx, placement)
    scorer = Scorer.of(ctx)
    order = sorted(
        (v for v in vms if not in_affinity_group(ctx, v)),
        key=lambda v: (-ctx.vm_mem[v], -ctx.vm_cpu[v], v),
    )
    for v in order:
        a = placement[v]
        best: tuple[float, int] | None = None
        for b in sorted(candidates[v]):
            if _allowed(ctx, placement, loads, v, b, candidates):
                score = scorer.delta(loads, v, a, b)
                if best is None or (score, b) < best:
                    best = (score, b)
        if best is not None:
            loads.move(ctx, v, a, best[1])
            placement[v] = best[1]
    return placement


def balance(
    ctx: Context,
    start: Sequence[int],
    movable: Collection[int],
    candidates: Mapping[int, frozenset[int]],
    costs: Mapping[int, float],
    budget: int,
    target: float | None = None,
) -> list[int]:
    """Greedy balancing moves from ``start`` (each VM moves at most once), until no move pays,
    the budget is used or the imbalance is at or below ``target``."""
    placement = list(start)
    loads = Loads.of(ctx, placement)
    scorer = Scorer.of(ctx)
    moved: set[int] = set()
    on_host: dict[int, list[int]] = {h: [] for h in range(ctx.n_hosts)}
    for v in sorted(movable):
        if not in_affinity_group(ctx, v):
            on_host[placement[v]].append(v)
    for vms_on in on_host.values():
        vms_on.sort(key=lambda v: (-ctx.vm_cpu[v] - ctx.vm_mem[v] // 64, v))
    active = [h for h in range(ctx.n_hosts) if ctx.balanced_host(h)]
    receivers = [h for h in active if ctx.accepts(h)]
    done: set[int] = set()
    chained: set[int] = set()
    moves = 0
    since_reset = 0
    while moves < budget:
        if target is not None and _imbalance(scorer, loads, active) <= target:
            break
        excess = {h: scorer.excess(h, loads) for h in active}
        hot = [h for h in active if h not in done and scorer.above(h, loads)]
        if not hot:
            if since_reset == 0:
                break
            # hosts given up on may have a move now that others have shed load
            done.clear()
            chained.clear()
            since_reset = 0
            continue
        # targets in three orders (coldest overall, in CPU, in memory), interleaved
        orders = (
            sorted(receivers, key=lambda h: (excess[h], h)),
            sorted(receivers, key=lambda h: (loads.cpu[h] / ctx.host_cores[h], h)),
            sorted(receivers, key=lambda h: (loads.mem[h] / ctx.host_mem[h], h)),
        )
        cold = list(dict.fromkeys(h for trio in zip(*orders, strict=True) for h in trio))
        a = max(hot, key=lambda h: (scorer.term(h, loads.cpu[h], loads.mem[h]), -h))
        best = _best_move(ctx, scorer, loads, placement, a, on_host[a], candidates, costs, cold)
        if best is not None and best[0] < 0:
            _, v, b = best
            loads.move(ctx, v, a, b)
            placement[v] = b
            moved.add(v)
            on_host[a].remove(v)
            moves += 1
            since_reset += 1
            done.discard(b)
            continue
        if best is None or best[0] >= 0:
            chain = None
            worst = max(active, key=lambda h: (scorer.term(h, loads.cpu[h], loads.mem[h]), -h))
            if moves + 2 <= budget and a == worst and a not in chained:
                chained.add(a)
                chain = _chain(
                    ctx, scorer, loads, placement, a, on_host, moved, candidates, costs, cold
                )
            if chain is None:
                done.add(a)
                continue
            (u, b_u, c_u), (v, a_v, b_v) = chain
            for vm, src, dst in ((u, b_u, c_u), (v, a_v, b_v)):
                loads.move(ctx, vm, src, dst)
                placement[vm] = dst
                moved.add(vm)
                on_host[src].remove(vm)
                done.discard(dst)
            moves += 2
            since_reset += 1
    return placement


def _best_move(
    ctx: Context,
    scorer: Scorer,
    loads: Loads,
    placement: Sequence[int],
    a: int,
    vms_on: Sequence[int],
    candidates: Mapping[int, frozenset[int]],
    costs: Mapping[int, float],
    cold: Sequence[int],
) -> tuple[float, int, int] | None:
    """The best-scoring move (score, VM, target) off host ``a``: its ``TOP_VMS`` VMs (per
    CPU-feature class) that relieve its overloaded resource(s) most, each to its first
    ``TOP_TARGETS`` coldest hosts that fit. Score: change of the deviation terms plus the
    move's cost (negative: the move pays)."""
    best: tuple[float, int, int] | None = None
    per_class: dict[frozenset[int], int] = {}
    allowed: dict[frozenset[int], list[int]] = {}
    now = {a: scorer.term(a, loads.cpu[a], loads.mem[a])}
    over_cpu = loads.cpu[a] / ctx.host_cores[a] - scorer.avg_cpu
    over_mem = loads.mem[a] / ctx.host_mem[a] - scorer.avg_mem
    ranked = sorted(
        vms_on,
        key=lambda v: (
            -(
                scorer.w_cpu * over_cpu * ctx.vm_cpu[v] / ctx.host_cores[a]
                + scorer.w_mem * over_mem * ctx.vm_mem[v] / ctx.host_mem[a]
            ),
            v,
        ),
    )
    for v in ranked:
        key = candidates[v]
        if per_class.get(key, 0) >= TOP_VMS:
            continue
        per_class[key] = per_class.get(key, 0) + 1
        if key not in allowed:
            allowed[key] = [b for b in cold if b in key]
        tried = 0
        for b in allowed[key]:
            if not fits(ctx, loads, v, b) or anti_affinity_conflict(ctx, placement, v, b):
                continue
            if b not in now:
                now[b] = scorer.term(b, loads.cpu[b], loads.mem[b])
            c, m = ctx.vm_cpu[v], ctx.vm_mem[v]
            score = (
                scorer.term(a, loads.cpu[a] - c, loads.mem[a] - m)
                + scorer.term(b, loads.cpu[b] + c, loads.mem[b] + m)
                - now[a]
                - now[b]
                + costs.get(v, 0.0)
            )
            if best is None or (score, v, b) < best:
                best = (score, v, b)
            tried += 1
            if tried >= TOP_TARGETS:
                break
    return best


def _imbalance(scorer: Scorer, loads: Loads, active: Sequence[int]) -> float:
    """The imbalance metric (weighted stddev of the active hosts' loads) of ``loads``."""
    if len(active) < 2:
        return 0.0
    ctx = scorer.ctx
    cpu = [loads.cpu[h] / ctx.host_cores[h] for h in active]
    mem = [loads.mem[h] / ctx.host_mem[h] for h in active]
    return scorer.w_cpu * stddev(cpu) + scorer.w_mem * stddev(mem)


#: chain search breadth: VMs of the hot host, their targets, VMs to make room there, and
#: where those go
CHAIN_VMS = 4
CHAIN_TARGETS = 4
CHAIN_ROOM_VMS = 8
CHAIN_ROOM_TARGETS = 3


def _chain(
    ctx: Context,
    scorer: Scorer,
    loads: Loads,
    placement: list[int],
    a: int,
    on_host: Mapping[int, list[int]],
    moved: set[int],
    candidates: Mapping[int, frozenset[int]],
    costs: Mapping[int, float],
    cold: Sequence[int],
) -> tuple[tuple[int, int, int], tuple[int, int, int]] | None:
    """Two moves that together pay when neither does alone: VM ``u`` leaves host ``b`` for a
    colder host ``c`` so that VM ``v`` of the hot host ``a`` can take its place (a CPU-feature
    class that only fits on a few hosts gets room there from VMs that fit anywhere)."""
    best: tuple[float, int, int, int, int] | None = None
    seen: dict[frozenset[int], int] = {}
    for v in on_host[a]:
        if v in moved:
            continue
        key = candidates[v]
        if seen.get(key, 0) >= CHAIN_VMS:
            continue
        seen[key] = seen.get(key, 0) + 1
        targets = [b for b in cold if b in key][:CHAIN_TARGETS]
        for b in targets:
            if anti_affinity_conflict(ctx, placement, v, b):
                continue
            rooms = [u for u in on_host[b] if u not in moved and candidates[u] != key]
            for u in rooms[:CHAIN_ROOM_VMS]:
                tried = 0
                for c in cold:
                    if c in (a, b) or c not in candidates[u]:
                        continue
                    if not fits(ctx, loads, u, c) or anti_affinity_conflict(ctx, placement, u, c):
                        continue
                    tried += 1
                    first = scorer.delta(loads, u, b, c)
                    loads.move(ctx, u, b, c)
                    if fits(ctx, loads, v, b):
                        score = (
                            first
                            + scorer.delta(loads, v, a, b)
                            + costs.get(u, 0.0)
                            + costs.get(v, 0.0)
                        )
                        if score < 0 and (best is None or (score, v, b, u, c) < best):
                            best = (score, v, b, u, c)
                    loads.move(ctx, u, c, b)
                    if tried >= CHAIN_ROOM_TARGETS:
                        break
    if best is None:
        return None
    _, v, b, u, c = best
    return (u, b, c), (v, a, b)
