"""Post-solve pruning: every balancing move in a plan contributes (pure).

A *balancing* move is one the optimizer made for balance only (not an evacuation, a rule
repair, or a move that makes room for one). After the solve, each balancing move is undone in
turn (the VM stays where it is) when the placement without it

* is still valid: the VM's own host has room for it again with the headroom (or receives
  nothing, so it is no fuller than now), it runs there (CPU features), and no rule, hard or
  soft, gains a violation; and
* still meets the target: the imbalance stays at or below the threshold's target, or, when the
  plan falls short of the target, it does not rise at all (the move contributed nothing).

The moves whose removal raises the imbalance least are tried first, the costliest of equals
first, until a whole pass undoes nothing. What is left cannot lose a move without leaving the
target or the rules behind (see tests/optimizer/test_prune.py, a property test).
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence

from balancer.optimizer.context import Context, violated_rules
from balancer.optimizer.filters import Loads
from balancer.optimizer.metrics import ImbalanceTracker

#: what "does not rise" means for a plan short of its target (float noise)
EPSILON = 1e-12


def _violations(ctx: Context, placement: Sequence[int]) -> dict[int, frozenset[int]]:
    return {ri: frozenset(bad) for ri, bad in violated_rules(ctx, tuple(placement)).items()}


def _no_new_violation(
    now: Mapping[int, frozenset[int]], after: Mapping[int, frozenset[int]]
) -> bool:
    return all(ri in now and bad <= now[ri] for ri, bad in after.items())


def can_undo(
    ctx: Context, start: Sequence[int], loads: Loads, incoming: Sequence[int], v: int
) -> bool:
    """Whether VM ``v`` may stay on its start host instead: capacity with headroom (a host
    already over a limit may stay over it as long as nothing moves in: ``incoming`` counts the
    VMs that move onto each host) and CPU features. The rules are checked by the caller."""
    home = start[v]
    if not ctx.snapshot.vms[v].runs_on(ctx.snapshot.hosts[home]):
        return False
    return incoming[home] == 0 or (
        loads.cpu[home] + ctx.vm_cpu[v] <= ctx.host_cpu_cap[home]
        and loads.mem[home] + ctx.vm_mem[v] <= ctx.host_mem_cap[home]
    )


def prune(
    ctx: Context,
    start: Sequence[int],
    placement: Sequence[int],
    balancing: Collection[int],
    target: float,
    costs: Mapping[int, float],
) -> tuple[int, ...]:
    """``placement`` without the balancing moves that contribute nothing (module docstring)."""
    current = list(placement)
    loads = Loads.of(ctx, current)
    violations = _violations(ctx, current)
    tracker = ImbalanceTracker(ctx, current)
    incoming = [0] * ctx.n_hosts
    for u, h in enumerate(current):
        if h != start[u]:
            incoming[h] += 1
    candidates = [v for v in balancing if current[v] != start[v]]
    changed = True
    while changed and candidates:
        changed = False
        value = tracker.value()
        ranked = sorted(
            candidates,
            key=lambda v: (tracker.what_if(v, current[v], start[v]) - value, -costs.get(v, 0.0), v),
        )
        for v in ranked:
            after = tracker.what_if(v, current[v], start[v])
            if value <= target:
                if after > target:
                    continue
            elif after > value + EPSILON:
                continue
            if not can_undo(ctx, start, loads, incoming, v):
                continue
            trial = list(current)
            trial[v] = start[v]
            trial_violations = _violations(ctx, trial)
            if not _no_new_violation(violations, trial_violations):
                continue
            loads.move(ctx, v, current[v], start[v])
            incoming[current[v]] -= 1
            current = trial
            violations = trial_violations
            tracker = ImbalanceTracker(ctx, current)
            candidates.remove(v)
            changed = True
            break
    return tuple(current)
