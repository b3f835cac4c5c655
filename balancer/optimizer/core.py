"""The optimizer: snapshot + policy in, target placement with reasons out (pure).

Two phases, both on the same objective (see docs/optimizer.md):

A. *Mandatory*: VMs on hosts that must be emptied (maintenance, entering_maintenance), on
   quarantined hosts, VMs in violated hard rules (repair) and, when the threshold balances,
   VMs on hosts their soft rules advise against. Skipped when there are none.
B. *Balance*: only when the threshold balances and the cluster after phase A is outside the
   threshold's target imbalance. Every movable VM may move (bounded for large clusters: VMs
   on hot hosts, the heuristic's moves, a few per host, and a few candidate hosts per VM).

Both phases start from the current placement (move costs and the budget count from it); the
greedy heuristic's result is the hint.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace

from balancer.errors import InfeasibleError
from balancer.model import HostState, Snapshot
from balancer.optimizer import cpsat, heuristic
from balancer.optimizer.context import (
    Context,
    build_context,
    is_soft,
    repairs_soft_rules,
    violated_rules,
)
from balancer.optimizer.feasibility import rule_conflicts
from balancer.optimizer.filters import Loads, blocked_reason, cpu_features_missing, fits, verdict
from balancer.optimizer.metrics import ImbalanceTracker, metrics
from balancer.optimizer.prune import can_undo, prune
from balancer.optimizer.thresholds import (
    SOFT_RULE_PENALTY,
    ThresholdRule,
    balance_move_cost,
    threshold_rule,
    worth_a_cycle,
)
from balancer.plan import (
    Blocked,
    BlockedReason,
    CauseKind,
    InfeasibilityCause,
    Metrics,
    MoveReason,
    PlanStatus,
)
from policies.model import Policy, RuleKind

#: above this many (VM, candidate host) pairs the balance phase prunes its move set
FULL_MODEL_PAIRS = 40_000
#: pruned model: candidate hosts per VM besides its own and the heuristic's choice
PRUNED_TARGETS = 6
#: pruned model: extra VMs per hot host beyond twice the heuristic's moves off it
PRUNED_EXTRA_HOT = 8
#: pruned model: small VMs per other host (they make swaps possible)
PRUNED_PER_HOST = 2
#: share of the time limit given to phase A when phase B may follow
PHASE_A_SHARE = 0.3


@dataclass(frozen=True, slots=True, kw_only=True)
class Solution:
    ctx: Context
    status: PlanStatus
    start: tuple[int, ...]
    placement: tuple[int, ...]
    #: moved VM -> (reason, rule name)
    reasons: Mapping[int, tuple[MoveReason, str | None]]
    #: moved VM -> expected decrease of the imbalance
    gains: Mapping[int, float]
    blocked: tuple[Blocked, ...]
    before: Metrics
    after: Metrics
    conflicts: tuple[str, ...] = ()
    causes: tuple[InfeasibilityCause, ...] = ()
    solve_seconds: float = 0.0
    optimal: bool = False

    @property
    def moved(self) -> tuple[int, ...]:
        return tuple(v for v, h in enumerate(self.placement) if h != self.start[v])


def explain(ctx: Context, core: Sequence[str]) -> tuple[InfeasibilityCause, ...]:
    """Why an infeasible model is infeasible, in the words lint uses.

    The causes :func:`~balancer.optimizer.feasibility.rule_conflicts` finds (the analysis lint
    reports) that share a rule with the solver's core; when none does, the solver's core is
    the cause: capacity with headroom, or the move budget (and without a core, every cause
    the analysis finds).
    """
    found = rule_conflicts(ctx.policy, ctx.snapshot)
    hit = tuple(c for c in found if set(c.rules) & set(core))
    if hit or (found and not core):
        return hit or found
    rules = tuple(sorted(core))
    if cpsat.BUDGET in core:
        return (
            InfeasibilityCause(
                code="move_budget",
                kind=CauseKind.MOVE_BUDGET,
                rules=rules,
                message=f"the repair of {', '.join(n for n in rules if n != cpsat.BUDGET)} "
                f"needs more moves than {cpsat.BUDGET} ({ctx.policy.limits.moves_per_cycle})",
            ),
        )
    if not core:
        return (
            InfeasibilityCause(
                code="unexplained",
                kind=CauseKind.CAPACITY,
                rules=(),
                message="no placement meets the hard rules with the room the hosts have "
                "(the solver named no rule within its time limit)",
            ),
        )
    return (
        InfeasibilityCause(
            code="no_room",
            kind=CauseKind.CAPACITY,
            rules=rules,
            message=f"the hosts {', '.join(rules) or 'the rules'} allow have no room for "
            "the VMs (with headroom)",
        ),
    )


def _candidate_sets(ctx: Context) -> list[frozenset[int]]:
    """Static candidates per VM, computed once per (CPU features, hard vm_host rules)."""
    cache: dict[tuple[frozenset[str], tuple[int, ...]], frozenset[int]] = {}
    accepting = [h for h in range(ctx.n_hosts) if ctx.accepts(h)]
    out: list[frozenset[int]] = []
    for v, vm in enumerate(ctx.snapshot.vms):
        hard = tuple(
            ri
            for ri in ctx.vm_rules[v]
            if ctx.rules[ri].rule.kind is RuleKind.VM_HOST and ctx.rules[ri].hard
        )
        key = (vm.cpu_features, hard)
        if key not in cache:
            ok = []
            for h in accepting:
                if not vm.cpu_features <= ctx.snapshot.hosts[h].cpu_features:
                    continue
                if all(
                    (h in ctx.rules[ri].hosts) == ctx.rules[ri].rule.mode.positive for ri in hard
                ):
                    ok.append(h)
            cache[key] = frozenset(ok)
        out.append(cache[key] - {ctx.current[v]})
    return out


def _explain_candidates(
    ctx: Context, candidates: Mapping[int, tuple[int, ...]]
) -> dict[int, tuple[int, ...]]:
    """For explaining: every accepting, CPU-compatible host, so that hard vm_host rules are
    constraints with enforcement literals instead of filters, and can be named."""
    out: dict[int, tuple[int, ...]] = {}
    for v in candidates:
        vm = ctx.snapshot.vms[v]
        ok = [
            h
            for h in range(ctx.n_hosts)
            if h != ctx.current[v] and ctx.accepts(h) and vm.runs_on(ctx.snapshot.hosts[h])
        ]
        out[v] = (ctx.current[v], *ok)
    return out


def _too_big_affinity(ctx: Context) -> frozenset[int]:
    """Members of affinity groups larger than one step can move together: they stay put."""
    limit = min(ctx.policy.limits.concurrent_per_host, ctx.policy.limits.concurrent_total)
    out: set[int] = set()
    for r in ctx.rules:
        if r.rule.kind is RuleKind.AFFINITY and r.hard and len(r.members) > limit:
            out.update(r.members)
    return frozenset(out)


def optimize(
    snapshot: Snapshot,
    policy: Policy,
    *,
    held: frozenset[str] = frozenset(),
    time_limit_s: float = 10.0,
    seed: int = 0,
) -> Solution:
    """Decide where every VM should end. See the module docstring."""
    ctx = build_context(snapshot, policy, held)
    rule = threshold_rule(policy.threshold)
    start = ctx.current
    before = metrics(ctx, start)
    budget = max(0, policy.limits.moves_per_cycle)
    cands = _candidate_sets(ctx)
    frozen = _too_big_affinity(ctx)

    def movable(v: int) -> bool:
        return ctx.can_move(v) and v not in frozen

    # -- what must move ---------------------------------------------------------------------------
    evac = [v for v in range(ctx.n_vms) if ctx.host_state[start[v]].must_evacuate]
    quarantine = [v for v in range(ctx.n_vms) if ctx.host_state[start[v]] is HostState.QUARANTINED]
    violated = violated_rules(ctx, start)
    repair: set[int] = set()
    must_repair: dict[int, str] = {}
    soft_bad: set[int] = set()
    soft_group: set[int] = set()  # members of violated soft VM-VM rules: any may move
    repair_soft = repairs_soft_rules(
        policy,
        balances=rule.balances,
        outside_target=before.imbalance > rule.target_imbalance,
    )
    for ri, bad in violated.items():
        r = ctx.rules[ri]
        if is_soft(r):
            if repair_soft:
                soft_bad.update(bad)
                if r.rule.group:
                    soft_group.update(r.members)
            continue
        if r.rule.kind is RuleKind.VM_HOST:
            repair.update(bad)
        else:
            repair.update(r.members)
        for m in bad:
            must_repair.setdefault(m, r.name)
    should_move = set(evac) | set(quarantine) | set(must_repair)
    phase_a = sorted(v for v in should_move | repair | soft_bad | soft_group if movable(v))

    costs_all = (
        {
            v: balance_move_cost(rule, snapshot.vms[v], policy.migration.bandwidth_mib_s)
            for v in range(ctx.n_vms)
        }
        if rule.balances
        else {}
    )
    # what must move whatever else does: evacuations and the VMs a hard vm_host rule keeps off
    # their host. The members of a violated VM-VM rule are candidates, not all needed: the
    # rule's constraint asks for enough of them to move, and each costs what a balancing move
    # costs, so that the solve moves the fewest (a pair of anti-affine VMs needs one move, not
    # two) and the pruning undoes any member's move the repair does not need.
    vm_host_bad = {
        m
        for ri, bad in violated.items()
        if not is_soft(ctx.rules[ri]) and ctx.rules[ri].rule.kind is RuleKind.VM_HOST
        for m in bad
    }
    mandatory = set(evac) | set(quarantine) | vm_host_bad
    nominal = rule if rule.balances else threshold_rule(3)
    bandwidth = policy.migration.bandwidth_mib_s
    phase_costs = {
        v: costs_all[v]
        if v in costs_all
        else balance_move_cost(nominal, snapshot.vms[v], bandwidth)
        for v in phase_a
        if v not in mandatory
    }
    solve_seconds = 0.0
    # what the solves used of the time limit, in its deterministic units, each at most its own
    # limit (presolve may overrun it): the balance phase gets the rest (wall time would make
    # the plan depend on the machine's load)
    used = 0.0
    optimal = True
    placement: tuple[int, ...] = start
    a_limit = time_limit_s * (PHASE_A_SHARE if rule.balances else 1.0)

    if phase_a:
        hint = heuristic.place_mandatory(
            ctx,
            start,
            [v for v in phase_a if v in mandatory or v in must_repair],
            {v: cands[v] for v in phase_a},
        )
        inp = cpsat.ModelInput(
            ctx=ctx,
            start=start,
            candidates={v: (start[v], *sorted(cands[v])) for v in phase_a},
            costs=phase_costs,
            soft_penalty=SOFT_RULE_PENALTY if rule.balances else 0.0,
            budget=budget,
            hint=tuple(hint),
        )
        res = cpsat.solve(inp, seed=seed, time_limit_s=a_limit)
        solve_seconds += res.wall_seconds
        used += min(a_limit, res.limit_seconds)
        left = res.placement is not None and any(
            res.placement[v] == start[v] for v in evac + quarantine if movable(v)
        )
        # rules that contradict each other or the hosts whatever moves: no room helps
        structural = rule_conflicts(policy, snapshot) if res.infeasible else ()
        if (res.infeasible and not structural) or left:
            # a repair or an evacuation may need other VMs to make room: retry with every
            # movable VM. (Not for a structural conflict: room cannot help, and OR-Tools
            # 9.15's interleaved search aborted the process on such a wide infeasible model,
            # "Check failed: heuristics.fixed_search != nullptr".)
            wide = [v for v in range(ctx.n_vms) if movable(v)]
            if sum(len(cands[v]) + 1 for v in wide) <= FULL_MODEL_PAIRS:
                inp = replace(
                    inp,
                    candidates={v: (start[v], *sorted(cands[v])) for v in wide},
                    costs={
                        v: balance_move_cost(nominal, snapshot.vms[v], bandwidth)
                        for v in wide
                        if v not in mandatory
                    },
                )
                wide_res = cpsat.solve(inp, seed=seed, time_limit_s=a_limit)
                solve_seconds += wide_res.wall_seconds
                used += min(a_limit, wide_res.limit_seconds)
                if wide_res.placement is not None or res.infeasible:
                    res = wide_res
        if res.infeasible:
            core = cpsat.explain_infeasible(
                replace(inp, candidates=_explain_candidates(ctx, inp.candidates), explain=True),
                seed=seed,
                time_limit_s=a_limit,
            )
            causes = explain(ctx, core)
            return Solution(
                ctx=ctx,
                status=PlanStatus.INFEASIBLE,
                start=start,
                placement=start,
                reasons={},
                gains={},
                blocked=(),
                before=before,
                after=before,
                conflicts=tuple(sorted({n for c in causes for n in c.rules})),
                causes=causes,
                solve_seconds=solve_seconds,
                optimal=False,
            )
        optimal = res.optimal
        placement = res.placement if res.placement is not None else tuple(hint)

    cooldown: set[int] = set()
    balanced = False
    if rule.balances and metrics(ctx, placement).imbalance > rule.target_imbalance:
        mandatory_only = placement
        placement, seconds, optimal_b, cooldown = _balance_phase(
            ctx,
            rule,
            start,
            placement,
            phase_a,
            mandatory,
            cands,
            costs_all,
            budget,
            frozen,
            seed,
            max(0.05, time_limit_s - used),
        )
        solve_seconds += seconds
        optimal = optimal and optimal_b
        placement, cooldown = _keep_if_worth_it(ctx, placement, mandatory_only, cooldown)
        balanced = placement != mandatory_only

    # every move that is neither mandatory nor a soft-rule repair must contribute: undo the
    # ones that do not (within the target when balancing; when not balancing, a move that is
    # not needed for a repair or its room is not needed at all). A VM-VM rule's member is
    # tried too: the pruning never undoes a move its rule's repair needs.
    extra = [
        v
        for v in range(ctx.n_vms)
        if placement[v] != start[v] and v not in mandatory and v not in soft_bad
    ]
    if extra:
        placement = prune(
            ctx,
            start,
            placement,
            extra,
            rule.target_imbalance if balanced else math.inf,
            costs_all,
        )

    return _finish(
        ctx,
        start,
        placement,
        before,
        should_move,
        must_repair,
        soft_bad,
        frozen,
        cooldown,
        budget,
        solve_seconds,
        optimal,
        balanced,
    )


def _keep_if_worth_it(
    ctx: Context,
    balanced: tuple[int, ...],
    before: tuple[int, ...],
    cooldown: set[int],
) -> tuple[tuple[int, ...], set[int]]:
    """The balance phase's placement if it improves enough (``worth_a_cycle``), else the
    placement before it (mandatory moves only, nothing held for cooldown)."""
    a = metrics(ctx, before)
    b = metrics(ctx, balanced)
    if worth_a_cycle(
        a.imbalance,
        b.imbalance,
        max(a.max_cpu_load, a.max_memory_load),
        max(b.max_cpu_load, b.max_memory_load),
    ):
        return balanced, cooldown
    return before, set()


def _balance_phase(
    ctx: Context,
    rule: ThresholdRule,
    start: tuple[int, ...],
    after_a: tuple[int, ...],
    phase_a: list[int],
    mandatory: set[int],
    cands: list[frozenset[int]],
    costs_all: Mapping[int, float],
    budget: int,
    frozen: frozenset[int],
    seed: int,
    time_limit_s: float,
) -> tuple[tuple[int, ...], float, bool, set[int]]:
    free = [
        v
        for v in range(ctx.n_vms)
        if ctx.can_move(v) and v not in frozen and v not in ctx.held and v not in mandatory
    ]
    used = sum(1 for v in range(ctx.n_vms) if after_a[v] != start[v])
    cand_map = {v: cands[v] for v in set(free) | set(phase_a)}
    greedy = heuristic.balance(
        ctx, after_a, free, cand_map, costs_all, budget - used, rule.target_imbalance
    )
    cooldown: set[int] = set()
    if ctx.held:
        held_ok = [
            v for v in ctx.held if ctx.can_move(v) and v not in frozen and v not in mandatory
        ]
        if held_ok:
            with_held = heuristic.balance(
                ctx,
                after_a,
                free + held_ok,
                cand_map | {v: cands[v] for v in held_ok},
                costs_all,
                budget - used,
                rule.target_imbalance,
            )
            cooldown = {v for v in held_ok if with_held[v] != after_a[v]}
    movable_set = set(phase_a) | set(free)
    pairs = sum(len(cands[v]) + 1 for v in movable_set)
    if pairs <= FULL_MODEL_PAIRS:
        candidates = {v: (start[v], *sorted(cands[v])) for v in sorted(movable_set)}
    else:
        candidates = _pruned(ctx, start, greedy, phase_a, free, cands)
    hint = tuple(
        h if v not in candidates or h in candidates[v] else start[v] for v, h in enumerate(greedy)
    )
    inp = cpsat.ModelInput(
        ctx=ctx,
        start=start,
        candidates=candidates,
        costs={v: costs_all.get(v, 0.0) for v in candidates if v not in mandatory},
        soft_penalty=SOFT_RULE_PENALTY,
        budget=budget,
        hint=hint,
        target=rule.target_imbalance,
    )
    res = cpsat.solve(inp, seed=seed, time_limit_s=time_limit_s)
    if res.placement is None:
        # no solution in time (or the pruned model lost the phase A answer): keep the heuristic
        return tuple(greedy), res.wall_seconds, False, cooldown
    return res.placement, res.wall_seconds, res.optimal, cooldown


def _pruned(
    ctx: Context,
    start: tuple[int, ...],
    greedy: list[int],
    phase_a: list[int],
    free: list[int],
    cands: list[frozenset[int]],
) -> dict[int, tuple[int, ...]]:
    """A bounded move set around the heuristic's answer (see the module docstring)."""
    scorer = heuristic.Scorer.of(ctx)
    start_loads = Loads.of(ctx, start)
    end_loads = Loads.of(ctx, greedy)
    moved_off: dict[int, int] = {}
    for v in range(ctx.n_vms):
        if greedy[v] != start[v]:
            moved_off[start[v]] = moved_off.get(start[v], 0) + 1
    by_host: dict[int, list[int]] = {}
    for v in free:
        by_host.setdefault(start[v], []).append(v)
    chosen: set[int] = set(phase_a) | {v for v in free if greedy[v] != start[v]}
    for h, vms in by_host.items():
        if scorer.excess(h, start_loads) > 0:
            k = 2 * moved_off.get(h, 0) + PRUNED_EXTRA_HOT
            chosen.update(sorted(vms, key=lambda v: (-ctx.vm_cpu[v], v))[:k])
        else:
            chosen.update(sorted(vms, key=lambda v: (ctx.vm_cpu[v], v))[:PRUNED_PER_HOST])
    coldness = sorted(range(ctx.n_hosts), key=lambda h: (scorer.excess(h, end_loads), h))
    rank = {h: i for i, h in enumerate(coldness)}
    out: dict[int, tuple[int, ...]] = {}
    for v in sorted(chosen):
        options = sorted(cands[v], key=lambda h: rank[h])
        picked = options[: PRUNED_TARGETS // 2]
        rest = options[PRUNED_TARGETS // 2 :]
        if rest:
            stride = max(1, len(rest) // (PRUNED_TARGETS - len(picked)))
            picked += rest[v % stride :: stride][: PRUNED_TARGETS - len(picked)]
        hosts = {start[v], greedy[v], *picked}
        out[v] = (start[v], *sorted(hosts - {start[v]}))
    return out


def _finish(
    ctx: Context,
    start: tuple[int, ...],
    placement: tuple[int, ...],
    before: Metrics,
    should_move: set[int],
    must_repair: Mapping[int, str],
    soft_bad: set[int],
    frozen: frozenset[int],
    cooldown: Iterable[int],
    budget: int,
    solve_seconds: float,
    optimal: bool,
    balanced: bool,
) -> Solution:
    moved = [v for v in range(ctx.n_vms) if placement[v] != start[v]]
    still_violated = violated_rules(ctx, placement)
    reasons: dict[int, tuple[MoveReason, str | None]] = {}
    start_violated = violated_rules(ctx, start)
    for v in moved:
        state = ctx.host_state[start[v]]
        if state.must_evacuate:
            reasons[v] = (MoveReason.MAINTENANCE, None)
        elif state is HostState.QUARANTINED:
            reasons[v] = (MoveReason.QUARANTINE, None)
        else:
            rule_name = next(
                (
                    ctx.rules[ri].name
                    for ri, bad in start_violated.items()
                    if ri not in still_violated
                    and (
                        v in bad
                        or (
                            v in ctx.rules[ri].members
                            and ctx.rules[ri].rule.kind is not RuleKind.VM_HOST
                        )
                    )
                ),
                None,
            )
            reasons[v] = (MoveReason.RULE, rule_name) if rule_name else (MoveReason.BALANCE, None)
    _make_room(ctx, start, placement, reasons, balanced)
    gains = _gains(ctx, start, placement, reasons)

    loads = Loads.of(ctx, placement)
    blocked: list[Blocked] = []
    budget_used = len(moved) >= budget
    for v in sorted(should_move | set(cooldown)):
        if placement[v] != start[v]:
            continue
        name = ctx.vm_names[v]
        if v in cooldown and v not in should_move:
            blocked.append(
                Blocked(
                    vm=name,
                    reason=BlockedReason.COOLDOWN,
                    detail="moved recently; held from balancing",
                )
            )
            continue
        leaving = ctx.host_state[start[v]].must_evacuate or (
            ctx.host_state[start[v]] is HostState.QUARANTINED
        )
        if (
            not leaving
            and v in must_repair
            and must_repair[v] not in {ctx.rules[ri].name for ri in still_violated}
        ):
            continue  # the rule was repaired by moving other members
        if v in frozen and ctx.can_move(v):
            rule_name = next(
                ctx.rules[ri].name
                for ri in ctx.vm_rules[v]
                if ctx.rules[ri].rule.kind is RuleKind.AFFINITY and ctx.rules[ri].hard
            )
            blocked.append(
                Blocked(
                    vm=name,
                    reason=BlockedReason.RULE,
                    rule=rule_name,
                    detail="affinity group larger than one step can move",
                )
            )
            continue
        reason, rule_name, detail = blocked_reason(ctx, placement, loads, v)
        if (
            reason is BlockedReason.CAPACITY
            and budget_used
            and any(
                verdict(ctx, placement, loads, v, h) is None and fits(ctx, loads, v, h)
                for h in range(ctx.n_hosts)
            )
        ):
            reason, detail = BlockedReason.MOVE_BUDGET, "limits.moves_per_cycle reached"
        if reason is BlockedReason.CAPACITY and v in must_repair:
            reason, rule_name = BlockedReason.RULE, must_repair[v]
            detail = "cannot be repaired: no allowed host has room"
        blocked.append(Blocked(vm=name, reason=reason, rule=rule_name, detail=detail))
    blocked = _cpu_features_missing(ctx, placement, blocked)
    after = metrics(ctx, placement)
    status = PlanStatus.MOVES if moved else PlanStatus.BALANCED
    return Solution(
        ctx=ctx,
        status=status,
        start=start,
        placement=placement,
        reasons=reasons,
        gains=gains,
        blocked=tuple(blocked),
        before=before,
        after=after,
        solve_seconds=solve_seconds,
        optimal=optimal,
    )


def _make_room(
    ctx: Context,
    start: tuple[int, ...],
    placement: tuple[int, ...],
    reasons: dict[int, tuple[MoveReason, str | None]],
    balanced: bool,
) -> None:
    """Relabel the moves made only to make room for a mandatory one (in place).

    A move off host ``h`` that is not itself mandatory serves the mandatory moves onto ``h``
    when no balancing was done this cycle (it was made for them), or when the VM could not
    stay on ``h`` with them there (no room with the headroom, or a rule). It carries
    ``make_room`` and the rule of the first repair it serves (none for an evacuation).
    """
    into: dict[int, list[int]] = {}
    for u, (reason, _) in reasons.items():
        if reason.mandatory:
            into.setdefault(placement[u], []).append(u)
    loads = Loads.of(ctx, placement)
    incoming = [0] * ctx.n_hosts
    for u, h in enumerate(placement):
        if h != start[u]:
            incoming[h] += 1
    now = violated_rules(ctx, placement)
    for v, (reason, _) in sorted(reasons.items()):
        if reason is not MoveReason.BALANCE:
            continue
        served = into.get(start[v], [])
        if not served and balanced:
            continue
        if balanced:
            stays = list(placement)
            stays[v] = start[v]
            after = violated_rules(ctx, tuple(stays))
            if can_undo(ctx, start, loads, incoming, v) and all(
                ri in now and set(bad) <= set(now[ri]) for ri, bad in after.items()
            ):
                continue
        rule = next((reasons[u][1] for u in served if reasons[u][0] is MoveReason.RULE), None)
        if rule is None and not served:
            rule = next(
                (name for r, name in reasons.values() if r is MoveReason.RULE and name), None
            )
        reasons[v] = (MoveReason.MAKE_ROOM, rule)


def _cpu_features_missing(
    ctx: Context, placement: tuple[int, ...], blocked: list[Blocked]
) -> list[Blocked]:
    """Flag every VM left on a host that lacks its CPU features, unless it is blocked for
    another reason already (a VM that should move and cannot keeps that reason)."""
    named = {b.vm for b in blocked}
    flags = [
        b
        for v in range(ctx.n_vms)
        if ctx.vm_names[v] not in named
        and (b := cpu_features_missing(ctx, v, placement[v])) is not None
    ]
    return blocked + flags


def _gains(
    ctx: Context,
    start: tuple[int, ...],
    placement: tuple[int, ...],
    reasons: Mapping[int, tuple[MoveReason, str | None]],
) -> dict[int, float]:
    """Expected gain per move: a balance move's share of the imbalance reduction that the
    balance moves make together (shares in proportion to each move's marginal effect); other
    moves carry their own marginal effect (negative when an evacuation adds imbalance)."""
    tracker = ImbalanceTracker(ctx, placement)
    final = tracker.value()
    marginal = {v: tracker.what_if(v, placement[v], start[v]) - final for v in reasons}
    balance = [v for v, (r, _) in reasons.items() if r is MoveReason.BALANCE]
    gains = {v: marginal[v] for v in reasons if v not in balance}
    if balance:
        undone = list(placement)
        for v in balance:
            undone[v] = start[v]
        total = max(0.0, metrics(ctx, undone).imbalance - final)
        positive = {v: max(0.0, marginal[v]) for v in balance}
        weight = sum(positive.values())
        for v in balance:
            gains[v] = total * positive[v] / weight if weight > 0 else total / len(balance)
    return gains


def require_feasible(solution: Solution) -> Solution:
    """Raise :class:`InfeasibleError` (naming the rules) for an infeasible solution."""
    if solution.status is PlanStatus.INFEASIBLE:
        raise InfeasibleError(
            "hard rules conflict: "
            + "; ".join(c.message for c in solution.causes or ())
            + ("" if solution.causes else ", ".join(solution.conflicts)),
            rules=solution.conflicts,
            causes=solution.causes,
        )
    return solution
