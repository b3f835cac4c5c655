"""Pure checks of the executor: the pre-start re-check, anti-affinity groups, the target
choosers for a retry and a plan's premises. Values in, values out; no port, no clock."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from balancer.errors import InputError
from balancer.executor.types import SkipReason
from balancer.model import Snapshot
from balancer.optimizer.assist import assist
from policies.model import Policy, RuleKind

#: (live snapshot, VM, hosts to leave out, memory reserved per host by migrations in flight)
#: -> another target, or None. With a policy the executor uses :func:`make_policy_chooser`.
TargetChooser = Callable[[Snapshot, str, frozenset[str], Mapping[str, int]], str | None]


@dataclass(frozen=True, slots=True, kw_only=True)
class Recheck:
    """The verdict of the pre-start re-check: start, skip (with the reason) or wait."""

    skip: SkipReason | None = None
    wait: str | None = None
    detail: str = ""

    @property
    def ok(self) -> bool:
        return self.skip is None and self.wait is None


OK = Recheck()


def anti_affinity_groups(snapshot: Snapshot, policy: Policy | None) -> dict[str, frozenset[str]]:
    """Rule name -> the VMs of the snapshot in that hard anti-affinity group (a ``should``
    group is a preference of the optimizer, not a pre-start check)."""
    if policy is None:
        return {}
    groups: dict[str, frozenset[str]] = {}
    for rule in policy.rules:
        if rule.kind is not RuleKind.ANTI_AFFINITY or not rule.hard:
            continue
        members = frozenset(v.name for v in snapshot.vms if rule.vms.matches(v.name, v.labels))
        if len(members) > 1:
            groups[rule.name] = members
    return groups


def free_memory_mib(snapshot: Snapshot, host: str, reserved: Mapping[str, int]) -> int:
    h = snapshot.host(host)
    used = sum(v.memory_mib for v in snapshot.vms if v.host == host)
    return h.memory_mib - h.overhead_memory_mib - used - reserved.get(host, 0)


def recheck(
    snapshot: Snapshot,
    *,
    vm: str,
    source: str,
    target: str,
    reserved_mib: Mapping[str, int],
    outbound_mib: Mapping[str, int],
    groups: Mapping[str, frozenset[str]],
    inbound_vms: Mapping[str, frozenset[str]],
    can_run: Callable[[str, str], bool],
) -> Recheck:
    """Whether ``vm`` can move from ``source`` to ``target`` right now.

    ``reserved_mib``: memory of migrations in flight *to* each host; ``outbound_mib``: memory of
    migrations in flight *from* each host (it frees when they finish: a move that fits only after
    them waits instead of being skipped); ``inbound_vms``: VMs in flight to each host."""
    try:
        v = snapshot.vm(vm)
    except KeyError:
        return Recheck(skip=SkipReason.VM_GONE, detail=f"{vm} is on no reachable host")
    hosts = snapshot.host_map()
    if v.host == target:
        return Recheck(skip=SkipReason.ALREADY_ON_TARGET, detail=f"{vm} already runs on {target}")
    if v.host != source:
        return Recheck(skip=SkipReason.VM_MOVED, detail=f"{vm} runs on {v.host}, not {source}")
    if source not in hosts or not hosts[source].state.can_send:
        return Recheck(skip=SkipReason.SOURCE_UNREACHABLE, detail=f"{source} is unreachable")
    if target not in hosts:
        return Recheck(skip=SkipReason.TARGET_UNKNOWN, detail=f"no host {target}")
    t = hosts[target]
    if not t.state.accepts_vms:
        return Recheck(skip=SkipReason.TARGET_NOT_ACTIVE, detail=f"{target} is {t.state.value}")
    if not can_run(vm, target):
        return Recheck(
            skip=SkipReason.CPU_INCOMPATIBLE, detail=f"{target} cannot run {vm}'s CPU model"
        )
    placement = snapshot.placement()
    for rule, members in sorted(groups.items()):
        if vm not in members:
            continue
        there = sorted(
            m
            for m in members
            if m != vm and (placement.get(m) == target or m in inbound_vms.get(target, frozenset()))
        )
        if there:
            return Recheck(
                skip=SkipReason.ANTI_AFFINITY,
                detail=f"rule {rule}: {', '.join(there)} on {target}",
            )
    free = free_memory_mib(snapshot, target, reserved_mib)
    if free < v.memory_mib:
        if free + outbound_mib.get(target, 0) >= v.memory_mib:
            return Recheck(wait="room", detail=f"{target} has room once its outbound moves end")
        return Recheck(
            skip=SkipReason.NO_ROOM,
            detail=f"{target} has {free} MiB free, {vm} needs {v.memory_mib} MiB",
        )
    return OK


def make_default_chooser(
    policy: Policy | None = None, can_run: Callable[[str, str], bool] | None = None
) -> TargetChooser:
    """Any active, CPU-compatible host with room and no anti-affinity conflict, the one with the
    most free memory first."""

    def choose(
        snapshot: Snapshot, vm: str, exclude: frozenset[str], reserved: Mapping[str, int]
    ) -> str | None:
        try:
            v = snapshot.vm(vm)
        except KeyError:
            return None
        groups = anti_affinity_groups(snapshot, policy)
        peers = frozenset().union(*(m for m in groups.values() if vm in m)) - {vm}
        best: tuple[int, str] | None = None
        for h in snapshot.hosts:
            if h.name in exclude or h.name == v.host or not h.state.accepts_vms:
                continue
            compatible = can_run(vm, h.name) if can_run else v.runs_on(h)
            if not compatible:
                continue
            if any(p.host == h.name for p in snapshot.vms if p.name in peers):
                continue
            free = free_memory_mib(snapshot, h.name, reserved)
            if free < v.memory_mib:
                continue
            if best is None or free > best[0] or (free == best[0] and h.name < best[1]):
                best = (free, h.name)
        return best[1] if best else None

    return choose


def make_policy_chooser(
    policy: Callable[[], Policy | None], can_run: Callable[[str, str], bool] | None = None
) -> TargetChooser:
    """The target of a retry, as the optimizer's assistant ranks it under the policy in force
    (``policy()`` at the time of the retry): only hosts every hard rule (vm_host, affinity,
    anti-affinity), the headroom, the host state and the CPU features allow, best first, that
    also have room beside the migrations in flight. Without a policy: the default chooser."""

    def choose(
        snapshot: Snapshot, vm: str, exclude: frozenset[str], reserved: Mapping[str, int]
    ) -> str | None:
        pol = policy()
        if pol is None:
            return make_default_chooser(None, can_run)(snapshot, vm, exclude, reserved)
        try:
            v = snapshot.vm(vm)
            ranked = assist(snapshot, pol, vm).candidates
        except (KeyError, InputError):
            return None
        for c in ranked:
            if c.host in exclude or c.host == v.host:
                continue
            if can_run is not None and not can_run(vm, c.host):
                continue
            if free_memory_mib(snapshot, c.host, reserved) < v.memory_mib:
                continue
            return c.host
        return None

    return choose


def premises_digest(snapshot: Snapshot) -> str:
    """What a plan assumed about the cluster: where every VM runs and every host's state (not the
    measured load, which changes all the time)."""
    doc = {
        "hosts": sorted([h.name, h.state.value] for h in snapshot.hosts),
        "vms": sorted([v.name, v.host, v.memory_mib] for v in snapshot.vms),
    }
    return hashlib.sha256(json.dumps(doc, separators=(",", ":")).encode()).hexdigest()
