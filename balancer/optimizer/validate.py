"""An independent plan validator: replays a plan step by step on the snapshot and checks every
hard requirement. Pure; it shares no code with the optimizer or the planner on purpose (only
the model and policy values), so that it can catch their mistakes. The executor reuses it.

Checked, per step: the VM is where the plan says and moves once per step; the source can send
(not unreachable) and the VM is not excluded; the target accepts VMs, has the VM's CPU features
and is allowed by its hard vm_host rules; at most ``concurrent_per_host`` migrations touch a host
and at most ``concurrent_total`` run; with in-flight VMs counted on both hosts, every target's
memory and CPU stay within ``capacity x (1 - headroom)``; no hard anti_affinity or affinity
rule that held before the step is broken during or after it (``should`` groups are soft: never
checked). At the end: at most
``moves_per_cycle`` non-temporary moves, every VM still on a host that must be emptied is
listed as blocked, and steps are listed in order. A ``partial`` plan (hard rules left
violated at the end, each listed with its cause) is checked the same way: its steps must be
valid; a rule violated before a step may stay violated after it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from balancer.model import Snapshot
from balancer.plan import MoveReason, Plan, PlanStatus
from policies.model import Policy, Rule, RuleKind


@dataclass(frozen=True, slots=True, kw_only=True)
class Violation:
    step: int  # -1 for whole-plan checks
    vm: str
    check: str
    detail: str

    def __str__(self) -> str:
        return f"step {self.step}: {self.vm}: {self.check}: {self.detail}"


def _members(rule: Rule, snapshot: Snapshot) -> list[str]:
    return [v.name for v in snapshot.vms if rule.vms.matches(v.name, v.labels)]


def _rule_holds(rule: Rule, members: list[str], where: Mapping[str, set[str]]) -> bool:
    """Whether a hard anti_affinity/affinity rule holds; ``where`` maps a VM to the hosts it
    occupies (two while in flight)."""
    if rule.kind is RuleKind.ANTI_AFFINITY:
        seen: set[str] = set()
        for m in members:
            if seen & where[m]:
                return False
            seen |= where[m]
        return True
    hosts = [where[m] for m in members]
    return not hosts or bool(set.intersection(*hosts))


def validate_plan(snapshot: Snapshot, policy: Policy, plan: Plan) -> tuple[Violation, ...]:
    """Every violation of a hard requirement (empty tuple: the plan is valid)."""
    out: list[Violation] = []
    hosts = snapshot.host_map()
    vms = snapshot.vm_map()
    pos = snapshot.placement()
    cpu_cap = {h.name: h.cpu_cores * (1 - policy.headroom.cpu) + 1e-6 for h in snapshot.hosts}
    mem_cap = {h.name: h.memory_mib * (1 - policy.headroom.memory) + 1e-6 for h in snapshot.hosts}
    cpu = {h.name: h.overhead_cpu_cores for h in snapshot.hosts}
    mem = {h.name: float(h.overhead_memory_mib) for h in snapshot.hosts}
    for v in snapshot.vms:
        cpu[v.host] += v.cpu_used_cores
        mem[v.host] += v.memory_mib
    group_rules = [
        (r, _members(r, snapshot))
        for r in policy.rules
        if r.kind in (RuleKind.AFFINITY, RuleKind.ANTI_AFFINITY) and r.mode.hard
    ]
    host_rules = [r for r in policy.rules if r.kind is RuleKind.VM_HOST and r.mode.hard]
    limits = policy.limits

    steps = [m.step for m in plan.moves]
    if steps != sorted(steps):
        out.append(Violation(step=-1, vm="", check="order", detail="moves not in step order"))
    for step in sorted(set(steps)):
        moves = [m for m in plan.moves if m.step == step]
        before = {name: {h} for name, h in pos.items()}
        holds_before = [_rule_holds(r, ms, before) for r, ms in group_rules]
        touch: dict[str, int] = {}
        cpu_in: dict[str, float] = {}
        mem_in: dict[str, float] = {}
        seen: set[str] = set()
        for m in moves:
            vm = vms.get(m.vm)
            if vm is None or m.target not in hosts or m.source not in hosts:
                out.append(
                    Violation(step=step, vm=m.vm, check="unknown", detail="unknown VM or host")
                )
                continue
            if m.vm in seen:
                out.append(
                    Violation(step=step, vm=m.vm, check="twice", detail="moves twice in one step")
                )
            seen.add(m.vm)
            if pos[m.vm] != m.source:
                out.append(
                    Violation(
                        step=step,
                        vm=m.vm,
                        check="source",
                        detail=f"is on {pos[m.vm]}, not {m.source}",
                    )
                )
            if m.source == m.target:
                out.append(Violation(step=step, vm=m.vm, check="noop", detail="same host"))
            if not hosts[m.source].state.can_send:
                out.append(
                    Violation(
                        step=step,
                        vm=m.vm,
                        check="host_state",
                        detail=f"source {m.source} is {hosts[m.source].state}",
                    )
                )
            if not hosts[m.target].state.accepts_vms:
                out.append(
                    Violation(
                        step=step,
                        vm=m.vm,
                        check="host_state",
                        detail=f"target {m.target} is {hosts[m.target].state}",
                    )
                )
            if policy.excluded(vm.name, vm.labels):
                out.append(
                    Violation(step=step, vm=m.vm, check="excluded", detail="excluded VM moved")
                )
            if not vm.runs_on(hosts[m.target]):
                out.append(
                    Violation(
                        step=step, vm=m.vm, check="cpu", detail=f"{m.target} lacks CPU features"
                    )
                )
            for r in host_rules:
                if r.vms.matches(vm.name, vm.labels):
                    target = hosts[m.target]
                    if r.hosts.matches(target.name, target.labels) != r.mode.positive:
                        out.append(
                            Violation(
                                step=step,
                                vm=m.vm,
                                check="rule",
                                detail=f"{r.name} forbids {m.target}",
                            )
                        )
            for h in (m.source, m.target):
                touch[h] = touch.get(h, 0) + 1
            cpu_in[m.target] = cpu_in.get(m.target, 0.0) + vm.cpu_used_cores
            mem_in[m.target] = mem_in.get(m.target, 0.0) + vm.memory_mib
        if len(moves) > limits.concurrent_total:
            out.append(
                Violation(
                    step=step, vm="", check="concurrency", detail=f"{len(moves)} > concurrent_total"
                )
            )
        for h, n in sorted(touch.items()):
            if n > limits.concurrent_per_host:
                out.append(
                    Violation(
                        step=step, vm="", check="concurrency", detail=f"{n} migrations touch {h}"
                    )
                )
        for h in sorted(mem_in):
            if mem[h] + mem_in[h] > mem_cap[h]:
                out.append(
                    Violation(
                        step=step,
                        vm="",
                        check="memory",
                        detail=f"{h}: {mem[h] + mem_in[h]:.0f} MiB in flight > {mem_cap[h]:.0f}",
                    )
                )
            if cpu[h] + cpu_in[h] > cpu_cap[h]:
                out.append(
                    Violation(
                        step=step,
                        vm="",
                        check="cpu_capacity",
                        detail=f"{h}: {cpu[h] + cpu_in[h]:.2f} cores > {cpu_cap[h]:.2f}",
                    )
                )
        during = {name: set(hs) for name, hs in before.items()}
        for m in moves:
            if m.vm in during:
                during[m.vm].add(m.target)
        after = dict(pos)
        for m in moves:
            if m.vm in vms and m.target in hosts and pos[m.vm] in hosts:
                after[m.vm] = m.target
                m_source = pos[m.vm]
                cpu[m_source] -= vms[m.vm].cpu_used_cores
                mem[m_source] -= vms[m.vm].memory_mib
                cpu[m.target] += vms[m.vm].cpu_used_cores
                mem[m.target] += vms[m.vm].memory_mib
        after_sets = {name: {h} for name, h in after.items()}
        for (r, ms), held in zip(group_rules, holds_before, strict=True):
            if not held:
                continue
            if r.kind is RuleKind.ANTI_AFFINITY and not _rule_holds(r, ms, during):
                out.append(
                    Violation(
                        step=step, vm="", check="rule", detail=f"{r.name} broken while migrating"
                    )
                )
            elif not _rule_holds(r, ms, after_sets):
                out.append(
                    Violation(
                        step=step, vm="", check="rule", detail=f"{r.name} broken after the step"
                    )
                )
        pos = after
    real = [m for m in plan.moves if m.reason is not MoveReason.TEMPORARY]
    if len(real) > limits.moves_per_cycle:
        out.append(
            Violation(step=-1, vm="", check="budget", detail=f"{len(real)} moves > moves_per_cycle")
        )
    blocked = {b.vm for b in plan.blocked}
    if plan.status is PlanStatus.INFEASIBLE:
        return tuple(out)
    for name, h in sorted(pos.items()):
        if hosts[h].state.must_evacuate and name not in blocked:
            out.append(
                Violation(
                    step=-1,
                    vm=name,
                    check="evacuation",
                    detail=f"left on {h} ({hosts[h].state}) and not blocked",
                )
            )
    return tuple(out)
