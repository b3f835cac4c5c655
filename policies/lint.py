"""Semantic lint of a policy, alone or against a snapshot (pure: values in, findings out).

Flags contradictions that schema validation cannot see, *before* the policy is applied
(VMware silently disables the newer conflicting rule; we refuse and say why). Every finding
names the rules involved, with the file and line they were written at.

The contradiction classes (hard rules no placement can meet, and certain capacity
contradictions) come from :func:`balancer.optimizer.feasibility.rule_conflicts`, the same
analysis the optimizer uses to explain an infeasible plan, so that ``policy check`` and
``plan`` name the same rules; its module docstring lists the classes (``must_no_hosts``,
``affinity_conflict``, ``affinity_closure_conflict``, ``must_hosts_unavailable``,
``vm_host_disjoint``, ``no_allowed_host``, ``affinity_hosts_disjoint``,
``anti_affinity_too_large``, ``rules_unsatisfiable``, ``affinity_group_too_big``,
``must_hosts_full``). Lint adds the findings that are not contradictions of the placement:

* ``unknown_vm`` / ``unknown_host``: a rule naming VMs or hosts that do not exist,
* ``vm_host_conflict``: a VM that must and must not run on the same host,
* ``selector_matches_nothing`` (warning): a rule's label selector that no VM (or host) of the
  cluster matches, so the rule applies to nothing,
* ``affinity_group_frozen`` (warning): a hard affinity group larger than one step can move
  (``limits.concurrent_per_host``), which the optimizer therefore never moves,
* ``soft_rule_never_met`` (warning): a soft (``should``) affinity or anti_affinity rule that
  could never be fully met (it would be one of the contradictions above were it ``must``).
  A soft rule never makes a policy infeasible: the optimizer keeps it as a preference and the
  plan lists what it still breaks.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from enum import StrEnum
from itertools import combinations

from balancer.model import Snapshot
from balancer.optimizer.feasibility import rule_conflicts, where
from policies.model import Policy, RuleKind, RuleMode, Selector


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


_where = where


def _soft_never_met(policy: Policy, snapshot: Snapshot | None) -> list[Finding]:
    """Warnings for soft VM-VM rules that could never hold: the contradictions the shared
    analysis finds once they are read as ``must``, and not found with them soft."""
    soft = {r.name for r in policy.rules if r.group and not r.hard}
    if not soft:
        return []
    as_hard = replace(
        policy,
        rules=tuple(replace(r, mode=RuleMode.MUST) if r.name in soft else r for r in policy.rules),
    )
    known = {frozenset(c.rules) for c in rule_conflicts(policy, snapshot)}
    out: list[Finding] = []
    for c in rule_conflicts(as_hard, snapshot):
        if frozenset(c.rules) in known or not soft & set(c.rules):
            continue
        names = ", ".join(repr(n) for n in c.rules if n in soft)
        out.append(
            Finding(
                severity=Severity.WARNING,
                code="soft_rule_never_met",
                message=f"soft rule {names} can never be fully met (kept as a preference, "
                f"the plan lists what it breaks): {c.message}",
                rules=c.rules,
            )
        )
    return out


def lint(policy: Policy, snapshot: Snapshot | None = None) -> list[Finding]:
    findings = [
        Finding(severity=Severity.ERROR, code=c.code, message=c.message, rules=c.rules)
        for c in rule_conflicts(policy, snapshot)
    ]
    findings.extend(_soft_never_met(policy, snapshot))
    limit = min(policy.limits.concurrent_per_host, policy.limits.concurrent_total)
    for r in policy.rules:
        size = len(_members(r.vms, snapshot)) if r.kind is RuleKind.AFFINITY and r.hard else 0
        if size > limit:
            findings.append(
                Finding(
                    severity=Severity.WARNING,
                    code="affinity_group_frozen",
                    message=f"rule {r.name!r}{_where(r)} keeps {size} VMs together but one "
                    f"step moves at most {limit} (limits.concurrent_per_host): the optimizer "
                    "never moves them",
                    rules=(r.name,),
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

    # label selectors that select nothing here (e.g. rack rules on hosts that carry no labels)
    for r in policy.rules:
        sides = [("VM", r.vms, [(v.name, v.labels) for v in snapshot.vms])]
        if r.kind is RuleKind.VM_HOST:
            sides.append(("host", r.hosts, [(h.name, h.labels) for h in snapshot.hosts]))
        for what, sel, items in sides:
            if sel.labels and not any(sel.matches(n, lab) for n, lab in items):
                wanted = ",".join(f"{k}={v}" for k, v in sorted(sel.labels.items()))
                findings.append(
                    Finding(
                        severity=Severity.WARNING,
                        code="selector_matches_nothing",
                        message=f"rule {r.name!r}{_where(r)}: no {what} in the cluster has the "
                        f"labels {wanted}, so the rule applies to nothing (give the {what}s "
                        "labels: the libvirt backend's hosts take them in the settings)",
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
    return findings
