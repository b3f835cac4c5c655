"""Balance metrics (defined once): host load per resource, imbalance, max load.

* Load of a host per resource = demand / capacity (see :mod:`balancer.model`).
* Only hosts in state ``active`` take part: hosts being emptied or fenced are not balanced.
* ``imbalance`` = weighted mean of the per-resource population standard deviations of the host
  loads, weights from ``policy.balance``: ``(w_cpu*sd_cpu + w_mem*sd_mem) / (w_cpu + w_mem)``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from balancer.model import stddev
from balancer.optimizer.context import Context
from balancer.plan import Metrics


def host_loads(ctx: Context, placement: Sequence[int]) -> tuple[list[float], list[float]]:
    """(cpu load, memory load) per host for a placement (host index per VM)."""
    cpu = [h.overhead_cpu_cores for h in ctx.snapshot.hosts]
    mem = [float(h.overhead_memory_mib) for h in ctx.snapshot.hosts]
    for v, h in enumerate(placement):
        vm = ctx.snapshot.vms[v]
        cpu[h] += vm.cpu_used_cores
        mem[h] += vm.memory_mib
    hosts = ctx.snapshot.hosts
    return (
        [c / hosts[i].cpu_cores for i, c in enumerate(cpu)],
        [m / hosts[i].memory_mib for i, m in enumerate(mem)],
    )


def weights(ctx: Context) -> tuple[float, float]:
    """The normalized (cpu, memory) weights of ``policy.balance``: finite, in [0, 1], sum 1.

    The schema refuses non-finite weights; a policy built in code may still carry them, so
    here an infinite weight takes all of the weight (both infinite: half each), a NaN or a
    negative one none, so that the imbalance is never NaN.
    """
    w_cpu, w_mem = ctx.policy.balance.cpu, ctx.policy.balance.memory
    if math.isinf(w_cpu) or math.isinf(w_mem):
        w_cpu, w_mem = float(w_cpu == math.inf), float(w_mem == math.inf)
    w_cpu = w_cpu if w_cpu > 0 else 0.0  # NaN compares false: no weight
    w_mem = w_mem if w_mem > 0 else 0.0
    top = max(w_cpu, w_mem)
    if not top > 0:
        return 0.5, 0.5
    w_cpu, w_mem = w_cpu / top, w_mem / top  # no overflow for huge finite weights
    total = w_cpu + w_mem
    out = (w_cpu / total, w_mem / total)
    assert all(math.isfinite(x) for x in out), out
    return out


def metrics(ctx: Context, placement: Sequence[int]) -> Metrics:
    cpu, mem = host_loads(ctx, placement)
    active = [h for h in range(ctx.n_hosts) if ctx.balanced_host(h)]
    cpu_a = [cpu[h] for h in active]
    mem_a = [mem[h] for h in active]
    w_cpu, w_mem = weights(ctx)
    sd_cpu = stddev(cpu_a)
    sd_mem = stddev(mem_a)
    return Metrics(
        imbalance=w_cpu * sd_cpu + w_mem * sd_mem,
        cpu_stddev=sd_cpu,
        memory_stddev=sd_mem,
        max_cpu_load=max(cpu_a, default=0.0),
        max_memory_load=max(mem_a, default=0.0),
    )


def imbalance(ctx: Context, placement: Sequence[int]) -> float:
    return metrics(ctx, placement).imbalance


def cpu_lower_bound(ctx: Context) -> float:
    """Lower bound of the max CPU load over active hosts: total demand / total capacity.

    The demand is every VM's (and active host's overhead), except VMs on unreachable hosts.
    """
    demand = sum(h.overhead_cpu_cores for h in ctx.snapshot.hosts if h.state.accepts_vms)
    for v, vm in enumerate(ctx.snapshot.vms):
        if ctx.host_state[ctx.current[v]].can_send:
            demand += vm.cpu_used_cores
    capacity = sum(h.cpu_cores for h in ctx.snapshot.hosts if h.state.accepts_vms)
    return demand / capacity if capacity else math.inf


class ImbalanceTracker:
    """Incremental imbalance for single-VM what-ifs (O(1) per query), used for move gains."""

    def __init__(self, ctx: Context, placement: Sequence[int]) -> None:
        self._ctx = ctx
        cpu, mem = host_loads(ctx, placement)
        self.cpu = cpu
        self.mem = mem
        self.active = [ctx.balanced_host(h) for h in range(ctx.n_hosts)]
        self.n = sum(self.active)
        self.w_cpu, self.w_mem = weights(ctx)
        self.s_cpu = sum(c for c, a in zip(cpu, self.active, strict=True) if a)
        self.q_cpu = sum(c * c for c, a in zip(cpu, self.active, strict=True) if a)
        self.s_mem = sum(m for m, a in zip(mem, self.active, strict=True) if a)
        self.q_mem = sum(m * m for m, a in zip(mem, self.active, strict=True) if a)

    def _sd(self, s: float, q: float) -> float:
        if self.n < 2:
            return 0.0
        var = q / self.n - (s / self.n) ** 2
        return math.sqrt(max(var, 0.0))

    def value(self) -> float:
        return self.w_cpu * self._sd(self.s_cpu, self.q_cpu) + self.w_mem * self._sd(
            self.s_mem, self.q_mem
        )

    def what_if(self, v: int, src: int, dst: int) -> float:
        """The imbalance if VM ``v`` moved from ``src`` to ``dst`` (state unchanged)."""
        vm = self._ctx.snapshot.vms[v]
        hosts = self._ctx.snapshot.hosts
        s_cpu, q_cpu, s_mem, q_mem = self.s_cpu, self.q_cpu, self.s_mem, self.q_mem
        for h, sign in ((src, -1.0), (dst, 1.0)):
            if not self.active[h]:
                continue
            dc = sign * vm.cpu_used_cores / hosts[h].cpu_cores
            dm = sign * vm.memory_mib / hosts[h].memory_mib
            c, m = self.cpu[h], self.mem[h]
            s_cpu += dc
            q_cpu += (c + dc) ** 2 - c * c
            s_mem += dm
            q_mem += (m + dm) ** 2 - m * m
        return self.w_cpu * self._sd(s_cpu, q_cpu) + self.w_mem * self._sd(s_mem, q_mem)


def average_loads(ctx: Context) -> tuple[float, float]:
    """The loads every active host would have in a perfect balance: (cpu, memory).

    The imbalance objective pulls each active host's load towards these values.
    """
    cpu_demand = sum(h.overhead_cpu_cores for h in ctx.snapshot.hosts if h.state.accepts_vms)
    mem_demand = float(
        sum(h.overhead_memory_mib for h in ctx.snapshot.hosts if h.state.accepts_vms)
    )
    for v, vm in enumerate(ctx.snapshot.vms):
        if ctx.host_state[ctx.current[v]].can_send:
            cpu_demand += vm.cpu_used_cores
            mem_demand += vm.memory_mib
    cores = sum(h.cpu_cores for h in ctx.snapshot.hosts if h.state.accepts_vms)
    mem = sum(h.memory_mib for h in ctx.snapshot.hosts if h.state.accepts_vms)
    return (cpu_demand / cores if cores else 0.0, mem_demand / mem if mem else 0.0)


#: the deviation penalty is convex piecewise linear in ``d = load - average``: slope 1 up to
#: the first breakpoint, then one more per breakpoint passed (an integer-friendly stand-in
#: for the square, so that spreading load between two hot hosts also pays)
DEVIATION_BREAKPOINTS: tuple[float, ...] = (0.0, 0.01, 0.02, 0.05, 0.10, 0.20, 0.40)


def deviation_penalty(d: float) -> float:
    """Penalty of one host's load being ``d`` away from the average (one resource)."""
    a = d if d >= 0 else -d
    total = 0.0
    for t in DEVIATION_BREAKPOINTS:
        if a <= t:
            break
        total += a - t
    return total
