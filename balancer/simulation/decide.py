"""The per-interval decision, made as the service makes it (pure: values in, values out; the
time is an argument).

1. Holds: :func:`balancer.service.decisions.holds` over the moves made so far (the adaptive
   cooldown after a balance move, ping-pong A -> B -> A within the window); held VMs are not
   moved for balance.
2. Plan: :func:`balancer.planner.make_plan` (optimizer + planner) on the demand snapshot; with
   the policy's ``predictive`` section on, :func:`balancer.predictive.predictive_plan` on the
   outlook of :class:`balancer.service.forecasting.ForecastSource`, whose demand history
   :meth:`ServiceDecider.observe` feeds with every tick's snapshot (as the service's collect).
3. Automation: :func:`balancer.service.decisions.split_plan` - ``manual`` recommends only,
   ``partial`` executes mandatory moves only, ``full`` executes everything. No breaker is open
   in a simulation (metrics are never stale, migrations fail only when the hypervisor refuses).
4. ``goal: consolidate``: the packing step of :mod:`balancer.simulation.consolidate` runs on
   the plan's end state (the optimizer balances; packing and power are done here).

:class:`NeverMigrate` is the built-in baseline policy ``none``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import Protocol

from balancer.model import Snapshot
from balancer.plan import Move, Plan
from balancer.planner import end_state
from balancer.predictive import predictive_plan
from balancer.service.decisions import (
    Breakers,
    Disposition,
    cooldown_history,
    holds,
    split_plan,
)
from balancer.service.forecasting import ForecastSource
from balancer.service.store import MoveRecord
from balancer.simulation.consolidate import PowerAction, pack
from collectors.history import DemandHistory, MemoryHistoryBackend
from collectors.settings import HistorySettings
from policies.model import Automation, Goal, Policy

#: the service's default ping-pong window (settings ``pingpong_window_h``)
PINGPONG_WINDOW = timedelta(hours=24)
NO_BREAKERS = Breakers(trips=(), allow_mandatory=True)


@dataclass(frozen=True, slots=True, kw_only=True)
class Decision:
    execute: tuple[Move, ...] = ()
    recommend: tuple[Move, ...] = ()
    held: frozenset[str] = frozenset()
    plan: Plan | None = None
    power: tuple[PowerAction, ...] = field(default=())


class Decider(Protocol):
    name: str

    @property
    def policy(self) -> Policy | None: ...

    def observe(self, snapshot: Snapshot, now: datetime) -> None:
        """Called by the engine on every tick with the raw collected snapshot (the current CPU
        use of every VM), before any decision of that tick."""
        ...

    def decide(
        self, snapshot: Snapshot, now: datetime, history: Sequence[MoveRecord]
    ) -> Decision: ...


class NeverMigrate:
    """The baseline policy ``none``: never migrates (and decides nothing)."""

    name = "none"

    @property
    def policy(self) -> Policy | None:
        return None

    def observe(self, snapshot: Snapshot, now: datetime) -> None:
        """Nothing to learn: the baseline never decides."""

    def decide(self, snapshot: Snapshot, now: datetime, history: Sequence[MoveRecord]) -> Decision:
        return Decision()


class ServiceDecider:
    """Decides like the service (see the module docstring)."""

    def __init__(
        self,
        policy: Policy,
        *,
        name: str = "policy",
        time_limit_s: float = 0.3,
        seed: int = 0,
        pingpong_window: timedelta = PINGPONG_WINDOW,
    ) -> None:
        self.name = name
        self._policy = policy
        self._time_limit_s = time_limit_s
        self._seed = seed
        self._pingpong_window = pingpong_window
        #: the demand history and forecaster, as the service keeps them (memory only here);
        #: only a predictive policy needs one
        self.forecasts: ForecastSource | None = (
            ForecastSource(DemandHistory(HistorySettings(), MemoryHistoryBackend()))
            if policy.predictive.enabled
            else None
        )

    @property
    def policy(self) -> Policy:
        return self._policy

    def observe(self, snapshot: Snapshot, now: datetime) -> None:
        """Every tick's raw snapshot goes into the demand history, as the service's collect
        does with every collected snapshot."""
        if self.forecasts is not None:
            self.forecasts.record(snapshot, now)

    def decide(self, snapshot: Snapshot, now: datetime, history: Sequence[MoveRecord]) -> Decision:
        policy = self._policy
        cooldown = timedelta(minutes=policy.cooldown_minutes)
        cooldown_max = timedelta(minutes=policy.cooldown_max_minutes)
        span = cooldown_history(
            base=cooldown, cap=cooldown_max, pingpong_window=self._pingpong_window
        )
        recent = [m for m in history if m.at >= now - span]
        held = frozenset(
            holds(
                recent,
                now=now,
                cooldown=cooldown,
                cooldown_max=cooldown_max,
                pingpong_window=self._pingpong_window,
            )
        )
        outlook = (
            self.forecasts.outlook(snapshot, policy.predictive, now)
            if self.forecasts is not None
            else None
        )
        plan = predictive_plan(
            snapshot, policy, outlook, held=held, time_limit_s=self._time_limit_s, seed=self._seed
        )
        split = split_plan(plan, policy.automation, NO_BREAKERS)
        execute = tuple(split[Disposition.EXECUTE])
        recommend = tuple(split[Disposition.RECOMMEND])
        power: tuple[PowerAction, ...] = ()
        if policy.goal is Goal.CONSOLIDATE:
            after = end_state(snapshot, replace(plan, moves=execute))
            budget = max(0, policy.limits.moves_per_cycle - len(execute))
            packed = pack(after, policy, held=held, budget=budget, first_step=plan.steps)
            if policy.automation is Automation.FULL:
                execute += packed.moves
                power = packed.power
            else:
                recommend += packed.moves
        return Decision(execute=execute, recommend=recommend, held=held, plan=plan, power=power)
