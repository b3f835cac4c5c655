"""Carry out a decision's moves on a hypervisor port, with the clock of the simulation.

:class:`StepRunner` is a small adapter in the executor's place (see docs/simulation.md): moves
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
from balancer.plan import Move
from balancer.port import Clock, HypervisorPort, JobState, MigrationOptions
from policies.model import Limits

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
