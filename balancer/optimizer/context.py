"""The optimizer's view of one snapshot and policy: indices, integer capacities, resolved rules.

Integer scaling used by the CP-SAT model: CPU in milli-cores, memory in MiB, loads in units
of 1/LOAD_SCALE. Built once per call; pure.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from balancer.model import HostState, Snapshot
from balancer.plan import SoftViolation
from policies.model import Policy, Rule, RuleKind, RuleMode, SoftRules

#: loads (demand / capacity) are scaled by this in the model: 1.0 load = 100_000
LOAD_SCALE = 100_000


def milli(cores: float) -> int:
    return round(cores * 1000)


@dataclass(frozen=True, slots=True, kw_only=True)
class ResolvedRule:
    rule: Rule
    #: VM indices the rule selects
    members: tuple[int, ...]
    #: host indices the host selector matches (vm_host rules)
    hosts: frozenset[int]

    @property
    def name(self) -> str:
        return self.rule.name

    @property
    def hard(self) -> bool:
        return self.rule.hard


@dataclass(frozen=True, slots=True, kw_only=True)
class Context:
    snapshot: Snapshot
    policy: Policy
    host_names: tuple[str, ...]
    vm_names: tuple[str, ...]
    host_index: Mapping[str, int]
    vm_index: Mapping[str, int]
    #: host index of each VM in the snapshot
    current: tuple[int, ...]
    vm_cpu: tuple[int, ...]  # milli-cores measured
    vm_mem: tuple[int, ...]  # MiB configured
    host_cores: tuple[int, ...]  # milli-cores of capacity
    host_mem: tuple[int, ...]  # MiB of capacity
    host_cpu_cap: tuple[int, ...]  # milli-cores usable (with headroom)
    host_mem_cap: tuple[int, ...]  # MiB usable (with headroom)
    host_cpu_base: tuple[int, ...]  # overhead milli-cores
    host_mem_base: tuple[int, ...]  # overhead MiB
    host_state: tuple[HostState, ...]
    excluded: frozenset[int]
    held: frozenset[int]
    rules: tuple[ResolvedRule, ...]
    #: per VM, indices into ``rules`` of the rules that select it
    vm_rules: tuple[tuple[int, ...], ...]

    # -- host classes ----------------------------------------------------------------------------
    def accepts(self, h: int) -> bool:
        return self.host_state[h].accepts_vms

    def balanced_host(self, h: int) -> bool:
        """Hosts that take part in the imbalance metric: active ones."""
        return self.host_state[h] is HostState.ACTIVE

    def can_move(self, v: int) -> bool:
        """Whether the VM may be moved at all (not excluded, its host can send)."""
        return v not in self.excluded and self.host_state[self.current[v]].can_send

    @property
    def n_hosts(self) -> int:
        return len(self.host_names)

    @property
    def n_vms(self) -> int:
        return len(self.vm_names)


def build_context(
    snapshot: Snapshot, policy: Policy, held: frozenset[str] = frozenset()
) -> Context:
    hosts = snapshot.hosts
    vms = snapshot.vms
    host_index = {h.name: i for i, h in enumerate(hosts)}
    vm_index = {v.name: i for i, v in enumerate(vms)}
    resolved: list[ResolvedRule] = []
    vm_rules: list[list[int]] = [[] for _ in vms]
    for rule in policy.rules:
        members = tuple(i for i, v in enumerate(vms) if rule.vms.matches(v.name, v.labels))
        matched = frozenset(i for i, h in enumerate(hosts) if rule.hosts.matches(h.name, h.labels))
        for m in members:
            vm_rules[m].append(len(resolved))
        resolved.append(ResolvedRule(rule=rule, members=members, hosts=matched))
    cpu_headroom = min(max(policy.headroom.cpu, 0.0), 1.0)
    mem_headroom = min(max(policy.headroom.memory, 0.0), 1.0)
    return Context(
        snapshot=snapshot,
        policy=policy,
        host_names=tuple(h.name for h in hosts),
        vm_names=tuple(v.name for v in vms),
        host_index=host_index,
        vm_index=vm_index,
        current=tuple(host_index[v.host] for v in vms),
        vm_cpu=tuple(milli(v.cpu_used_cores) for v in vms),
        vm_mem=tuple(v.memory_mib for v in vms),
        host_cores=tuple(h.cpu_cores * 1000 for h in hosts),
        host_mem=tuple(h.memory_mib for h in hosts),
        host_cpu_cap=tuple(int(h.cpu_cores * 1000 * (1 - cpu_headroom)) for h in hosts),
        host_mem_cap=tuple(int(h.memory_mib * (1 - mem_headroom)) for h in hosts),
        host_cpu_base=tuple(milli(h.overhead_cpu_cores) for h in hosts),
        host_mem_base=tuple(h.overhead_memory_mib for h in hosts),
        host_state=tuple(h.state for h in hosts),
        excluded=frozenset(i for i, v in enumerate(vms) if policy.excluded(v.name, v.labels)),
        held=frozenset(vm_index[n] for n in held if n in vm_index),
        rules=tuple(resolved),
        vm_rules=tuple(tuple(r) for r in vm_rules),
    )


def vm_host_allows(rule: ResolvedRule, h: int) -> bool:
    """Whether a vm_host rule is satisfied by a member placed on host ``h``."""
    return (h in rule.hosts) == rule.rule.mode.positive


def violated_rules(
    ctx: Context, placement: tuple[int, ...] | list[int]
) -> dict[int, tuple[int, ...]]:
    """Rules violated by a placement -> the VMs that violate them (the ones that should move).

    anti_affinity: every member sharing a host with another member except the first one;
    affinity: members not on the host that holds most members (ties: lowest host index);
    vm_host: members on a host the rule does not allow.

    Soft rules (``should`` / ``should_not``, on every kind) are reported too: callers tell
    them apart with :func:`is_soft` (or :func:`hard_violations`).
    """
    out: dict[int, tuple[int, ...]] = {}
    for ri, r in enumerate(ctx.rules):
        bad: list[int] = []
        if r.rule.kind is RuleKind.VM_HOST:
            bad = [m for m in r.members if not vm_host_allows(r, placement[m])]
        elif r.rule.kind is RuleKind.ANTI_AFFINITY:
            seen: set[int] = set()
            for m in r.members:
                if placement[m] in seen:
                    bad.append(m)
                seen.add(placement[m])
        elif r.members:
            count: dict[int, int] = {}
            for m in r.members:
                count[placement[m]] = count.get(placement[m], 0) + 1
            home = min(count, key=lambda h: (-count[h], h))
            bad = [m for m in r.members if placement[m] != home]
        if bad:
            out[ri] = tuple(bad)
    return out


def hard_violations(
    ctx: Context, placement: tuple[int, ...] | list[int]
) -> dict[int, tuple[int, ...]]:
    """:func:`violated_rules` restricted to hard rules."""
    return {ri: bad for ri, bad in violated_rules(ctx, placement).items() if ctx.rules[ri].hard}


def is_soft(rule: ResolvedRule) -> bool:
    """A soft rule of any kind: vm_host should / should_not, affinity or anti_affinity should.
    Soft rules are objective terms (a penalty), never constraints."""
    return not rule.hard


def is_soft_vm_host(rule: ResolvedRule) -> bool:
    return rule.rule.kind is RuleKind.VM_HOST and rule.rule.mode in (
        RuleMode.SHOULD,
        RuleMode.SHOULD_NOT,
    )


def is_soft_group(rule: ResolvedRule) -> bool:
    """A soft VM-VM rule: affinity or anti_affinity with ``mode: should``."""
    return rule.rule.kind is not RuleKind.VM_HOST and not rule.hard


def repairs_soft_rules(policy: Policy, *, balances: bool, outside_target: bool) -> bool:
    """Whether this cycle moves VMs to repair soft-rule violations (``policy.soft_rules``).

    ``repair``: whenever the threshold balances (2..5); ``when_balancing``: only when the
    cycle balances anyway (the cluster is outside the threshold's target). Never at
    threshold 1 (mandatory moves only).
    """
    if not balances:
        return False
    return policy.soft_rules is SoftRules.REPAIR or outside_target


def soft_violations(
    ctx: Context, placement: tuple[int, ...] | list[int]
) -> tuple[SoftViolation, ...]:
    """The soft rules a placement breaks, in policy order, each with the VMs out of place and
    the hosts concerned.

    anti_affinity: the members on hosts that hold more than one member, and those hosts;
    affinity: every member and the hosts they are spread over; vm_host: the members on a host
    the rule advises against, and those hosts.
    """
    out: list[SoftViolation] = []
    for ri, bad in violated_rules(ctx, placement).items():
        r = ctx.rules[ri]
        if not is_soft(r):
            continue
        if r.rule.kind is RuleKind.ANTI_AFFINITY:
            crowded = {placement[m] for m in bad}
            vms = [m for m in r.members if placement[m] in crowded]
        elif r.rule.kind is RuleKind.AFFINITY:
            vms = list(r.members)
        else:
            vms = list(bad)
        out.append(
            SoftViolation(
                rule=r.name,
                kind=r.rule.kind,
                mode=r.rule.mode,
                vms=tuple(sorted(ctx.vm_names[m] for m in vms)),
                hosts=tuple(sorted({ctx.host_names[placement[m]] for m in vms})),
            )
        )
    return tuple(out)
