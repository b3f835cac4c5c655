"""Carry out a decision's moves on a hypervisor port, with the clock of the simulation.

:class:`ExecutorRunner` (the default) hands them to the balancer's executor.
:class:`StepRunner` is the small adapter written before the executor landed (kept for
comparison and as a light fallback, ``SimConfig.runner = "steps"``): moves
run in the planner's step order (a move starts only when every move of earlier steps is
final), at most ``limits.concurrent_total`` at once and ``limits.concurrent_per_host`` per host;
just before it starts each move is re-checked (the VM must still run on its source). Between
polls it sleeps with the injected clock, so on a :class:`~balancer.sim.clock.ManualClock` a
tick of migrations runs instantly and gives the same result every time. It works on any
:class:`~balancer.port.HypervisorPort`; the simulation swaps in the simulated cluster.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from balancer.errors import HypervisorError
from balancer.executor import Executor, ExecutorConfig, Result
from balancer.plan import Metrics, Move, Plan, PlanStatus
from balancer.port import Clock, HypervisorPort, JobState, MigrationOptions
from balancer.storage import Store
from policies.model import Limits, Policy

#: poll period while migrations run (simulated seconds)
POLL_S = 0.25


@dataclass(frozen=True, slots=True, kw_only=True)
class Outcome:
    move: Move
    started: datetime
    ended: datetime
    succeeded: bool
    data_mib: float
    error: str = ""


class StepRunner:
    def __init__(
        self,
        port: HypervisorPort,
        clock: Clock,
        *,
        limits: Limits,
        options: MigrationOptions,
        time_limit_s: float = 1800.0,
        poll_s: float = POLL_S,
    ) -> None:
        self._port = port
        self._clock = clock
        self._limits = limits
        self._options = options
        self._poll_s = poll_s
        self._time_limit_s = time_limit_s

    def run(self, moves: Sequence[Move], *, start_before: datetime) -> list[Outcome]:
        """Run ``moves``; none starts at or after ``start_before`` (those are left out).

        Returns one outcome per move that was started or failed its re-check."""
        pending = sorted(moves, key=lambda m: m.step)
        running: dict[str, tuple[Move, datetime]] = {}
        outcomes: list[Outcome] = []
        total = max(1, self._limits.concurrent_total)
        per_host = max(1, self._limits.concurrent_per_host)
        while pending or running:
            now = self._clock.now()
            busy: dict[str, int] = {}
            for m, _ in running.values():
                for h in (m.source, m.target):
                    busy[h] = busy.get(h, 0) + 1
            running_steps = {m.step for m, _ in running.values()}
            while pending and now < start_before and len(running) < total:
                m = pending[0]
                if running_steps and m.step > min(running_steps):
                    break  # the step before it is not done yet
                full = busy.get(m.source, 0) >= per_host or busy.get(m.target, 0) >= per_host
                if full and running:
                    break
                pending.pop(0)
                if self._port.locate(m.vm) != m.source:
                    outcomes.append(
                        Outcome(
                            move=m,
                            started=now,
                            ended=now,
                            succeeded=False,
                            data_mib=0.0,
                            error="skipped: the VM no longer runs on the source",
                        )
                    )
                    continue
                try:
                    job = self._port.start_migration(m.vm, m.source, m.target, self._options)
                except HypervisorError as exc:
                    outcomes.append(
                        Outcome(
                            move=m,
                            started=now,
                            ended=now,
                            succeeded=False,
                            data_mib=0.0,
                            error=str(exc),
                        )
                    )
                    continue
                running[job] = (m, now)
                running_steps.add(m.step)
                for h in (m.source, m.target):
                    busy[h] = busy.get(h, 0) + 1
            if not running:
                if pending and now >= start_before:
                    break
                continue
            self._clock.sleep(self._poll_s)
            for job in list(running):
                p = self._port.progress(job)
                if p.state is JobState.RUNNING:
                    if p.elapsed_s > self._time_limit_s:
                        self._port.abort(job)  # final at the next poll
                    continue
                m, started = running.pop(job)
                outcomes.append(
                    Outcome(
                        move=m,
                        started=started,
                        ended=started + timedelta(seconds=p.elapsed_s),
                        succeeded=p.state is JobState.SUCCEEDED,
                        data_mib=p.data_processed_mib,
                        error=p.error or "",
                    )
                )
        return outcomes


class ExecutorRunner:
    """Runs moves with the balancer's own executor (:class:`balancer.executor.Executor`: its
    queue, limits, pre-start re-check, time limits, journal and audit trail), on a journal in
    an in-memory SQLite store. Same interface as :class:`StepRunner`."""

    def __init__(
        self,
        port: HypervisorPort,
        clock: Clock,
        *,
        policy: Policy,
        store: Store,
        plan_id: str,
        poll_s: float = POLL_S,
    ) -> None:
        self._clock = clock
        self._plan_id = plan_id
        self._ex = Executor(
            port,
            store,
            clock=clock,
            config=ExecutorConfig.from_policy(policy, poll_interval_s=poll_s),
            policy=policy,
        )

    def run(self, moves: Sequence[Move], *, start_before: datetime) -> list[Outcome]:
        plan = Plan(
            status=PlanStatus.MOVES,
            moves=tuple(moves),
            blocked=(),
            before=_NO_METRICS,
            after=_NO_METRICS,
        )
        ex = self._ex
        sub = ex.submit_plan(
            plan, who="simulation", made_at=self._clock.now(), plan_id=self._plan_id
        )
        budget = (start_before - self._clock.now()).total_seconds()
        if not ex.run(timeout_s=max(0.0, budget)):
            ex.stop_dispatch()  # nothing new starts after the tick; what runs finishes
            ex.run()
            for q in ex.status().queued:
                ex.cancel(q.request_id, who="simulation")
        by_key = {(m.vm, m.source, m.target): m for m in moves}
        outcomes: list[Outcome] = []
        for r in ex.results(sub.request_ids):
            m = by_key.get((r.vm, r.source, r.target))
            if m is None or r.result is Result.SUPERSEDED:
                continue
            ended = r.ended_at or self._clock.now()
            started = ended - timedelta(seconds=r.duration_s or 0.0)
            outcomes.append(
                Outcome(
                    move=m,
                    started=started,
                    ended=ended,
                    succeeded=r.result is Result.SUCCEEDED,
                    data_mib=r.data_copied_mib or 0.0,
                    error=r.error or r.skip_reason or "",
                )
            )
        return outcomes


_NO_METRICS = Metrics(
    imbalance=0.0, cpu_stddev=0.0, memory_stddev=0.0, max_cpu_load=0.0, max_memory_load=0.0
)
