"""Rule feasibility (pure): which sets of hard rules no placement can satisfy, and why.

Soft rules (``should`` / ``should_not``, VM-VM rules included) are penalties, never part of a
conflict: only ``Rule.hard`` rules are analysed.

One analysis, two users: :func:`policies.lint.lint` reports every cause as an error before a
policy goes live, and the optimizer names the same causes (:func:`rule_conflicts`) when its
model turns out infeasible. Each cause names a *minimal* set of rules: the rules found are
shrunk by deletion (a rule is dropped when the rest still conflicts).

Allowed hosts of a VM, ``A(v)``: the hosts its hard vm_host rules allow (``must``: matched by
the host selector, ``must_not``: not matched) that have its CPU features and accept VMs (or
are its own host, unless that host must be emptied). A VM that cannot move (excluded by
policy, on an unreachable host, in an affinity group larger than one step can move) is
allowed only its own host. Affinity is closed transitively (union-find: a~b and b~c keep
a, b and c on one host); anti-affinity members need pairwise distinct hosts, which is
decided exactly (list colouring of the affinity groups, bounded by :data:`SEARCH_NODES`).
Capacity is checked only as necessary conditions, against whole hosts without headroom, so
a capacity cause is a certain contradiction, never a packing guess.

Classes (``code``: kind; "alone" = found without a snapshot too):

* ``must_no_hosts``: rule: a ``must`` rule with an empty host list (alone) or a host
  selector that matches no host of the snapshot;
* ``affinity_conflict``: rule: one affinity and one anti_affinity rule on the same pair (alone);
* ``affinity_closure_conflict``: rule: a chain of affinity rules joins two VMs that an
  anti_affinity rule keeps apart (a~b, b~c against a/c) (alone);
* ``must_hosts_unavailable``: host_state: every host a ``must`` rule allows cannot take VMs;
* ``vm_host_disjoint``: rule: the hard vm_host rules of one VM leave no host at all (two
  ``must`` rules on disjoint host sets, a ``must`` inside a ``must_not``) (alone when the
  host selectors are names);
* ``no_allowed_host``: cpu_features | host_state: its rules leave hosts, but none has the
  VM's CPU features or accepts VMs;
* ``affinity_hosts_disjoint``: rule | cpu_features | host_state: the members of an affinity
  group (after closure) have allowed hosts that do not intersect (alone for name rules);
* ``anti_affinity_too_large``: rule | cpu_features | host_state: an anti_affinity group
  cannot get distinct allowed hosts (more members than hosts, or a subset of members pinned
  to fewer hosts than it has: Hall's condition);
* ``rules_unsatisfiable``: rule | ...: found by reasoning about the rule kinds: rules that
  each hold alone but not together (three VMs pairwise apart by three rules on two hosts,
  anti-affinity between affinity groups pinned to the same host);
* ``affinity_group_too_big``: capacity: an affinity group's configured memory exceeds every
  host allowed to all its members;
* ``must_hosts_full``: capacity: the VMs a ``must`` rule pins need more memory than all the
  hosts they may run on have.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from balancer.model import Snapshot
from balancer.plan import CauseKind, InfeasibilityCause
from policies.model import Policy, Rule, RuleKind, RuleMode

#: the exact anti-affinity search gives up after this many nodes (and then assumes the rules
#: can be met, so that lint never reports a conflict it has not proved)
SEARCH_NODES = 20_000
#: rounds of the joint check (each names one more conflicting rule set)
MAX_JOINT = 16
#: groups in the exact search beyond which it is not attempted (same assumption)
SEARCH_GROUPS = 300


def where(rule: Rule) -> str:
    return f" ({rule.origin})" if rule.origin else ""


def named(rules: Sequence[Rule]) -> str:
    """``'a' (p.yaml:3) and 'b' (p.yaml:7)``: rule names with their origins, for messages."""
    parts = [f"{r.name!r}{where(r)}" for r in rules]
    return parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]


def _word(rules: Sequence[Rule]) -> str:
    return "rule" if len(rules) == 1 else "rules"


def _s(rules: Sequence[Rule], one: str, many: str) -> str:
    return one if len(rules) == 1 else many


@dataclass(frozen=True, slots=True, kw_only=True)
class _World:
    """The rules resolved against a snapshot (or, alone, against the host names they give)."""

    policy: Policy
    snapshot: Snapshot | None
    hosts: frozenset[str]
    #: rule name -> VM names it selects
    members: Mapping[str, tuple[str, ...]]
    #: rule name -> host names its host selector matches
    matched: Mapping[str, frozenset[str]]
    #: base allowed hosts per VM before rules: ALL hosts, STATE (host states, fixed VMs),
    #: FULL (also CPU features)
    base: Mapping[str, Mapping[str, frozenset[str]]]
    #: VM -> its hard vm_host rules
    vm_host_rules: Mapping[str, tuple[Rule, ...]]
    #: VM -> configured memory (MiB); host -> room for VMs (MiB, no headroom)
    vm_mem: Mapping[str, int]
    host_room: Mapping[str, int]


ALL, STATE, FULL = "all", "state", "full"
#: alone (no snapshot): stands for every host the rules do not name
OTHER_HOST = "*"


def _hard_vm_host(rule: Rule) -> bool:
    return rule.kind is RuleKind.VM_HOST and rule.mode.hard


def fixed_vms(policy: Policy, snapshot: Snapshot) -> frozenset[str]:
    """VMs the optimizer never moves: excluded by policy, on an unreachable host, or in a hard
    affinity group larger than one step can move (``limits.concurrent_*``)."""
    hosts = snapshot.host_map()
    out = {
        v.name
        for v in snapshot.vms
        if policy.excluded(v.name, v.labels) or not hosts[v.host].state.can_send
    }
    limit = min(policy.limits.concurrent_per_host, policy.limits.concurrent_total)
    for r in policy.rules:
        if r.kind is RuleKind.AFFINITY and r.hard:
            members = [v.name for v in snapshot.vms if r.vms.matches(v.name, v.labels)]
            if len(members) > limit:
                out.update(members)
    return frozenset(out)


def _world(policy: Policy, snapshot: Snapshot | None) -> _World:
    if snapshot is None:
        # the host names the rules give, and one more that no rule names (alone, a must_not
        # rule never leaves a VM without hosts)
        hosts = frozenset(n for r in policy.rules for n in r.hosts.names) | {OTHER_HOST}
        members = {r.name: tuple(sorted(r.vms.names)) for r in policy.rules}
        # alone, a label selector of a must rule may match any host (never a false conflict)
        matched = {
            r.name: hosts if (r.hosts.labels and r.mode.positive) else frozenset(r.hosts.names)
            for r in policy.rules
        }
        vms = sorted({n for m in members.values() for n in m})
        base = {k: dict.fromkeys(vms, hosts) for k in (ALL, STATE, FULL)}
        mem: dict[str, int] = {}
        room: dict[str, int] = {}
    else:
        hosts = frozenset(h.name for h in snapshot.hosts)
        members = {
            r.name: tuple(v.name for v in snapshot.vms if r.vms.matches(v.name, v.labels))
            for r in policy.rules
        }
        matched = {
            r.name: frozenset(h.name for h in snapshot.hosts if r.hosts.matches(h.name, h.labels))
            for r in policy.rules
        }
        fixed = fixed_vms(policy, snapshot)
        by_host = snapshot.host_map()
        base = {ALL: {}, STATE: {}, FULL: {}}
        accepting = frozenset(h.name for h in snapshot.hosts if h.state.accepts_vms)
        compatible: dict[frozenset[str], frozenset[str]] = {}
        for v in snapshot.vms:
            if v.name in fixed:
                # it cannot leave its host: a host-state fact (rules aside it could go anywhere)
                own = frozenset({v.host})
                base[ALL][v.name] = hosts
                base[STATE][v.name] = base[FULL][v.name] = own
                continue
            state = accepting
            if not by_host[v.host].state.must_evacuate:
                state = state | {v.host}
            if v.cpu_features not in compatible:
                compatible[v.cpu_features] = frozenset(
                    h.name for h in snapshot.hosts if v.runs_on(h)
                )
            base[ALL][v.name] = hosts
            base[STATE][v.name] = state
            base[FULL][v.name] = state & compatible[v.cpu_features]
        mem = {v.name: v.memory_mib for v in snapshot.vms}
        room = {h.name: h.memory_mib - h.overhead_memory_mib for h in snapshot.hosts}
    vm_rules: dict[str, list[Rule]] = {}
    for r in policy.rules:
        if _hard_vm_host(r):
            for n in members[r.name]:
                vm_rules.setdefault(n, []).append(r)
    return _World(
        policy=policy,
        snapshot=snapshot,
        hosts=hosts,
        members=members,
        matched=matched,
        base=base,
        vm_host_rules={k: tuple(v) for k, v in vm_rules.items()},
        vm_mem=mem,
        host_room=room,
    )


def _allowed(w: _World, vm: str, rules: Sequence[Rule], base: str = FULL) -> frozenset[str]:
    out = w.base[base].get(vm, w.hosts)
    names = {r.name for r in rules}
    for r in w.vm_host_rules.get(vm, ()):
        if r.name not in names:
            continue
        hit = w.matched[r.name]
        out = out & hit if r.mode is RuleMode.MUST else out - hit
    return out


class _UnionFind:
    def __init__(self) -> None:
        self.parent: dict[str, str] = {}

    def find(self, x: str) -> str:
        self.parent.setdefault(x, x)
        while self.parent[x] != x:
            self.parent[x] = self.parent[self.parent[x]]
            x = self.parent[x]
        return x

    def union(self, a: str, b: str) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[max(ra, rb)] = min(ra, rb)


def _groups(w: _World, rules: Sequence[Rule]) -> dict[str, list[str]]:
    """Affinity closure over ``rules``: root -> members (every VM a rule names is in one)."""
    uf = _UnionFind()
    for r in rules:
        m = w.members[r.name]
        for n in m:
            uf.find(n)
        if r.kind is RuleKind.AFFINITY:
            for n in m[1:]:
                uf.union(m[0], n)
    out: dict[str, list[str]] = {}
    for n in sorted(uf.parent):
        out.setdefault(uf.find(n), []).append(n)
    return out


def satisfiable(w: _World, rules: Sequence[Rule], base: str = FULL) -> bool:
    """Whether some placement meets every rule of ``rules`` (capacity aside)."""
    groups = _groups(w, rules)
    root = {n: g for g, ms in groups.items() for n in ms}
    domain: dict[str, frozenset[str]] = {}
    for g, ms in groups.items():
        d = w.hosts
        for n in ms:
            d = d & _allowed(w, n, rules, base)
        if not d:
            return False
        domain[g] = d
    edges: dict[str, set[str]] = {}
    for r in rules:
        if r.kind is not RuleKind.ANTI_AFFINITY:
            continue
        roots = [root[n] for n in w.members[r.name]]
        if len(set(roots)) < len(roots):
            return False
        if len(frozenset().union(*(domain[g] for g in roots))) < len(roots):
            return False  # pigeonhole: decided here even when the search would be too big
        for a in roots:
            edges.setdefault(a, set()).update(x for x in roots if x != a)
    return _colourable(domain, edges)


def _colourable(domain: Mapping[str, frozenset[str]], edges: Mapping[str, set[str]]) -> bool:
    order = sorted(edges, key=lambda g: (len(domain[g]), -len(edges[g]), g))
    if len(order) > SEARCH_GROUPS:
        return True
    assign: dict[str, str] = {}
    nodes = 0

    def go(i: int) -> bool:
        nonlocal nodes
        if i == len(order):
            return True
        nodes += 1
        if nodes > SEARCH_NODES:
            return True  # not proved: assume it can be met
        g = order[i]
        used = {assign[n] for n in edges[g] if n in assign}
        for h in sorted(domain[g] - used):
            assign[g] = h
            if go(i + 1):
                return True
            del assign[g]
        return False

    return go(0)


def minimize(rules: Sequence[Rule], conflicts: Callable[[Sequence[Rule]], bool]) -> list[Rule]:
    """Deletion: drop each rule in turn and keep it out if the rest still conflicts."""
    kept = list(rules)
    for r in list(rules):
        trial = [x for x in kept if x is not r]
        if conflicts(trial):
            kept = trial
    return kept


def _kind(w: _World, rules: Sequence[Rule]) -> CauseKind:
    if not satisfiable(w, rules, ALL):
        return CauseKind.RULE
    if not satisfiable(w, rules, STATE):
        return CauseKind.HOST_STATE
    return CauseKind.CPU_FEATURES


def _why_hosts(kind: CauseKind) -> str:
    return {
        CauseKind.RULE: "",
        CauseKind.HOST_STATE: " (the hosts left cannot take VMs)",
        CauseKind.CPU_FEATURES: " (the hosts left lack their CPU features)",
    }.get(kind, "")


class _Out:
    def __init__(self) -> None:
        self.causes: list[InfeasibilityCause] = []
        self.seen: set[frozenset[str]] = set()

    def add(
        self, code: str, kind: CauseKind, rules: Sequence[Rule], vms: Sequence[str], msg: str
    ) -> None:
        key = frozenset(r.name for r in rules)
        if not key or key in self.seen:
            return
        self.seen.add(key)
        self.causes.append(
            InfeasibilityCause(
                code=code,
                kind=kind,
                rules=tuple(r.name for r in rules),
                vms=tuple(sorted(set(vms))),
                message=msg,
            )
        )


def rule_conflicts(
    policy: Policy, snapshot: Snapshot | None = None
) -> tuple[InfeasibilityCause, ...]:
    """Every class of the module docstring found in ``policy`` (against ``snapshot`` if given),
    each naming a minimal set of rules. Empty: the hard rules can be met (capacity aside)."""
    w = _world(policy, snapshot)
    out = _Out()
    hard = [r for r in policy.rules if r.hard]
    alone = snapshot is None
    _must_no_hosts(w, out)
    _closure(w, hard, out)
    if not alone:
        _must_unavailable(w, out)
    _per_vm(w, out)
    affinity = [r for r in hard if r.kind is RuleKind.AFFINITY]
    _affinity_hosts(w, affinity, out)
    if alone:
        return tuple(out.causes)
    _anti_too_large(w, hard, out)
    _jointly(w, hard, out)
    _capacity(w, hard, out)
    return tuple(out.causes)


def _must_no_hosts(w: _World, out: _Out) -> None:
    for r in w.policy.rules:
        if r.kind is not RuleKind.VM_HOST or r.mode is not RuleMode.MUST:
            continue
        if not r.hosts.names and not r.hosts.labels:
            what = "an empty host list"
        elif w.snapshot is not None and not w.matched[r.name]:
            what = f"a host selector ({r.hosts.describe()}) that matches no host"
        else:
            continue
        out.add(
            "must_no_hosts",
            CauseKind.RULE,
            [r],
            w.members[r.name],
            f"rule {named([r])}: must place its VMs on {what}",
        )


def _closure(w: _World, hard: Sequence[Rule], out: _Out) -> None:
    """Affinity (transitively) against anti_affinity: the shortest chain of affinity rules."""
    affinity = [r for r in hard if r.kind is RuleKind.AFFINITY]
    groups = _groups(w, affinity)
    root = {n: g for g, ms in groups.items() for n in ms}
    for anti in (r for r in hard if r.kind is RuleKind.ANTI_AFFINITY):
        by_root: dict[str, list[str]] = {}
        for n in w.members[anti.name]:
            if n in root:
                by_root.setdefault(root[n], []).append(n)
        for ms in by_root.values():
            if len(ms) < 2:
                continue
            a, c = sorted(ms)[:2]
            chain = _chain(w, affinity, a, c)
            if len(chain) == 1:
                out.add(
                    "affinity_conflict",
                    CauseKind.RULE,
                    [chain[0], anti],
                    [a, c],
                    f"rules {chain[0].name!r}{where(chain[0])} and {anti.name!r}{where(anti)} "
                    f"want {a} and {c} both together and apart",
                )
            else:
                out.add(
                    "affinity_closure_conflict",
                    CauseKind.RULE,
                    [*chain, anti],
                    [a, c],
                    f"affinity rules {named(chain)} keep {a} and {c} together (transitively) "
                    f"but rule {named([anti])} keeps them apart",
                )


def _chain(w: _World, affinity: Sequence[Rule], a: str, c: str) -> list[Rule]:
    """The shortest sequence of affinity rules linking VM ``a`` to VM ``c`` (BFS)."""
    start = [r for r in affinity if a in w.members[r.name]]
    prev: dict[str, Rule | None] = {r.name: None for r in start}
    queue = list(start)
    while queue:
        r = queue.pop(0)
        if c in w.members[r.name]:
            path = [r]
            p = prev[r.name]
            while p is not None:
                path.append(p)
                p = prev[p.name]
            return path[::-1]
        ms = set(w.members[r.name])
        for nxt in affinity:
            if nxt.name not in prev and ms & set(w.members[nxt.name]):
                prev[nxt.name] = r
                queue.append(nxt)
    return []


def _must_unavailable(w: _World, out: _Out) -> None:
    assert w.snapshot is not None
    hosts = w.snapshot.host_map()
    for r in w.policy.rules:
        if r.kind is not RuleKind.VM_HOST or r.mode is not RuleMode.MUST:
            continue
        targets = w.matched[r.name]
        if targets and not any(hosts[h].state.accepts_vms for h in targets):
            states = ", ".join(f"{h} {hosts[h].state.value}" for h in sorted(targets))
            out.add(
                "must_hosts_unavailable",
                CauseKind.HOST_STATE,
                [r],
                w.members[r.name],
                f"rule {named([r])}: every host it allows is unavailable ({states})",
            )


def _leaves_none(w: _World, vm: str, base: str) -> Callable[[Sequence[Rule]], bool]:
    def check(rules: Sequence[Rule]) -> bool:
        return not _allowed(w, vm, rules, base)

    return check


def _per_vm(w: _World, out: _Out) -> None:
    """A VM whose hard vm_host rules leave no host (alone: only for name selectors), or whose
    allowed hosts are empty after CPU features and host states too."""
    done: set[tuple[str, ...]] = set()
    for vm in sorted(w.vm_host_rules):
        rules = w.vm_host_rules[vm]
        key = tuple(r.name for r in rules)
        if not _allowed(w, vm, rules, ALL):
            found = minimize(rules, _leaves_none(w, vm, ALL))
            names = {r.name for r in found}
            vms = [n for n, rs in w.vm_host_rules.items() if {r.name for r in rs} >= names]
            out.add(
                "vm_host_disjoint",
                CauseKind.RULE,
                found,
                vms,
                f"VM {vm}: {_word(found)} {named(found)} together allow no host"
                if len(found) > 1
                else f"VM {vm}: rule {named(found)} allows no host",
            )
        elif w.snapshot is not None and not _allowed(w, vm, rules, FULL) and key not in done:
            if not _allowed(w, vm, (), FULL):
                continue  # no host at all, rules aside: a snapshot fact (blocked), not a rule
            done.add(key)
            found = minimize(rules, _leaves_none(w, vm, FULL))
            if not _allowed(w, vm, found, STATE):
                kind, what = CauseKind.HOST_STATE, "cannot take VMs"
            else:
                features = ", ".join(sorted(w.snapshot.vm(vm).cpu_features))
                kind, what = CauseKind.CPU_FEATURES, f"lack its CPU features ({features})"
            out.add(
                "no_allowed_host",
                kind,
                found,
                [vm],
                f"VM {vm}: {_word(found)} {named(found)} {_s(found, 'allows', 'allow')} only hosts "
                f"that {what}",
            )


def _affinity_hosts(w: _World, affinity: Sequence[Rule], out: _Out) -> None:
    base = ALL if w.snapshot is None else FULL
    for ms in _groups(w, affinity).values():
        if len(ms) < 2 or any(not _allowed(w, n, w.vm_host_rules.get(n, ()), base) for n in ms):
            continue
        group_rules = [r for r in affinity if set(w.members[r.name]) & set(ms)]
        pins = sorted(
            {r.name: r for n in ms for r in w.vm_host_rules.get(n, ())}.values(),
            key=lambda r: r.name,
        )
        cand = [*group_rules, *pins]
        if satisfiable(w, cand, base):
            continue
        found = minimize(cand, lambda s: not satisfiable(w, s, base))
        kind = CauseKind.RULE if w.snapshot is None else _kind(w, found)
        out.add(
            "affinity_hosts_disjoint",
            kind,
            found,
            ms,
            f"{_word(found)} {named(found)} {_s(found, 'keeps', 'keep')} {', '.join(ms)} "
            f"together but no host is allowed for all of them{_why_hosts(kind)}",
        )


def _anti_too_large(w: _World, hard: Sequence[Rule], out: _Out) -> None:
    for anti in (r for r in hard if r.kind is RuleKind.ANTI_AFFINITY):
        ms = w.members[anti.name]
        if len(ms) < 2:
            continue
        pins = sorted(
            {r.name: r for n in ms for r in w.vm_host_rules.get(n, ())}.values(),
            key=lambda r: r.name,
        )
        cand = [anti, *pins]
        if satisfiable(w, cand):
            continue
        found = minimize(cand, lambda s: not satisfiable(w, s))
        hosts: set[str] = set()
        for n in ms:
            hosts |= _allowed(w, n, found)
        kind = _kind(w, found)
        extra = f" (with {named([r for r in found if r is not anti])})" if len(found) > 1 else ""
        if len(hosts) < len(ms):
            what = f"they may run on only {len(hosts)} host(s)"
        else:
            what = "no distinct hosts exist for them: " + "; ".join(
                f"{n} on {', '.join(sorted(_allowed(w, n, found))) or 'none'}" for n in ms
            )
        out.add(
            "anti_affinity_too_large",
            kind,
            found,
            ms,
            f"rule {named([anti])} keeps {len(ms)} VMs apart but {what}{extra}{_why_hosts(kind)}",
        )


def _jointly(w: _World, hard: Sequence[Rule], out: _Out) -> None:
    """Rules that each hold alone but not together: while the rules no cause names yet are
    unsatisfiable, name a minimal subset of them (so every conflict is named by some cause,
    which is what lets the optimizer's solver core always meet one of lint's causes)."""
    for _ in range(MAX_JOINT):
        taken = {n for c in out.causes for n in c.rules}
        rest = [r for r in hard if r.name not in taken]
        if satisfiable(w, rest):
            return
        found = minimize(rest, lambda s: not satisfiable(w, s))
        vms = [n for r in found for n in w.members[r.name]]
        out.add(
            "rules_unsatisfiable",
            _kind(w, found),
            found,
            vms,
            f"{_word(found)} {named(found)} cannot all be met: no placement keeps every "
            "affinity group together and every anti_affinity group apart on allowed hosts",
        )


def _capacity(w: _World, hard: Sequence[Rule], out: _Out) -> None:
    """Necessary conditions against whole hosts (no headroom): certain contradictions."""
    affinity = [r for r in hard if r.kind is RuleKind.AFFINITY]

    def group_too_big(rules: Sequence[Rule]) -> tuple[list[str], int, int] | None:
        aff = [r for r in rules if r.kind is RuleKind.AFFINITY]
        for ms in _groups(w, aff).values():
            if len(ms) < 2:
                continue
            d = w.hosts
            for n in ms:
                d = d & _allowed(w, n, rules)
            need = sum(w.vm_mem[n] for n in ms)
            have = max((w.host_room[h] for h in d), default=0)
            if d and need > have:
                return ms, need, have
        return None

    for ms in _groups(w, affinity).values():
        group_rules = [r for r in affinity if set(w.members[r.name]) & set(ms)]
        pins = sorted(
            {r.name: r for n in ms for r in w.vm_host_rules.get(n, ())}.values(),
            key=lambda r: r.name,
        )
        cand = [*group_rules, *pins]
        if len(ms) < 2 or group_too_big(cand) is None:
            continue
        found = minimize(cand, lambda s: group_too_big(s) is not None)
        hit = group_too_big(found)
        assert hit is not None
        members, need, have = hit
        out.add(
            "affinity_group_too_big",
            CauseKind.CAPACITY,
            found,
            members,
            f"{_word(found)} {named(found)} {_s(found, 'keeps', 'keep')} {', '.join(members)} "
            f"together ({need} MiB) "
            f"but no allowed host has that much memory (largest: {have} MiB)",
        )

    for r in hard:
        if r.kind is not RuleKind.VM_HOST or r.mode is not RuleMode.MUST:
            continue
        pinned = w.members[r.name]
        hosts: set[str] = set()
        for n in pinned:
            hosts |= _allowed(w, n, [r])
        need = sum(w.vm_mem[n] for n in pinned)
        have = sum(w.host_room[h] for h in hosts)
        if hosts and need > have:
            out.add(
                "must_hosts_full",
                CauseKind.CAPACITY,
                [r],
                pinned,
                f"rule {named([r])}: its VMs need {need} MiB but the hosts they may run on "
                f"have {have} MiB",
            )
