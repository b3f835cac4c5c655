"""Per VM-and-host feasibility: cheap, explainable filters that remove candidate hosts before
the solver sees them (Kubernetes scheduler / Nomad feasibility-checker style).

Static filters depend only on the VM and the host (state, CPU features, vm_host must/must_not);
dynamic checks also depend on a placement (capacity with headroom, anti-affinity). Every
rejection carries a typed reason; :data:`STATIC_FILTERS` is the registry, in reporting order.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from enum import StrEnum

from balancer.model import HostState
from balancer.optimizer.context import Context, is_soft, violated_rules, vm_host_allows
from balancer.plan import Blocked, BlockedReason
from policies.model import RuleKind


class Rejection(StrEnum):
    CURRENT = "current_host"  # the VM already runs there
    HOST_STATE = "host_state"  # maintenance, entering_maintenance, quarantined, unreachable
    CPU_INCOMPATIBLE = "cpu_incompatible"  # the host lacks CPU features the VM needs
    RULE = "rule"  # a hard vm_host or anti_affinity rule forbids it
    CAPACITY = "capacity"  # not enough memory or CPU left (with headroom)


@dataclass(frozen=True, slots=True, kw_only=True)
class HostVerdict:
    host: str
    reason: Rejection
    rule: str | None = None
    detail: str = ""

    @property
    def label(self) -> str:
        return f"rule:{self.rule}" if self.reason is Rejection.RULE and self.rule else self.reason


StaticFilter = Callable[[Context, int, int], HostVerdict | None]


def host_state_filter(ctx: Context, v: int, h: int) -> HostVerdict | None:
    state = ctx.host_state[h]
    if state.accepts_vms:
        return None
    return HostVerdict(host=ctx.host_names[h], reason=Rejection.HOST_STATE, detail=state.value)


def cpu_filter(ctx: Context, v: int, h: int) -> HostVerdict | None:
    vm = ctx.snapshot.vms[v]
    host = ctx.snapshot.hosts[h]
    if vm.runs_on(host):
        return None
    missing = ",".join(sorted(vm.cpu_features - host.cpu_features))
    return HostVerdict(host=host.name, reason=Rejection.CPU_INCOMPATIBLE, detail=f"lacks {missing}")


def cpu_features_missing(ctx: Context, v: int, h: int) -> Blocked | None:
    """A VM that runs (reality) on a host lacking CPU features it requires: accepted, flagged."""
    vm = ctx.snapshot.vms[v]
    host = ctx.snapshot.hosts[h]
    missing = sorted(vm.cpu_features - host.cpu_features)
    if not missing:
        return None
    return Blocked(
        vm=vm.name,
        reason=BlockedReason.CPU_FEATURES_MISSING,
        detail=f"runs on {host.name}, which lacks {', '.join(missing)}",
    )


def vm_host_filter(ctx: Context, v: int, h: int) -> HostVerdict | None:
    for ri in ctx.vm_rules[v]:
        r = ctx.rules[ri]
        if r.rule.kind is RuleKind.VM_HOST and r.hard and not vm_host_allows(r, h):
            return HostVerdict(
                host=ctx.host_names[h],
                reason=Rejection.RULE,
                rule=r.name,
                detail=f"{r.rule.mode.value} rule",
            )
    return None


#: the registry of per VM-and-host filters, in the order their reasons are reported
STATIC_FILTERS: tuple[StaticFilter, ...] = (host_state_filter, cpu_filter, vm_host_filter)


def static_verdict(ctx: Context, v: int, h: int) -> HostVerdict | None:
    if h == ctx.current[v]:
        return HostVerdict(host=ctx.host_names[h], reason=Rejection.CURRENT)
    for f in STATIC_FILTERS:
        verdict = f(ctx, v, h)
        if verdict is not None:
            return verdict
    return None


def static_candidates(ctx: Context, v: int) -> tuple[int, ...]:
    """Hosts (other than its own) the VM may go to as far as static filters say."""
    return tuple(h for h in range(ctx.n_hosts) if static_verdict(ctx, v, h) is None)


@dataclass(slots=True, kw_only=True)
class Loads:
    """Mutable per-host demand for a placement (milli-cores, MiB), used by heuristics."""

    cpu: list[int]
    mem: list[int]

    @classmethod
    def of(cls, ctx: Context, placement: Sequence[int]) -> Loads:
        cpu = list(ctx.host_cpu_base)
        mem = list(ctx.host_mem_base)
        for v, h in enumerate(placement):
            cpu[h] += ctx.vm_cpu[v]
            mem[h] += ctx.vm_mem[v]
        return cls(cpu=cpu, mem=mem)

    def move(self, ctx: Context, v: int, src: int, dst: int) -> None:
        self.cpu[src] -= ctx.vm_cpu[v]
        self.mem[src] -= ctx.vm_mem[v]
        self.cpu[dst] += ctx.vm_cpu[v]
        self.mem[dst] += ctx.vm_mem[v]


def fits(ctx: Context, loads: Loads, v: int, h: int) -> bool:
    return (
        loads.mem[h] + ctx.vm_mem[v] <= ctx.host_mem_cap[h]
        and loads.cpu[h] + ctx.vm_cpu[v] <= ctx.host_cpu_cap[h]
    )


def anti_affinity_conflict(ctx: Context, placement: Sequence[int], v: int, h: int) -> str | None:
    """The name of a hard anti_affinity rule that a VM placed on ``h`` would break (a soft,
    ``should``, group is never a conflict: see :func:`soft_effects`)."""
    for ri in ctx.vm_rules[v]:
        r = ctx.rules[ri]
        if (
            r.rule.kind is RuleKind.ANTI_AFFINITY
            and r.hard
            and any(m != v and placement[m] == h for m in r.members)
        ):
            return r.name
    return None


def in_affinity_group(ctx: Context, v: int) -> bool:
    """Whether the VM is in a hard affinity group (it moves with its group only)."""
    return any(
        ctx.rules[ri].rule.kind is RuleKind.AFFINITY
        and ctx.rules[ri].hard
        and len(ctx.rules[ri].members) > 1
        for ri in ctx.vm_rules[v]
    )


@dataclass(frozen=True, slots=True, kw_only=True)
class SoftEffects:
    """What moving one VM to a host does to its soft rules (names, in policy order)."""

    breaks: tuple[str, ...] = ()
    repairs: tuple[str, ...] = ()


def soft_effects(ctx: Context, placement: Sequence[int], v: int, h: int) -> SoftEffects:
    """The soft rules of ``v`` that moving it to ``h`` would break (satisfied now, violated
    after) or repair (violated now, satisfied after), the rest of the placement unchanged."""
    after = list(placement)
    after[v] = h
    before_bad = violated_rules(ctx, list(placement))
    after_bad = violated_rules(ctx, after)
    breaks: list[str] = []
    repairs: list[str] = []
    for ri in ctx.vm_rules[v]:
        if not is_soft(ctx.rules[ri]):
            continue
        if ri in after_bad and ri not in before_bad:
            breaks.append(ctx.rules[ri].name)
        elif ri in before_bad and ri not in after_bad:
            repairs.append(ctx.rules[ri].name)
    return SoftEffects(breaks=tuple(breaks), repairs=tuple(repairs))


def dynamic_verdict(
    ctx: Context, placement: Sequence[int], loads: Loads, v: int, h: int
) -> HostVerdict | None:
    rule = anti_affinity_conflict(ctx, placement, v, h)
    if rule is not None:
        return HostVerdict(
            host=ctx.host_names[h],
            reason=Rejection.RULE,
            rule=rule,
            detail="anti_affinity member already there",
        )
    if not fits(ctx, loads, v, h):
        what = "memory" if loads.mem[h] + ctx.vm_mem[v] > ctx.host_mem_cap[h] else "cpu"
        return HostVerdict(
            host=ctx.host_names[h],
            reason=Rejection.CAPACITY,
            detail=f"not enough {what} (with headroom)",
        )
    return None


def verdict(
    ctx: Context, placement: Sequence[int], loads: Loads, v: int, h: int
) -> HostVerdict | None:
    """Why ``v`` cannot go to ``h`` now (None: it can)."""
    return static_verdict(ctx, v, h) or dynamic_verdict(ctx, placement, loads, v, h)


def blocked_reason(
    ctx: Context, placement: Sequence[int], loads: Loads, v: int
) -> tuple[BlockedReason, str | None, str]:
    """Why a VM that should move cannot: the most specific reason over all hosts.

    Order: excluded, unreachable source, no host accepts VMs, CPU-incompatible with every
    accepting host, a rule forbids every compatible host, else capacity.
    """
    if v in ctx.excluded:
        return BlockedReason.EXCLUDED, None, "excluded by policy"
    if ctx.host_state[ctx.current[v]] is HostState.UNREACHABLE:
        return BlockedReason.UNREACHABLE, None, f"host {ctx.host_names[ctx.current[v]]} unreachable"
    others = [h for h in range(ctx.n_hosts) if h != ctx.current[v]]
    accepting = [h for h in others if ctx.accepts(h)]
    if not accepting:
        return BlockedReason.NO_TARGET, None, "no other host accepts VMs"
    compatible = [h for h in accepting if cpu_filter(ctx, v, h) is None]
    if not compatible:
        return BlockedReason.CPU_INCOMPATIBLE, None, "no accepting host has its CPU features"
    rule_free: list[int] = []
    first_rule: str | None = None
    for h in compatible:
        verdict_ = vm_host_filter(ctx, v, h)
        if verdict_ is None:
            rule = anti_affinity_conflict(ctx, placement, v, h)
            if rule is None:
                rule_free.append(h)
            elif first_rule is None:
                first_rule = rule
        elif first_rule is None:
            first_rule = verdict_.rule
    if not rule_free:
        return BlockedReason.RULE, first_rule, "a hard rule forbids every compatible host"
    return BlockedReason.CAPACITY, None, _capacity_detail(ctx, loads, v, rule_free)


def _capacity_detail(ctx: Context, loads: Loads, v: int, hosts: Sequence[int]) -> str:
    """What the VM needs against the most room a compatible, rule-free host has (with
    headroom), so that an operator sees by how much it does not fit."""

    def room(h: int) -> tuple[int, int]:
        return ctx.host_cpu_cap[h] - loads.cpu[h], ctx.host_mem_cap[h] - loads.mem[h]

    def slack(h: int) -> float:  # the tighter resource's shortfall, as a share of the host
        cpu_free, mem_free = room(h)
        return min(
            (cpu_free - ctx.vm_cpu[v]) / max(1, ctx.host_cpu_cap[h]),
            (mem_free - ctx.vm_mem[v]) / max(1, ctx.host_mem_cap[h]),
        )

    best = max(hosts, key=slack)
    cpu_free, mem_free = room(best)
    return (
        f"no compatible host has room (with headroom): it needs {ctx.vm_cpu[v] / 1000:.2f} "
        f"cores and {ctx.vm_mem[v]} MiB; the most room is on {ctx.host_names[best]}: "
        f"{max(0, cpu_free) / 1000:.2f} cores and {max(0, mem_free)} MiB free"
    )
