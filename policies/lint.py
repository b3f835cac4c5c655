"""Semantic lint of a policy, alone or against a snapshot (pure: values in, findings out).

Flags contradictions that schema validation cannot see, *before* the policy is applied
(VMware silently disables the newer conflicting rule; we refuse and say why):

* affinity and anti-affinity on the same pair of VMs,
* an anti-affinity group larger than the hosts its members may run on,
* a rule naming VMs or hosts that do not exist,
* a ``must`` rule whose hosts are all in maintenance (or otherwise cannot take VMs),
* a VM that must and must not run on the same host.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from itertools import combinations

from balancer.model import VM, Snapshot
from policies.model import Policy, Rule, RuleKind, RuleMode, Selector


class Severity(StrEnum):
    ERROR = "error"
    WARNING = "warning"


@dataclass(frozen=True, slots=True, kw_only=True)
class Finding:
    severity: Severity
    code: str
    message: str
    rules: tuple[str, ...]

    def __str__(self) -> str:
        return f"{self.severity.value}: {self.code}: {self.message}"


def _members(sel: Selector, snapshot: Snapshot | None) -> set[str]:
    if snapshot is None:
        return set(sel.names)
    return {v.name for v in snapshot.vms if sel.matches(v.name, v.labels)}


def _host_members(sel: Selector, snapshot: Snapshot) -> set[str]:
    return {h.name for h in snapshot.hosts if sel.matches(h.name, h.labels)}


def _where(rule: Rule) -> str:
    return f" ({rule.origin})" if rule.origin else ""


def _eligible_hosts(vm: VM, policy: Policy, snapshot: Snapshot) -> set[str]:
    """Hosts that could take ``vm``: able to accept VMs (or its own), CPU-compatible, and
    allowed by every hard vm_host rule."""
    out = set()
    for h in snapshot.hosts:
        if not (h.state.accepts_vms or (h.name == vm.host and not h.state.must_evacuate)):
            continue
        if not vm.runs_on(h):
            continue
        ok = True
        for r in policy.rules:
            if r.kind is not RuleKind.VM_HOST or not r.mode.hard:
                continue
            if not r.vms.matches(vm.name, vm.labels):
                continue
            on = r.hosts.matches(h.name, h.labels)
            if (r.mode is RuleMode.MUST and not on) or (r.mode is RuleMode.MUST_NOT and on):
                ok = False
                break
        if ok:
            out.add(h.name)
    return out


def lint(policy: Policy, snapshot: Snapshot | None = None) -> list[Finding]:
    findings: list[Finding] = []
    groups = {r.name: (r, _members(r.vms, snapshot)) for r in policy.rules}

    # affinity and anti-affinity on the same pair
    aff = [(r, m) for r, m in groups.values() if r.kind is RuleKind.AFFINITY]
    anti = [(r, m) for r, m in groups.values() if r.kind is RuleKind.ANTI_AFFINITY]
    for (ra, ma), (rb, mb) in ((a, b) for a in aff for b in anti):
        both = sorted(ma & mb)
        if len(both) >= 2:
            findings.append(
                Finding(
                    severity=Severity.ERROR,
                    code="affinity_conflict",
                    message=f"rules {ra.name!r}{_where(ra)} and {rb.name!r}{_where(rb)} want "
                    f"{both[0]} and {both[1]} both together and apart",
                    rules=(ra.name, rb.name),
                )
            )

    if snapshot is None:
        return findings

    vms = snapshot.vm_map()
    hosts = snapshot.host_map()
    # rules naming unknown VMs or hosts
    for r in policy.rules:
        unknown_vms = sorted(n for n in r.vms.names if n not in vms)
        if unknown_vms:
            findings.append(
                Finding(
                    severity=Severity.ERROR,
                    code="unknown_vm",
                    message=f"rule {r.name!r}{_where(r)} names unknown VM(s) "
                    f"{', '.join(unknown_vms)}",
                    rules=(r.name,),
                )
            )
        unknown_hosts = sorted(n for n in r.hosts.names if n not in hosts)
        if unknown_hosts:
            findings.append(
                Finding(
                    severity=Severity.ERROR,
                    code="unknown_host",
                    message=f"rule {r.name!r}{_where(r)} names unknown host(s) "
                    f"{', '.join(unknown_hosts)}",
                    rules=(r.name,),
                )
            )

    # a must rule whose hosts are all unable to take VMs
    for r in policy.rules:
        if r.kind is not RuleKind.VM_HOST or r.mode is not RuleMode.MUST:
            continue
        targets = _host_members(r.hosts, snapshot)
        if targets and not any(hosts[h].state.accepts_vms for h in targets):
            states = ", ".join(f"{h} {hosts[h].state.value}" for h in sorted(targets))
            findings.append(
                Finding(
                    severity=Severity.ERROR,
                    code="must_hosts_unavailable",
                    message=f"rule {r.name!r}{_where(r)}: every host it allows is unavailable "
                    f"({states})",
                    rules=(r.name,),
                )
            )

    # must and must_not on the same host for the same VM
    hard = [r for r in policy.rules if r.kind is RuleKind.VM_HOST and r.mode.hard]
    for ra, rb in combinations(hard, 2):
        if ra.mode == rb.mode:
            continue
        common_vms = _members(ra.vms, snapshot) & _members(rb.vms, snapshot)
        common_hosts = _host_members(ra.hosts, snapshot) & _host_members(rb.hosts, snapshot)
        if common_vms and common_hosts:
            findings.append(
                Finding(
                    severity=Severity.ERROR,
                    code="vm_host_conflict",
                    message=f"rules {ra.name!r}{_where(ra)} and {rb.name!r}{_where(rb)} both "
                    f"must and must not place {sorted(common_vms)[0]} on "
                    f"{sorted(common_hosts)[0]}",
                    rules=(ra.name, rb.name),
                )
            )

    # anti-affinity group larger than its eligible hosts
    for r, members in anti:
        eligible: set[str] = set()
        for name in members:
            if name in vms:
                eligible |= _eligible_hosts(vms[name], policy, snapshot)
        known = [n for n in members if n in vms]
        if len(known) > len(eligible):
            findings.append(
                Finding(
                    severity=Severity.ERROR,
                    code="anti_affinity_too_large",
                    message=f"rule {r.name!r}{_where(r)} keeps {len(known)} VMs apart but they "
                    f"may run on only {len(eligible)} host(s)",
                    rules=(r.name,),
                )
            )
    return findings
