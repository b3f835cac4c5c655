"""Soft VM-VM rules in the CP-SAT model: objective terms, never constraints.

``mode: should`` on an affinity or anti_affinity rule makes it a preference that the solver
weighs against balance and migration cost, like the soft vm_host rules
(:func:`balancer.optimizer.cpsat.soft_rules`): each member out of place costs
``ModelInput.soft_penalty`` (in deviation units, times ``OBJ_UNIT`` and ``COST_WEIGHT``: the
level of the migration costs in the lexicographic objective).

* soft anti_affinity: on each host, the members beyond the first cost one penalty each;
* soft affinity: the members not on the group's common host cost one penalty each; the common
  host is the one holding most members, chosen by the solver.

Both modules are registered in :data:`balancer.optimizer.cpsat.OBJECTIVES`. ``cpsat`` imports
this module, so ``Build`` is imported for type checking only and the scales when called.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from policies.model import RuleKind

if TYPE_CHECKING:
    from balancer.optimizer.context import ResolvedRule
    from balancer.optimizer.cpsat import Build


def _penalty(b: Build) -> int:
    """The objective per member out of place: as for soft vm_host rules (``cpsat.soft_rules``),
    on the level of the migration costs."""
    from balancer.optimizer.cpsat import COST_WEIGHT, OBJ_UNIT

    return round(b.inp.soft_penalty * OBJ_UNIT * COST_WEIGHT)


def _soft_groups(b: Build, kind: RuleKind) -> list[ResolvedRule]:
    return [
        r
        for r in b.ctx.rules
        if r.rule.kind is kind
        and not r.hard
        and len(r.members) >= 2
        and any(m in b.x for m in r.members)
    ]


def soft_anti_affinity(b: Build) -> None:
    """Soft anti_affinity: one penalty per member beyond the first on each host."""
    penalty = _penalty(b)
    if penalty == 0:
        return
    start = b.inp.start
    for r in _soft_groups(b, RuleKind.ANTI_AFFINITY):
        # data: members that cannot move are constants on their host
        fixed: dict[int, int] = {}
        hosts: set[int] = set()
        for m in r.members:
            if m in b.x:
                hosts.update(b.x[m])
            else:
                fixed[start[m]] = fixed.get(start[m], 0) + 1
        # variables and objective: excess >= members on the host - 1
        for h in sorted(hosts):
            terms = [b.x[m][h] for m in r.members if m in b.x and h in b.x[m]]
            here = fixed.get(h, 0)
            if len(terms) + here <= 1:
                continue
            excess = b.model.new_int_var(0, len(terms) + here - 1, f"soft_anti[{r.name},{h}]")
            b.model.add(excess >= sum(terms) + here - 1)
            b.hint(excess, max(0, sum(b.hinted(t) for t in terms) + here - 1))
            b.objective.append(penalty * excess)


def soft_affinity(b: Build) -> None:
    """Soft affinity: one penalty per member not on the group's common host.

    One boolean per possible common host (exactly one is chosen); ``kept[h]`` is at most the
    members on ``h`` and zero unless ``h`` is the common host, so maximising the members kept
    (minimising ``n - sum(kept)``) picks the host holding most of them.
    """
    penalty = _penalty(b)
    if penalty == 0:
        return
    start = b.inp.start
    for r in _soft_groups(b, RuleKind.AFFINITY):
        # data: every host a member is on or may go to
        n = len(r.members)
        hosts: set[int] = set()
        for m in r.members:
            hosts.update(b.x[m] if m in b.x else (start[m],))
        ordered = sorted(hosts)
        hinted = {
            h: sum(
                b.hinted(b.x[m][h])
                if m in b.x and h in b.x[m]
                else int(m not in b.x and start[m] == h)
                for m in r.members
            )
            for h in ordered
        }
        best = min(ordered, key=lambda h: (-hinted[h], h))
        # variables: the common host, and the members kept on it
        home = {h: b.model.new_bool_var(f"soft_aff_home[{r.name},{h}]") for h in ordered}
        kept = {h: b.model.new_int_var(0, n, f"soft_aff_kept[{r.name},{h}]") for h in ordered}
        # constraints: one common host; kept members are on it
        b.model.add_exactly_one(home.values())
        for h in ordered:
            b.model.add(kept[h] <= sum(b.on(m, h) for m in r.members))
            b.model.add(kept[h] <= n * home[h])
            b.hint(home[h], int(h == best))
            b.hint(kept[h], hinted[h] if h == best else 0)
        # objective: members out of place
        b.objective.append(penalty * (n - sum(kept.values())))


__all__ = ["soft_affinity", "soft_anti_affinity"]
