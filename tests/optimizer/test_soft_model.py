"""The CP-SAT penalty modules of soft VM-VM rules (balancer.optimizer.soft), on a model built
from a cpsat.ModelInput directly: the hard constraints plus only the objective terms under
test, so that each module is checked alone (whatever the registry holds)."""

from __future__ import annotations

from collections.abc import Sequence

from hypothesis import given, settings
from hypothesis import strategies as st
from ortools.sat.python import cp_model

from balancer.optimizer import cpsat, soft
from balancer.optimizer.context import Context, build_context, is_soft_group, violated_rules
from policies.model import Policy, Rule, RuleKind, RuleMode, Selector
from tests.factories import make_host, make_snapshot, make_vm

PENALTY = 0.25
UNIT = round(PENALTY * cpsat.OBJ_UNIT * cpsat.COST_WEIGHT)


def _ctx(placement: Sequence[int], groups: Sequence[tuple[RuleKind, Sequence[int]]]) -> Context:
    n_hosts = max(placement) + 1 if placement else 1
    hosts = [make_host(f"h{h}") for h in range(max(n_hosts, 3))]
    vms = [make_vm(f"v{i}", f"h{h}") for i, h in enumerate(placement)]
    rules = tuple(
        Rule(
            name=f"r{k}",
            kind=kind,
            vms=Selector(names=frozenset(f"v{i}" for i in members)),
            mode=RuleMode.SHOULD,
        )
        for k, (kind, members) in enumerate(groups)
    )
    return build_context(make_snapshot(hosts, vms), Policy(rules=rules))


def _solve(
    ctx: Context,
    candidates: dict[int, tuple[int, ...]],
    terms: Sequence[cpsat.Module],
    costs: dict[int, float] | None = None,
) -> tuple[tuple[int, ...], int]:
    """Solve hard constraints + ``terms``: the placement and the objective value."""
    inp = cpsat.ModelInput(
        ctx=ctx,
        start=ctx.current,
        candidates=candidates,
        costs=costs or {},
        soft_penalty=PENALTY,
        budget=len(candidates),
    )
    b = cpsat.Build(inp=inp)
    for _, module in cpsat.CONSTRAINTS:
        module(b)
    for module in terms:
        module(b)
    b.model.minimize(sum(b.objective))
    solver = cpsat.solver_for(0, 5.0)
    assert solver.solve(b.model) == cp_model.OPTIMAL
    placement = list(inp.start)
    for v, hosts in b.x.items():
        for h, var in hosts.items():
            if solver.boolean_value(var):
                placement[v] = h
    return tuple(placement), round(solver.objective_value)


def _everywhere(ctx: Context, vms: Sequence[int]) -> dict[int, tuple[int, ...]]:
    return {
        v: (ctx.current[v], *(h for h in range(ctx.n_hosts) if h != ctx.current[v])) for v in vms
    }


def test_soft_anti_affinity_spreads_when_hosts_allow() -> None:
    ctx = _ctx([0, 0, 0], [(RuleKind.ANTI_AFFINITY, [0, 1, 2])])
    placement, value = _solve(ctx, _everywhere(ctx, [0, 1, 2]), [soft.soft_anti_affinity])
    assert len(set(placement)) == 3 and value == 0


def test_soft_anti_affinity_costs_one_penalty_per_extra_member() -> None:
    # four members, candidates only h0 and h1: two hosts, two extra members at best
    ctx = _ctx([0, 0, 0, 0], [(RuleKind.ANTI_AFFINITY, [0, 1, 2, 3])])
    cands = {v: (0, 1) for v in range(4)}
    placement, value = _solve(ctx, cands, [soft.soft_anti_affinity])
    assert sorted(placement) == [0, 0, 1, 1]
    assert value == 2 * UNIT


def test_soft_anti_affinity_counts_members_that_cannot_move() -> None:
    # v0 and v1 are fixed together on h0 (one penalty that no move can remove); v2 may move
    ctx = _ctx([0, 0, 0], [(RuleKind.ANTI_AFFINITY, [0, 1, 2])])
    placement, value = _solve(ctx, {2: (0, 1)}, [soft.soft_anti_affinity])
    assert placement == (0, 0, 1) and value == UNIT


def test_soft_affinity_gathers_on_the_host_holding_most_members() -> None:
    # three on h0, one on h1, one on h2: with a move cost the two strays join h0
    ctx = _ctx([0, 0, 0, 1, 2], [(RuleKind.AFFINITY, [0, 1, 2, 3, 4])])
    cost = 0.01
    placement, value = _solve(
        ctx,
        _everywhere(ctx, range(5)),
        [soft.soft_affinity, cpsat.migration_cost],
        costs=dict.fromkeys(range(5), cost),
    )
    assert placement == (0, 0, 0, 0, 0)
    assert value == 2 * round(cost * cpsat.OBJ_UNIT * cpsat.COST_WEIGHT)


def test_soft_affinity_follows_a_member_that_cannot_move() -> None:
    ctx = _ctx([0, 1, 1], [(RuleKind.AFFINITY, [0, 1, 2])])
    placement, value = _solve(ctx, {1: (1, 0, 2), 2: (1, 0, 2)}, [soft.soft_affinity])
    assert placement == (0, 0, 0) and value == 0


def test_soft_affinity_pays_for_each_member_kept_away() -> None:
    # v2 may not go where the others are (its only candidate besides h2 is h1): one penalty
    ctx = _ctx([0, 0, 2], [(RuleKind.AFFINITY, [0, 1, 2])])
    placement, value = _solve(ctx, {2: (2, 1)}, [soft.soft_affinity])
    assert placement[:2] == (0, 0) and value == UNIT


def test_no_penalty_no_term() -> None:
    ctx = _ctx([0, 0, 1], [(RuleKind.AFFINITY, [0, 1, 2]), (RuleKind.ANTI_AFFINITY, [0, 1])])
    inp = cpsat.ModelInput(
        ctx=ctx,
        start=ctx.current,
        candidates=_everywhere(ctx, [0, 1, 2]),
        costs={},
        soft_penalty=0.0,
        budget=3,
    )
    b = cpsat.Build(inp=inp)
    cpsat.assignment(b)
    soft.soft_affinity(b)
    soft.soft_anti_affinity(b)
    assert b.objective == []


def test_hard_modules_leave_should_groups_alone() -> None:
    """cpsat.affinity / anti_affinity add nothing (no enforcement literal) for should groups."""
    ctx = _ctx([0, 0, 1], [(RuleKind.AFFINITY, [0, 2]), (RuleKind.ANTI_AFFINITY, [0, 1])])
    assert all(is_soft_group(r) for r in ctx.rules)
    inp = cpsat.ModelInput(
        ctx=ctx,
        start=ctx.current,
        candidates=_everywhere(ctx, [0, 1, 2]),
        costs={},
        soft_penalty=PENALTY,
        budget=3,
    )
    b = cpsat.Build(inp=inp)
    cpsat.assignment(b)
    cpsat.affinity(b)
    cpsat.anti_affinity(b)
    assert b.enforce == {}


def test_the_registry_lists_both_modules() -> None:
    names = dict(cpsat.OBJECTIVES)
    assert names["soft_affinity"] is soft.soft_affinity
    assert names["soft_anti_affinity"] is soft.soft_anti_affinity


@st.composite
def _instances(draw: st.DrawFn) -> tuple[list[int], list[tuple[RuleKind, list[int]]], dict]:
    n_vms = draw(st.integers(2, 6))
    placement = draw(st.lists(st.integers(0, 2), min_size=n_vms, max_size=n_vms))
    groups = draw(
        st.lists(
            st.tuples(
                st.sampled_from([RuleKind.AFFINITY, RuleKind.ANTI_AFFINITY]),
                st.lists(st.integers(0, n_vms - 1), min_size=2, max_size=n_vms, unique=True),
            ),
            min_size=1,
            max_size=3,
        )
    )
    # every VM gets variables (its own host at least), so that every group's term is built
    cands = {}
    for v in range(n_vms):
        others = draw(st.lists(st.integers(0, 2), unique=True, max_size=2))
        cands[v] = (placement[v], *(h for h in others if h != placement[v]))
    return placement, [(k, sorted(m)) for k, m in groups], cands


@settings(max_examples=40, deadline=None)
@given(_instances())
def test_the_penalty_is_the_members_out_of_place(instance: tuple) -> None:
    """At the optimum of the soft terms alone, the objective is one penalty per member
    violated_rules reports (the plan's and the model's counts agree), and no placement the
    candidates allow has fewer."""
    placement, groups, cands = instance
    ctx = _ctx(placement, groups)
    end, value = _solve(ctx, cands, [soft.soft_affinity, soft.soft_anti_affinity])
    out_of_place = sum(len(bad) for bad in violated_rules(ctx, end).values())
    assert value == UNIT * out_of_place
    # brute force over the candidate placements: none does better
    best = out_of_place
    options = [list(cands[v]) for v in range(ctx.n_vms)]
    stack: list[list[int]] = [[]]
    while stack:
        partial = stack.pop()
        if len(partial) == ctx.n_vms:
            best = min(best, sum(len(b) for b in violated_rules(ctx, partial).values()))
            continue
        stack.extend([*partial, h] for h in options[len(partial)])
    assert best == out_of_place
