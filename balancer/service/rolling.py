"""Rolling maintenance: put a list of hosts into maintenance a few at a time (issue 13).

Words:

* **rolling maintenance** (a *rolling*): one request naming hosts in order and how many may be
  in maintenance at once (``at_a_time``). Its hosts are cut into **batches** of that size, in
  the order given; batch ``k`` starts only when every host of batch ``k - 1`` is done.
* **step** of a host (:class:`HostStep`): ``waiting`` (its batch has not started),
  ``evacuating`` (it entered maintenance through :meth:`Service.enter_maintenance` and its VMs
  are leaving), ``awaiting_gate`` (empty, in maintenance, waiting for its gate), ``done`` (the
  gate passed and it exited maintenance), ``failed`` (its entry was refused, or its maintenance
  was exited by someone else before the gate), ``cancelled`` (the rolling was cancelled before
  its batch started).
* **gate** (:class:`Gate`): what an empty host waits for before it exits maintenance: an
  operator's ``continue`` (the default), a file that exists (``until_file``), or a command
  that exits 0 (``until_command``, split with :func:`shlex.split` and run without a shell,
  with a time limit, ``{host}`` in an argument replaced by the host's name and
  ``BALANCER_ROLLING_HOST`` in its environment).
* **blocker** of a host: why it does not go on now, in words (a stuck evacuation's message, a
  refused entry, the gate not met yet).

The evacuation itself is the service's own maintenance machinery; this module only starts and
ends maintenance requests and records, in the service's store, where each host is. A restart
resumes from the store: :meth:`RollingMaintenance.advance` runs on every collect (after the
maintenance ticks) and looks at the recorded steps and maintenance requests only. A rolling
that fails (a host failed) starts no further batch; the hosts in progress still finish.
"""

from __future__ import annotations

import os
import shlex
import subprocess
import threading
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Any

from balancer.errors import BalancerError, InputError
from balancer.model import HostState
from balancer.service.errors import ConflictError, NotFoundError
from balancer.service.logs import fields, log
from balancer.service.store import (
    EXITED,
    IN_MAINTENANCE,
    MaintenanceRow,
    RollingRow,
)
from balancer.service.views import GateView, RollingHostView, RollingView

if TYPE_CHECKING:
    from balancer.service.core import Service


class RollingState(StrEnum):
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"
    CANCELLED = "cancelled"


class HostStep(StrEnum):
    WAITING = "waiting"
    EVACUATING = "evacuating"
    AWAITING_GATE = "awaiting_gate"
    DONE = "done"
    FAILED = "failed"
    CANCELLED = "cancelled"


class GateKind(StrEnum):
    OPERATOR = "operator"
    FILE = "file"
    COMMAND = "command"


IN_PROGRESS = frozenset({HostStep.EVACUATING, HostStep.AWAITING_GATE})
#: a gate command's time limit (default and bounds, seconds): it runs in the collect cycle
GATE_TIMEOUT_S = 30.0
MAX_GATE_TIMEOUT_S = 300.0


@dataclass(frozen=True, slots=True, kw_only=True)
class Gate:
    kind: GateKind = GateKind.OPERATOR
    path: str | None = None
    command: str | None = None
    timeout_s: float = GATE_TIMEOUT_S

    @staticmethod
    def make(*, until_file: str | None, until_command: str | None, timeout_s: float | None) -> Gate:
        """The gate of a request, or :class:`InputError` naming the field."""
        if until_file is not None and until_command is not None:
            raise InputError(
                "until_command: give until_file or until_command, not both", subject="gate"
            )
        timeout = GATE_TIMEOUT_S if timeout_s is None else timeout_s
        if not 0 < timeout <= MAX_GATE_TIMEOUT_S:
            raise InputError(
                f"gate_timeout_s: {timeout} is not within 0 (excluded) and {MAX_GATE_TIMEOUT_S:.0f}"
            )
        if until_file is not None:
            if not until_file.strip():
                raise InputError("until_file: must not be empty")
            return Gate(kind=GateKind.FILE, path=until_file, timeout_s=timeout)
        if until_command is not None:
            try:
                argv = shlex.split(until_command)
            except ValueError as exc:
                raise InputError(f"until_command: cannot be split into words: {exc}") from None
            if not argv:
                raise InputError("until_command: must not be empty")
            return Gate(kind=GateKind.COMMAND, command=until_command, timeout_s=timeout)
        return Gate(timeout_s=timeout)

    def doc(self) -> dict[str, Any]:
        return {
            "kind": self.kind.value,
            "path": self.path,
            "command": self.command,
            "timeout_s": self.timeout_s,
        }

    @staticmethod
    def of_doc(doc: dict[str, Any]) -> Gate:
        return Gate(
            kind=GateKind(doc.get("kind", GateKind.OPERATOR.value)),
            path=doc.get("path"),
            command=doc.get("command"),
            timeout_s=float(doc.get("timeout_s", GATE_TIMEOUT_S)),
        )

    def view(self) -> GateView:
        return GateView(
            kind=self.kind.value,
            path=self.path,
            command=self.command,
            timeout_s=self.timeout_s if self.kind is GateKind.COMMAND else None,
        )

    def passed(self, host: str, released_by: str | None) -> tuple[bool, str]:
        """Whether ``host`` may exit maintenance now and, when not, why (its blocker)."""
        if self.kind is GateKind.OPERATOR:
            if released_by:
                return True, ""
            return False, "waiting for an operator's continue"
        if self.kind is GateKind.FILE:
            assert self.path is not None
            if Path(self.path).exists():
                return True, ""
            return False, f"waiting for the file {self.path}"
        assert self.command is not None
        argv = [a.replace("{host}", host) for a in shlex.split(self.command)]
        env = {**os.environ, "BALANCER_ROLLING_HOST": host}
        try:
            done = subprocess.run(
                argv,
                capture_output=True,
                timeout=self.timeout_s,
                env=env,
                check=False,
                stdin=subprocess.DEVNULL,
            )
        except subprocess.TimeoutExpired:
            return False, f"the gate command ran longer than {self.timeout_s:.0f} s"
        except OSError as exc:
            return False, f"the gate command cannot run: {exc.strerror or exc}"
        if done.returncode == 0:
            return True, ""
        err = done.stderr.decode(errors="replace").strip().splitlines()
        tail = f": {err[-1][:200]}" if err else ""
        return False, f"the gate command exited {done.returncode}{tail}"


class RollingMaintenance:
    """Rolling maintenances of one service (``Service.rolling``)."""

    def __init__(self, svc: Service, lock: threading.RLock) -> None:
        self.svc = svc
        self._lock = lock

    # -- requests ------------------------------------------------------------------------------
    def start(self, hosts: list[str], *, at_a_time: int, gate: Gate, who: str) -> RollingView:
        """Check and record a rolling maintenance, then start its first batch."""
        if not hosts:
            raise InputError("hosts: give at least one host")
        if at_a_time < 1:
            raise InputError(f"at_a_time: {at_a_time} is below 1; at least one host at a time")
        svc = self.svc
        with self._lock:
            snap = svc.snapshot()
            known = snap.host_map()
            busy = {
                h.host: r.id
                for r in self.svc.store.rollings(states=frozenset({RollingState.RUNNING}))
                for h in self.svc.store.rolling_hosts(r.id)
                if h.state in (HostStep.WAITING, *IN_PROGRESS)
            }
            seen: dict[str, int] = {}
            for i, h in enumerate(hosts):
                if h in seen:
                    raise InputError(f"hosts[{i}]: {h!r} is given twice (also hosts[{seen[h]}])")
                seen[h] = i
                if h not in known:
                    raise NotFoundError(f"hosts[{i}]: no host {h!r} in the cluster")
                if svc.store.active_maintenance(h) is not None:
                    raise ConflictError(f"hosts[{i}]: {h} is already entering or in maintenance")
                if known[h].state is not HostState.ACTIVE:
                    raise ConflictError(f"hosts[{i}]: {h} is {known[h].state.value}, not active")
                if h in busy:
                    raise ConflictError(
                        f"hosts[{i}]: {h} is already in rolling maintenance {busy[h]}"
                    )
            now = svc.clock.now()
            rid = svc.store.add_rolling(
                who=who,
                at=now,
                at_a_time=at_a_time,
                gate=gate.doc(),
                hosts=list(hosts),
                state=RollingState.RUNNING.value,
                host_state=HostStep.WAITING.value,
            )
            batches = -(-len(hosts) // at_a_time)
            self._audit(
                who,
                "rolling_started",
                f"rolling {rid}: {len(hosts)} hosts, {at_a_time} at a time ({batches} batches), "
                f"gate {gate.kind.value}: {', '.join(hosts)}",
            )
            log.info("rolling %d: %s, %d at a time", rid, ", ".join(hosts), at_a_time)
            self._advance_one(self._row(rid))
            return self.view(rid)

    def continue_(self, rid: int, *, who: str, host: str | None = None) -> RollingView:
        """The operator's gate: the hosts awaiting it (or only ``host``) may exit maintenance."""
        with self._lock:
            r = self._row(rid)
            if r.state != RollingState.RUNNING:
                raise ConflictError(f"rolling {rid} is {r.state}, not running")
            rows = self.svc.store.rolling_hosts(rid)
            if host is not None and host not in {h.host for h in rows}:
                raise NotFoundError(f"host: {host!r} is not a host of rolling {rid}")
            waiting = [
                h for h in rows if h.state == HostStep.AWAITING_GATE and host in (None, h.host)
            ]
            if not waiting:
                raise ConflictError(
                    f"rolling {rid}: no host is awaiting its gate now"
                    if host is None
                    else f"host: {host} of rolling {rid} is not awaiting its gate now"
                )
            for h in waiting:
                self.svc.store.update_rolling_host(rid, h.host, released_by=who)
                self._audit(who, "rolling_continue", f"rolling {rid}: {h.host} may exit", h.host)
            self._advance_one(self._row(rid))
            return self.view(rid)

    def cancel(self, rid: int, *, who: str) -> RollingView:
        """Start no further batch; hosts in progress stay in maintenance (exit them by hand)."""
        with self._lock:
            r = self._row(rid)
            if r.state != RollingState.RUNNING:
                raise ConflictError(f"rolling {rid} is {r.state}, not running")
            now = self.svc.clock.now()
            rows = self.svc.store.rolling_hosts(rid)
            for h in rows:
                if h.state == HostStep.WAITING:
                    self.svc.store.update_rolling_host(
                        rid, h.host, state=HostStep.CANCELLED.value, since=now
                    )
            left = [h.host for h in rows if h.state in IN_PROGRESS]
            message = f"cancelled by {who}" + (
                f"; still in maintenance: {', '.join(left)} (exit them with maintenance exit)"
                if left
                else ""
            )
            self.svc.store.update_rolling(
                rid, at=now, state=RollingState.CANCELLED.value, finished_at=now, message=message
            )
            self._audit(who, "rolling_cancelled", f"rolling {rid}: {message}")
            return self.view(rid)

    def view(self, rid: int) -> RollingView:
        return _view(self._row(rid), self.svc.store.rolling_hosts(rid))

    def views(self, *, limit: int = 100) -> list[RollingView]:
        return [
            _view(r, self.svc.store.rolling_hosts(r.id))
            for r in self.svc.store.rollings(limit=limit)
        ]

    def _row(self, rid: int) -> RollingRow:
        r = self.svc.store.rolling(rid)
        if r is None:
            raise NotFoundError(f"rolling {rid}: no such rolling maintenance")
        return r

    def _audit(self, who: str, result: str, detail: str, host: str | None = None) -> None:
        self.svc.audit.record(
            at=self.svc.clock.now(),
            kind="maintenance",
            who=who,
            result=result,
            source=host,
            detail=detail,
        )

    # -- the cycle -----------------------------------------------------------------------------
    def advance(self) -> None:
        """One look at every running rolling (the service's collect, after its maintenance
        ticks): evacuated hosts await their gate, passed gates exit, the next batch starts."""
        if not self.svc.leading():
            return
        with self._lock:
            for r in self.svc.store.rollings(states=frozenset({RollingState.RUNNING})):
                self._advance_one(r)

    def _advance_one(self, r: RollingRow) -> None:
        """Step the hosts in progress; when none is left, fail, finish or start the next
        batch (a batch that ends at once, every entry refused or every gate passed, moves on
        in the same look)."""
        svc, store = self.svc, self.svc.store
        gate = Gate.of_doc(r.gate)
        for _ in range(len(store.rolling_hosts(r.id)) + 2):
            for h in store.rolling_hosts(r.id):
                if h.state in IN_PROGRESS:
                    self._step(r, h, gate)
            rows = store.rolling_hosts(r.id)
            if any(h.state in IN_PROGRESS for h in rows):
                return
            now = svc.clock.now()
            failed = [h for h in rows if h.state == HostStep.FAILED]
            if failed:
                message = "failed: " + "; ".join(f"{h.host}: {h.blocker}" for h in failed)
                store.update_rolling(
                    r.id, at=now, state=RollingState.FAILED.value, finished_at=now, message=message
                )
                self._audit(r.who, "rolling_failed", f"rolling {r.id}: {message}")
                log.warning("rolling %d %s", r.id, message)
                return
            waiting = [h for h in rows if h.state == HostStep.WAITING]
            if not waiting:
                store.update_rolling(
                    r.id, at=now, state=RollingState.DONE.value, finished_at=now, message=""
                )
                self._audit(r.who, "rolling_done", f"rolling {r.id}: {len(rows)} hosts done")
                log.info("rolling %d done", r.id)
                return
            batch = min(h.batch for h in waiting)
            names = [h.host for h in waiting if h.batch == batch]
            self._audit(
                r.who, "rolling_batch", f"rolling {r.id}: batch {batch + 1}: {', '.join(names)}"
            )
            for host in names:
                try:
                    m = svc.enter_maintenance(host, who=r.who)
                except BalancerError as exc:
                    store.update_rolling_host(
                        r.id, host, state=HostStep.FAILED.value, since=now, blocker=str(exc)
                    )
                    log.warning("rolling %d: %s cannot enter maintenance: %s", r.id, host, exc)
                    continue
                store.update_rolling_host(
                    r.id, host, state=HostStep.EVACUATING.value, since=now, maintenance_id=m.id
                )

    def _maintenance(self, h: RollingHostView) -> MaintenanceRow | None:
        for m in self.svc.store.maintenance_requests(host=h.host, limit=5):
            if m.id == h.maintenance_id:
                return m
        return None

    def _step(self, r: RollingRow, h: RollingHostView, gate: Gate) -> None:
        """Move one host in progress on as far as it can go now."""
        store, now = self.svc.store, self.svc.clock.now()
        m = self._maintenance(h)
        if m is None or m.state == EXITED:
            by = m.exited_by if m is not None else "someone"
            blocker = f"its maintenance was exited by {by} before the rolling's gate"
            store.update_rolling_host(
                r.id, h.host, state=HostStep.FAILED.value, since=now, blocker=blocker
            )
            self._audit(r.who, "rolling_host_failed", f"rolling {r.id}: {blocker}", h.host)
            return
        state = h.state
        if state == HostStep.EVACUATING:
            if m.state != IN_MAINTENANCE:
                if m.message != h.blocker:
                    store.update_rolling_host(r.id, h.host, blocker=m.message)
                return
            state = HostStep.AWAITING_GATE
            store.update_rolling_host(r.id, h.host, state=state.value, since=now, blocker="")
            self._audit(
                r.who,
                "rolling_evacuated",
                f"rolling {r.id}: {h.host} is empty; awaiting gate {gate.kind.value}",
                h.host,
            )
        ok, why = gate.passed(h.host, h.released_by)
        if not ok:
            if why != h.blocker:
                store.update_rolling_host(r.id, h.host, blocker=why)
            return
        self.svc.exit_maintenance(h.host, who=h.released_by or r.who)
        store.update_rolling_host(r.id, h.host, state=HostStep.DONE.value, since=now, blocker="")
        self._audit(
            h.released_by or r.who,
            "rolling_host_done",
            f"rolling {r.id}: {h.host} passed gate {gate.kind.value} and is active again",
            h.host,
        )
        log.info("rolling %d: %s done", r.id, h.host, extra=fields(host=h.host))


def _view(r: RollingRow, hosts: list[RollingHostView]) -> RollingView:
    current = [h.batch for h in hosts if h.state in IN_PROGRESS]
    return RollingView(
        id=r.id,
        state=r.state,
        who=r.who,
        at_a_time=r.at_a_time,
        gate=Gate.of_doc(r.gate).view(),
        created_at=r.created_at,
        updated_at=r.updated_at,
        finished_at=r.finished_at,
        current_batch=min(current) if current else None,
        message=r.message,
        hosts=hosts,
    )
