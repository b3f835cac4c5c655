"""Consolidation (``goal: consolidate``): pack VMs onto fewer hosts and power the rest off, the
power-management side of DRS (DPM). Pure: a snapshot and a policy in, moves and power actions
out.

The optimizer balances the powered-on hosts; this post-step runs on the plan's end state:

* **Power on** one powered-off host when the powered-on hosts' CPU demand exceeds
  :data:`HIGH_LOAD` of their capacity, or when some host's demand exceeds its usable capacity
  (``capacity x (1 - headroom.cpu)``) even after the plan. The next decision balances onto it.
* Otherwise **empty hosts**: the least loaded powered-on host (fewest VMs, then least CPU) is
  emptied when every VM on it fits elsewhere under the headroom (the optimizer's own ``fits``,
  static filters and anti-affinity check), each VM going to the fullest host it fits on (best
  fit), and the remaining hosts' CPU demand stays at or below :data:`TARGET_LOAD` of their
  capacity. Repeated while the move budget lasts. A host with a held (cooldown) or excluded VM
  is not emptied.

A powered-off host is a host in state ``maintenance`` with no VMs (nothing else sets that state
in a simulation); its power draw is 0 W.
"""

from __future__ import annotations

from dataclasses import dataclass

from balancer.model import HostState, Snapshot
from balancer.optimizer.context import build_context
from balancer.optimizer.filters import Loads, anti_affinity_conflict, fits, static_verdict
from balancer.plan import Move, MoveReason
from policies.model import Policy

#: power a host on when the powered-on hosts' CPU demand is above this share of their capacity
HIGH_LOAD = 0.81
#: empty a host only while the remaining hosts' CPU demand stays at or below this share
TARGET_LOAD = 0.63


@dataclass(frozen=True, slots=True, kw_only=True)
class PowerAction:
    host: str
    on: bool


@dataclass(frozen=True, slots=True, kw_only=True)
class Packed:
    moves: tuple[Move, ...]
    power: tuple[PowerAction, ...]


def powered_off(snapshot: Snapshot) -> list[str]:
    used = {v.host for v in snapshot.vms}
    return [
        h.name for h in snapshot.hosts if h.state is HostState.MAINTENANCE and h.name not in used
    ]


def pack(
    snapshot: Snapshot,
    policy: Policy,
    *,
    held: frozenset[str] = frozenset(),
    budget: int,
    first_step: int = 0,
) -> Packed:
    """Moves that empty hosts, and the hosts to power on or off (see the module docstring)."""
    ctx = build_context(snapshot, policy, held)
    placement = list(ctx.current)
    loads = Loads.of(ctx, placement)
    active = [h for h in range(ctx.n_hosts) if ctx.host_state[h] is HostState.ACTIVE]
    off = powered_off(snapshot)
    demand = sum(loads.cpu[h] for h in active)
    capacity = sum(ctx.host_cores[h] for h in active)
    hot = any(loads.cpu[h] > ctx.host_cpu_cap[h] for h in active)
    if off and (hot or demand > HIGH_LOAD * capacity):
        return Packed(moves=(), power=(PowerAction(host=off[0], on=True),))

    moves: list[Move] = []
    power: list[PowerAction] = []
    emptied: set[int] = set()
    on_host: dict[int, list[int]] = {h: [] for h in range(ctx.n_hosts)}
    for v, h in enumerate(placement):
        on_host[h].append(v)
    while len(active) - len(emptied) > 1:
        remaining = [h for h in active if h not in emptied]
        order = sorted(remaining, key=lambda h: (len(on_host[h]), loads.cpu[h], h))
        done = False
        for a in order:
            vms = on_host[a]
            if len(moves) + len(vms) > budget:
                continue
            if any(not ctx.can_move(v) or v in ctx.held for v in vms):
                continue
            rest_cap = capacity - sum(ctx.host_cores[h] for h in emptied) - ctx.host_cores[a]
            if rest_cap <= 0 or demand > TARGET_LOAD * rest_cap:
                continue
            trial = Loads(cpu=list(loads.cpu), mem=list(loads.mem))
            where = list(placement)
            chosen: list[tuple[int, int]] = []
            targets = [h for h in remaining if h != a]
            for v in sorted(vms, key=lambda v: (-ctx.vm_mem[v], -ctx.vm_cpu[v], v)):
                best = None
                for b in sorted(targets, key=lambda h: (-trial.cpu[h] / ctx.host_cores[h], h)):
                    if (
                        static_verdict(ctx, v, b) is None
                        and fits(ctx, trial, v, b)
                        and anti_affinity_conflict(ctx, where, v, b) is None
                    ):
                        best = b
                        break
                if best is None:
                    break
                trial.move(ctx, v, a, best)
                where[v] = best
                chosen.append((v, best))
            if len(chosen) != len(vms):
                continue
            for v, b in chosen:
                moves.append(
                    Move(
                        vm=ctx.vm_names[v],
                        source=ctx.host_names[a],
                        target=ctx.host_names[b],
                        step=first_step,
                        reason=MoveReason.CONSOLIDATE,
                        memory_mib=ctx.vm_mem[v],
                    )
                )
                on_host[b].append(v)
            on_host[a] = []
            loads, placement = trial, where
            emptied.add(a)
            power.append(PowerAction(host=ctx.host_names[a], on=False))
            done = True
            break
        if not done:
            break
    return Packed(moves=tuple(moves), power=tuple(power))
