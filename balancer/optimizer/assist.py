"""The migration assistant (pure): the best target hosts for one VM, ranked, each with the
loads it would have and the soft rules moving there would break or repair, and why every other
host is ruled out. Soft rules never rule a host out; the ranking is by imbalance."""

from __future__ import annotations

from dataclasses import dataclass

from balancer.errors import InputError
from balancer.model import Snapshot
from balancer.optimizer.context import build_context
from balancer.optimizer.filters import (
    HostVerdict,
    Loads,
    cpu_features_missing,
    soft_effects,
    verdict,
)
from balancer.optimizer.metrics import ImbalanceTracker
from balancer.plan import Blocked
from policies.model import Policy


@dataclass(frozen=True, slots=True, kw_only=True)
class Candidate:
    host: str
    #: the target host's loads with the VM on it
    cpu_load: float
    memory_load: float
    #: the cluster's imbalance with the VM on the host
    imbalance: float
    #: soft rules of the VM that moving it there would break / repair (policy order)
    soft_breaks: tuple[str, ...] = ()
    soft_repairs: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True, kw_only=True)
class Assistance:
    vm: str
    current: str
    #: imbalance if the VM stays
    imbalance: float
    candidates: tuple[Candidate, ...]  # best first
    ruled_out: tuple[HostVerdict, ...]  # in host order
    #: set when the VM runs on a host that lacks its CPU features (reason cpu_features_missing)
    blocked: Blocked | None = None


def assist(snapshot: Snapshot, policy: Policy, vm: str) -> Assistance:
    """Rank the hosts ``vm`` could move to now (lowest resulting imbalance first)."""
    ctx = build_context(snapshot, policy)
    if vm not in ctx.vm_index:
        raise InputError(f"unknown VM {vm!r}", subject=vm)
    v = ctx.vm_index[vm]
    placement = list(ctx.current)
    loads = Loads.of(ctx, placement)
    tracker = ImbalanceTracker(ctx, placement)
    src = ctx.current[v]
    ok: list[Candidate] = []
    out: list[HostVerdict] = []
    for h, host in enumerate(snapshot.hosts):
        why = verdict(ctx, placement, loads, v, h)
        if why is not None:
            out.append(why)
            continue
        effects = soft_effects(ctx, placement, v, h)
        ok.append(
            Candidate(
                host=host.name,
                cpu_load=(loads.cpu[h] + ctx.vm_cpu[v]) / ctx.host_cores[h],
                memory_load=(loads.mem[h] + ctx.vm_mem[v]) / ctx.host_mem[h],
                imbalance=tracker.what_if(v, src, h),
                soft_breaks=effects.breaks,
                soft_repairs=effects.repairs,
            )
        )
    ok.sort(key=lambda c: (c.imbalance, max(c.cpu_load, c.memory_load), c.host))
    return Assistance(
        vm=vm,
        current=ctx.host_names[src],
        imbalance=tracker.value(),
        candidates=tuple(ok),
        ruled_out=tuple(out),
        blocked=cpu_features_missing(ctx, v, src),
    )
