"""The planner: orders the optimizer's target placement into steps that are safe at every step.

Pure. A step is a set of migrations that may run at once:

* at most ``limits.concurrent_per_host`` migrations touch a host (as source or target) and at
  most ``limits.concurrent_total`` run in all;
* while a VM migrates its memory (and CPU) counts on its source *and* its target, so a target
  must have room for everything already on it plus everything arriving in the step, within
  ``capacity x (1 - headroom)``; VMs leaving it in the same step still count;
* no hard rule that holds before a step is broken after it (or while it runs: an in-flight VM
  counts on both hosts for anti_affinity); an affinity group moves in one step (``should``
  groups are soft: their members move on their own and are never checked here).

Moves are taken in priority order (mandatory first, then by gain). When no pending move can
start (a swap or a cycle), a VM on a blocking host is parked on a third host with a
``temporary`` move -- or, when the blockers are an affinity group, the whole group is parked
together in one step; when no parking is possible the lowest-priority blocked move is left out
and reported as blocked (capacity, or the anti_affinity rule it would break while it runs).
Never a transient overcommit, never a transient rule violation.

Truthful status: every hard rule still violated in the plan's end state is listed as a
:class:`~balancer.plan.Violation` with its cause, and the plan is ``partial``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from balancer.model import Snapshot
from balancer.optimizer.context import Context, soft_violations, violated_rules
from balancer.optimizer.core import Solution, optimize
from balancer.optimizer.filters import anti_affinity_conflict, static_verdict
from balancer.optimizer.metrics import metrics
from balancer.plan import (
    Blocked,
    BlockedReason,
    Move,
    MoveReason,
    Plan,
    PlanStatus,
    Violation,
    ViolationCause,
)
from policies.model import Policy, RuleKind


@dataclass(frozen=True, slots=True, kw_only=True)
class Ordered:
    moves: tuple[Move, ...]
    #: VMs whose move was left out: no safe order was found
    dropped: tuple[int, ...]
    end: tuple[int, ...]
    #: dropped VM -> the anti_affinity rule its move would have broken while it ran
    #: (absent: it was left out for capacity)
    transient: Mapping[int, str] = field(default_factory=dict)


@dataclass(slots=True, kw_only=True)
class _Step:
    per_host: dict[int, int]
    total: int
    cpu_in: dict[int, int]
    mem_in: dict[int, int]
    incoming: dict[int, set[int]]
    vms: set[int]


def _units(ctx: Context, pending: Sequence[int], target: Sequence[int]) -> list[list[int]]:
    """Pending VMs grouped so that affinity groups move together (same step)."""
    seen: set[int] = set()
    units: list[list[int]] = []
    pend = set(pending)
    rank = {v: i for i, v in enumerate(pending)}
    for v in pending:
        if v in seen:
            continue
        unit = {v}
        grow = True
        while grow:
            grow = False
            for u in list(unit):
                for ri in ctx.vm_rules[u]:
                    r = ctx.rules[ri]
                    if r.rule.kind is RuleKind.AFFINITY and r.hard:
                        for m in r.members:
                            if m in pend and m not in unit:
                                unit.add(m)
                                grow = True
        seen |= unit
        units.append(sorted(unit, key=rank.__getitem__))
    return units


class _Orderer:
    def __init__(
        self,
        ctx: Context,
        start: Sequence[int],
        target: Sequence[int],
        priority: Sequence[int],
        max_moves: int,
    ) -> None:
        self.ctx = ctx
        self.pos = list(start)
        self.target = list(target)
        self.priority = list(priority)
        self.max_moves = max_moves
        limits = ctx.policy.limits
        self.per_host_limit = max(1, limits.concurrent_per_host)
        self.total_limit = max(1, limits.concurrent_total)
        self.cpu = list(ctx.host_cpu_base)
        self.mem = list(ctx.host_mem_base)
        for v, h in enumerate(self.pos):
            self.cpu[h] += ctx.vm_cpu[v]
            self.mem[h] += ctx.vm_mem[v]
        self.moves: list[tuple[int, int, int, int, bool]] = []  # vm, src, dst, step, temporary
        self.parked: set[int] = set()
        self.dropped: list[int] = []
        self.transient: dict[int, str] = {}

    # -- checks ---------------------------------------------------------------------------------
    def _room(self, step: _Step, v: int, h: int, extra_cpu: int = 0, extra_mem: int = 0) -> bool:
        ctx = self.ctx
        return (
            self.mem[h] + step.mem_in.get(h, 0) + extra_mem + ctx.vm_mem[v] <= ctx.host_mem_cap[h]
            and self.cpu[h] + step.cpu_in.get(h, 0) + extra_cpu + ctx.vm_cpu[v]
            <= ctx.host_cpu_cap[h]
        )

    def _anti_ok(self, step: _Step, v: int, h: int) -> bool:
        if anti_affinity_conflict(self.ctx, self.pos, v, h) is not None:
            return False
        for ri in self.ctx.vm_rules[v]:
            r = self.ctx.rules[ri]
            if (
                r.rule.kind is RuleKind.ANTI_AFFINITY
                and r.hard
                and any(m != v and m in step.incoming.get(h, set()) for m in r.members)
            ):
                return False
        return True

    def _fits_unit(self, step: _Step, unit: Sequence[int], dests: Sequence[int]) -> bool:
        if step.total + len(unit) > self.total_limit:
            return False
        touch: dict[int, int] = {}
        extra_cpu: dict[int, int] = {}
        extra_mem: dict[int, int] = {}
        for v, h in zip(unit, dests, strict=True):
            if v in step.vms:
                return False
            for x in (self.pos[v], h):
                touch[x] = touch.get(x, 0) + 1
            if not self._room(step, v, h, extra_cpu.get(h, 0), extra_mem.get(h, 0)):
                return False
            if not self._anti_ok(step, v, h):
                return False
            extra_cpu[h] = extra_cpu.get(h, 0) + self.ctx.vm_cpu[v]
            extra_mem[h] = extra_mem.get(h, 0) + self.ctx.vm_mem[v]
        return all(step.per_host.get(x, 0) + n <= self.per_host_limit for x, n in touch.items())

    def _add(self, step: _Step, v: int, h: int) -> None:
        for x in (self.pos[v], h):
            step.per_host[x] = step.per_host.get(x, 0) + 1
        step.total += 1
        step.cpu_in[h] = step.cpu_in.get(h, 0) + self.ctx.vm_cpu[v]
        step.mem_in[h] = step.mem_in.get(h, 0) + self.ctx.vm_mem[v]
        step.incoming.setdefault(h, set()).add(v)
        step.vms.add(v)

    def _apply(self, v: int, h: int, step_no: int, temporary: bool) -> None:
        src = self.pos[v]
        self.moves.append((v, src, h, step_no, temporary))
        self.cpu[src] -= self.ctx.vm_cpu[v]
        self.mem[src] -= self.ctx.vm_mem[v]
        self.cpu[h] += self.ctx.vm_cpu[v]
        self.mem[h] += self.ctx.vm_mem[v]
        self.pos[v] = h

    # -- main loop ------------------------------------------------------------------------------
    def run(self) -> None:
        step_no = 0
        while True:
            pending = [v for v in self.priority if self.pos[v] != self.target[v]]
            if not pending:
                return
            step = _Step(per_host={}, total=0, cpu_in={}, mem_in={}, incoming={}, vms=set())
            chosen: list[tuple[int, int]] = []
            for unit in _units(self.ctx, pending, self.target):
                if len(self.moves) + len(chosen) + len(unit) > self.max_moves:
                    continue
                dests = [self.target[v] for v in unit]
                if self._fits_unit(step, unit, dests):
                    for v, h in zip(unit, dests, strict=True):
                        self._add(step, v, h)
                        chosen.append((v, h))
            if chosen:
                for v, h in chosen:
                    self._apply(v, h, step_no, temporary=False)
                step_no += 1
                continue
            if self._park(pending, step_no):
                step_no += 1
                continue
            self._drop(pending)

    def _park(self, pending: Sequence[int], step_no: int) -> bool:
        """Break a swap/cycle: move one VM off a blocking host to a third host, or else a
        whole affinity group (see :meth:`_park_group`)."""
        if len(self.moves) + 2 > self.max_moves:
            return False
        return self._park_single(pending, step_no) or self._park_group(pending, step_no)

    def _park_single(self, pending: Sequence[int], step_no: int) -> bool:
        ctx = self.ctx
        pend = set(pending)
        for v in pending:
            b = self.target[v]
            blockers = [
                u
                for u in pend
                if self.pos[u] == b and u != v and u not in self.parked and not _in_affinity(ctx, u)
            ]
            for u in sorted(blockers, key=lambda u: (-ctx.vm_mem[u], u)):
                empty = _Step(per_host={}, total=0, cpu_in={}, mem_in={}, incoming={}, vms=set())
                for c in range(ctx.n_hosts):
                    if c in (b, self.target[u]) or static_verdict(ctx, u, c) is not None:
                        continue
                    if self._fits_unit(empty, [u], [c]):
                        self._apply(u, c, step_no, temporary=True)
                        self.parked.add(u)
                        return True
        return False

    def _park_group(self, pending: Sequence[int], step_no: int) -> bool:
        """Park a whole pending affinity group that sits on a host another pending unit must
        reach: all its members to one third host in one step (within the concurrency limits
        and the room and rules a step needs), so that the group stays together."""
        ctx = self.ctx
        units = _units(ctx, pending, self.target)
        for unit in units:
            wanted = {self.target[v] for v in unit}
            for group in units:
                if group is unit or len(group) < 2 or any(u in self.parked for u in group):
                    continue
                homes = {self.pos[u] for u in group}
                if len(homes) != 1 or not homes <= wanted:
                    continue
                if len(self.moves) + len(group) + 1 > self.max_moves:
                    continue
                avoid = wanted | {self.target[u] for u in group}
                for c in range(ctx.n_hosts):
                    if c in avoid or any(static_verdict(ctx, u, c) is not None for u in group):
                        continue
                    empty = _Step(
                        per_host={}, total=0, cpu_in={}, mem_in={}, incoming={}, vms=set()
                    )
                    if self._fits_unit(empty, group, [c] * len(group)):
                        for u in group:
                            self._apply(u, c, step_no, temporary=True)
                            self.parked.add(u)
                        return True
        return False

    def _drop(self, pending: Sequence[int]) -> None:
        """Leave out the lowest-priority pending unit (the VMs stay where they are now)."""
        units = _units(self.ctx, pending, self.target)
        last = units[-1]
        rule = next(
            (
                r
                for v in last
                if (r := anti_affinity_conflict(self.ctx, self.pos, v, self.target[v]))
            ),
            None,
        )
        for v in last:
            if rule is not None:
                self.transient[v] = rule
            self.target[v] = self.pos[v]
            self.dropped.append(v)


def _in_affinity(ctx: Context, v: int) -> bool:
    return any(
        ctx.rules[ri].rule.kind is RuleKind.AFFINITY
        and ctx.rules[ri].hard
        and len(ctx.rules[ri].members) > 1
        for ri in ctx.vm_rules[v]
    )


def order_moves(solution: Solution) -> Ordered:
    """Order a solution's moves into safe steps (see the module docstring)."""
    ctx = solution.ctx
    moved = solution.moved

    def prio(v: int) -> tuple[int, float, str]:
        reason = solution.reasons[v][0]
        return (0 if reason.mandatory else 1, -solution.gains.get(v, 0.0), ctx.vm_names[v])

    priority = sorted(moved, key=prio)
    orderer = _Orderer(
        ctx,
        solution.start,
        solution.placement,
        priority,
        max(len(moved), ctx.policy.limits.moves_per_cycle),
    )
    orderer.run()
    moves: list[Move] = []
    for v, src, dst, step, temporary in orderer.moves:
        reason, rule = (MoveReason.TEMPORARY, None) if temporary else solution.reasons[v]
        final_leg = not temporary and v in orderer.parked
        if final_leg:
            reason, rule = solution.reasons[v]
        moves.append(
            Move(
                vm=ctx.vm_names[v],
                source=ctx.host_names[src],
                target=ctx.host_names[dst],
                step=step,
                reason=reason,
                rule=rule,
                gain=0.0 if temporary else solution.gains.get(v, 0.0),
                memory_mib=ctx.vm_mem[v],
            )
        )
    return Ordered(
        moves=tuple(moves),
        dropped=tuple(orderer.dropped),
        end=tuple(orderer.pos),
        transient=dict(orderer.transient),
    )


def build_plan(solution: Solution) -> Plan:
    """The executable plan for an optimizer solution."""
    ctx = solution.ctx
    if solution.status is PlanStatus.INFEASIBLE:
        return Plan(
            status=PlanStatus.INFEASIBLE,
            moves=(),
            blocked=solution.blocked,
            before=solution.before,
            after=solution.before,
            solve_seconds=solution.solve_seconds,
            conflicts=solution.conflicts,
            causes=solution.causes,
            snapshot_digest=ctx.snapshot.digest(),
            policy_digest=ctx.policy.digest,
        )
    ordered = order_moves(solution)
    blocked = list(solution.blocked)
    for v in ordered.dropped:
        rule = ordered.transient.get(v)
        blocked.append(
            Blocked(
                vm=ctx.vm_names[v],
                reason=BlockedReason.CAPACITY,
                detail="no safe order for this move (left out)",
            )
            if rule is None
            else Blocked(
                vm=ctx.vm_names[v],
                reason=BlockedReason.RULE,
                rule=rule,
                detail=f"no safe order for this move (left out): it would break {rule} "
                "while it runs, and no free host can take a VM meanwhile",
            )
        )
    after = metrics(ctx, ordered.end) if ordered.dropped else solution.after
    violations = end_violations(solution, ordered)
    status = PlanStatus.MOVES if ordered.moves else PlanStatus.BALANCED
    return Plan(
        status=PlanStatus.PARTIAL if violations else status,
        moves=ordered.moves,
        blocked=tuple(sorted(blocked, key=lambda b: b.vm)),
        before=solution.before,
        after=after,
        solve_seconds=solution.solve_seconds,
        snapshot_digest=ctx.snapshot.digest(),
        policy_digest=ctx.policy.digest,
        violations=violations,
        soft_violations=soft_violations(ctx, ordered.end),
    )


def end_violations(solution: Solution, ordered: Ordered) -> tuple[Violation, ...]:
    """Every hard rule violated in the ordered plan's end state, with its cause."""
    ctx = solution.ctx
    end = ordered.end
    blocked = {b.vm: b for b in solution.blocked}
    out: list[Violation] = []
    for ri, bad in sorted(violated_rules(ctx, end).items()):
        r = ctx.rules[ri]
        if not r.hard:
            continue
        cause, needed, message = _cause(ctx, ordered, blocked, ri, bad)
        out.append(
            Violation(
                rule=r.name,
                kind=r.rule.kind,
                cause=cause,
                vms=tuple(ctx.vm_names[v] for v in bad),
                hosts=tuple(sorted({ctx.host_names[end[v]] for v in bad})),
                needed=needed,
                message=message,
            )
        )
    return tuple(out)


_BLOCKED_CAUSE = {
    BlockedReason.CPU_INCOMPATIBLE: ViolationCause.CPU_FEATURES,
    BlockedReason.CPU_FEATURES_MISSING: ViolationCause.CPU_FEATURES,
    BlockedReason.CAPACITY: ViolationCause.CAPACITY,
    BlockedReason.MOVE_BUDGET: ViolationCause.MOVE_BUDGET,
    BlockedReason.EXCLUDED: ViolationCause.EXCLUDED,
    BlockedReason.UNREACHABLE: ViolationCause.UNREACHABLE,
    BlockedReason.NO_TARGET: ViolationCause.NO_TARGET,
}


def _cause(
    ctx: Context,
    ordered: Ordered,
    blocked: Mapping[str, Blocked],
    ri: int,
    bad: Sequence[int],
) -> tuple[ViolationCause, int, str]:
    """Why rule ``ri`` stays violated by ``bad``: the cause, the concurrency needed, a message.

    In order: a VM that may not move (excluded, or on a host that cannot send); a member of
    an affinity group too large for one step (the optimizer keeps such groups where they
    are); a move the planner left out (a transient rule violation, or no room to park); the
    optimizer's blocked reason; else what the hosts offer."""
    r = ctx.rules[ri]
    limits = ctx.policy.limits
    step = min(limits.concurrent_per_host, limits.concurrent_total)
    names = ", ".join(ctx.vm_names[v] for v in bad)
    for v in bad:
        if v in ctx.excluded:
            return ViolationCause.EXCLUDED, 0, f"{names}: excluded from automatic moves"
        if not ctx.can_move(v):
            return ViolationCause.UNREACHABLE, 0, f"{names}: its host cannot send VMs"
    involved = set(bad) if r.rule.kind is RuleKind.VM_HOST else set(r.members)
    for v in sorted(involved):
        for gi in ctx.vm_rules[v]:
            g = ctx.rules[gi]
            if g.rule.kind is RuleKind.AFFINITY and g.hard and len(g.members) > step:
                return (
                    ViolationCause.NEEDS_CONCURRENCY,
                    len(g.members),
                    f"affinity group {g.name} has {len(g.members)} VMs and moves in one step, "
                    f"but one step moves at most {step} (limits.concurrent_per_host "
                    f"{limits.concurrent_per_host}, concurrent_total {limits.concurrent_total})",
                )
    dropped = [v for v in ordered.dropped if v in involved]
    if dropped:
        rule = next((ordered.transient[v] for v in dropped if v in ordered.transient), None)
        if rule is not None:
            return (
                ViolationCause.NEEDS_TRANSIENT_VIOLATION,
                0,
                f"repairing {r.name} needs {rule} broken while the VMs trade hosts, and no "
                "free host can take one of them meanwhile",
            )
        return (
            ViolationCause.CAPACITY,
            0,
            f"repairing {r.name} needs the VMs to trade hosts, and no host has room to park "
            "one of them meanwhile",
        )
    for v in bad:
        b = blocked.get(ctx.vm_names[v])
        if b is not None and b.reason in _BLOCKED_CAUSE:
            cause = _BLOCKED_CAUSE[b.reason]
            return cause, 0, f"{names}: {b.detail or cause.value}"
    return _host_cause(ctx, r.name, bad, names)


def _host_cause(
    ctx: Context, rule: str, bad: Sequence[int], names: str
) -> tuple[ViolationCause, int, str]:
    """The cause from what the hosts offer the VMs that violate a rule."""
    open_hosts = [h for h in range(ctx.n_hosts) if ctx.accepts(h)]
    if not open_hosts:
        return ViolationCause.NO_TARGET, 0, "no host takes VMs"
    for v in bad:
        vm = ctx.snapshot.vms[v]
        if not any(vm.runs_on(ctx.snapshot.hosts[h]) for h in open_hosts):
            return (
                ViolationCause.CPU_FEATURES,
                0,
                f"no host that takes VMs has the CPU features of {vm.name}",
            )
    return (
        ViolationCause.CAPACITY,
        0,
        f"no host {rule} allows has room for {names} (with headroom)",
    )


def make_plan(
    snapshot: Snapshot,
    policy: Policy,
    *,
    held: frozenset[str] = frozenset(),
    time_limit_s: float = 10.0,
    seed: int = 0,
) -> Plan:
    """Optimize, then order: the plan for one balancing cycle."""
    return build_plan(optimize(snapshot, policy, held=held, time_limit_s=time_limit_s, seed=seed))


def end_state(snapshot: Snapshot, plan: Plan) -> Snapshot:
    """The snapshot after every move of the plan (no I/O)."""
    placement = snapshot.placement()
    for m in plan.moves:
        placement[m.vm] = m.target
    return snapshot.with_placement(placement)
