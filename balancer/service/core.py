"""The service object: backend -> collect -> decide -> executor.

:class:`Service` holds the imperative state of the running balancer (the last snapshot, the
policy in force, breakers) and offers one method per thing the API and the scheduled jobs do.
Pure decisions live in :mod:`balancer.service.decisions`; plans come from the optimizer through
:class:`~balancer.service.ports.PlannerPort`; every migration goes through the executor
(:class:`~balancer.service.ports.ExecutorPort`). Every change of state is written to the store
(and the audit trail) before it is acted on.
"""

from __future__ import annotations

import contextlib
import hashlib
import shutil
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, Protocol

import yaml

from balancer.errors import (
    BalancerError,
    HypervisorError,
    InputError,
    PlanningError,
    PolicyError,
)
from balancer.executor.types import MigrationResult, Result
from balancer.inputs import POLICY, read_bytes
from balancer.model import HostState, Snapshot, stddev
from balancer.optimizer.placement import NewVM
from balancer.plan import Blocked, Move, MoveReason, Plan, PlanStatus, parse_reason_label
from balancer.plan_io import plan_to_dict
from balancer.port import Clock, HypervisorPort
from balancer.predictive import Outlook
from balancer.service import decisions as D
from balancer.service import hostwatch as HW
from balancer.service.assistant import host_forecast
from balancer.service.assistant import placement as place_new
from balancer.service.assistant import targets as assistant_targets
from balancer.service.copycost import CopyCostModel
from balancer.service.errors import ConflictError, NotFoundError, UnavailableError
from balancer.service.events import EventWatch
from balancer.service.forecasting import ForecastSource
from balancer.service.health import BreakerWatch
from balancer.service.logs import fields, log
from balancer.service.ports import (
    AuditFilter,
    AuditItem,
    AuditPort,
    ExecutorPort,
    Migration,
    MigrationState,
    MoveRequest,
    PlannerPort,
    Priority,
)
from balancer.service.rolling import RollingMaintenance
from balancer.service.store import (
    APPROVED,
    EVACUATING,
    EXITED,
    EXPIRED,
    IN_MAINTENANCE,
    PENDING,
    REJECTED,
    HistoryPoint,
    MaintenanceRow,
    MoveRecord,
    PlanRecord,
    RecommendationRow,
    ServiceStore,
)
from balancer.service.views import (
    AgentSampleView,
    BlockedVM,
    BreakerView,
    ClusterLeaderView,
    ForecastView,
    HealthSignalView,
    HistoryView,
    HoldView,
    HostForecastView,
    HostView,
    MaintenanceView,
    MigrationView,
    PlacementView,
    PlannedMove,
    PlanView,
    PolicyView,
    PreflightView,
    RecommendationView,
    SoftViolationView,
    StatusView,
    TargetsView,
    ValidationView,
    ViolationView,
    VMForecastView,
    VMProgress,
    VMView,
)
from balancer.settings import Settings
from collectors.samples import HostSample
from policies.lint import Severity, lint
from policies.loader import load_policy
from policies.model import Automation, Goal, Policy
from policies.windows import WindowState, window_state

#: who the service itself is in the audit trail
SYSTEM = "balancer"

PAUSE_FLAG = "pause"
#: the balancing window hold last audited (its key): one audit record per hold, not per cycle
WINDOW_FLAG = "window_hold"
AUTOMATION_FLAG = "automation"

#: failed migrations of one VM during one evacuation before it is reported as a blocker
EVAC_ATTEMPTS = 3
#: maintenance ticks in a row in which no VM left the host and none was in flight before an
#: evacuation is reported ``stuck`` (cycles, not seconds)
STUCK_AFTER_CYCLES = 2

MANUAL_PRIORITIES = {
    "high": Priority.MANUAL_HIGH,
    "normal": Priority.MANUAL_NORMAL,
    "low": Priority.MANUAL_LOW,
}


class DemandSource:
    """Where the load figures come from: the port's own snapshot by default; the collectors'
    window (issue 7) plugs in here and may declare metrics stale."""

    def observe(self, snapshot: Snapshot, now: datetime) -> tuple[Snapshot, str | None]:
        """The snapshot to decide on and, when the metrics are stale, why."""
        return snapshot, None

    def ingest_sample(self, sample: HostSample) -> None:
        """A host agent's sample (the whole host's use, PSI): only a sample window takes it."""
        raise UnavailableError("this service keeps no sample window: agent samples are not used")

    def close(self) -> None:
        """Flush and close what the source writes to (the collectors' InfluxDB spool)."""


class Demand(Protocol):
    """What the service asks of its load figures (:class:`DemandSource`, or the collectors'
    ``collectors.source.WindowDemandSource``, which also exports to InfluxDB)."""

    def observe(self, snapshot: Snapshot, now: datetime) -> tuple[Snapshot, str | None]: ...

    def ingest_sample(self, sample: HostSample) -> None: ...

    def close(self) -> None: ...


def _agent_view(sample: HostSample | None) -> AgentSampleView | None:
    if sample is None:
        return None
    return AgentSampleView(
        at=sample.time,
        cpu_used_cores=sample.cpu_used_cores,
        memory_used_mib=sample.memory_used_mib,
        net_rx_bps=sample.net_rx_bps,
        net_tx_bps=sample.net_tx_bps,
        psi=sample.psi.fields() if sample.psi else {},
    )


def new_id(prefix: str, now: datetime) -> str:
    return f"{prefix}-{now:%Y%m%dT%H%M%S}-{uuid.uuid4().hex[:6]}"


def imbalance_of(snapshot: Snapshot, policy: Policy | None) -> tuple[float, float, float]:
    """(imbalance, max CPU load, max memory load) of the active hosts, as defined in
    :mod:`balancer.optimizer.metrics` (weighted mean of per-resource standard deviations)."""
    loads = snapshot.loads()
    active = [h.name for h in snapshot.hosts if h.state is HostState.ACTIVE]
    cpu = [loads[h].cpu_load for h in active]
    mem = [loads[h].memory_load for h in active]
    w_cpu, w_mem = (policy.balance.cpu, policy.balance.memory) if policy else (1.0, 1.0)
    total = max(w_cpu, 0.0) + max(w_mem, 0.0)
    if total <= 0:
        w_cpu = w_mem = total = 1.0
    imb = (max(w_cpu, 0.0) * stddev(cpu) + max(w_mem, 0.0) * stddev(mem)) / total
    return imb, max(cpu, default=0.0), max(mem, default=0.0)


#: a policy file modified less than this long ago may be half written (an editor or a shell
#: redirection truncates the file, then writes it): the reload waits until the files settle
POLICY_SETTLE_S = 1.0


def _policy_files(path: Path) -> list[Path]:
    return sorted([*path.glob("*.yaml"), *path.glob("*.yml")]) if path.is_dir() else [path]


def _settling(path: Path, now: float) -> bool:
    """Whether a policy file (or the directory: a file added, removed, renamed) was modified
    less than POLICY_SETTLE_S ago. A modification time in the future (a skewed clock on a
    shared file system) never holds a reload back."""
    for p in [path, *_policy_files(path)] if path.is_dir() else [path]:
        try:
            age = now - p.stat().st_mtime
        except OSError:
            continue
        if 0 <= age < POLICY_SETTLE_S:
            return True
    return False


def _fingerprint(path: Path) -> str:
    h = hashlib.sha256()
    for f in _policy_files(path):
        h.update(f.name.encode())
        try:  # never blocks on a FIFO in the policy directory (balancer.inputs)
            h.update(read_bytes(f, POLICY))
        except InputError as exc:
            h.update(str(exc).encode())
    return h.hexdigest()


@dataclass(slots=True)
class _PolicyState:
    policy: Policy | None = None
    fingerprint: str | None = None
    loaded_at: datetime | None = None
    error: str | None = None
    error_at: datetime | None = None


class Service:
    """The long-running balancer. Thread-safe: jobs, the API and the executor call into it."""

    def __init__(
        self,
        *,
        settings: Settings,
        port: HypervisorPort,
        planner: PlannerPort,
        executor: ExecutorPort,
        store: ServiceStore,
        audit: AuditPort,
        clock: Clock,
        demand: Demand | None = None,
        backend_name: str = "simulated",
        forecasts: ForecastSource | None = None,
    ) -> None:
        self.settings = settings
        self.port = port
        self.planner = planner
        self.executor = executor
        self.store = store
        self.audit = audit
        self.clock = clock
        self.demand = demand or DemandSource()
        self.backend_name = backend_name
        #: the demand history and forecaster (predictive balancing); None keeps no history
        self.forecasts = forecasts
        self.policy_path = Path(settings.policy)
        self._lock = threading.RLock()  # decisions: collect, balance, maintenance
        self._pol = _PolicyState()
        self._raw: Snapshot | None = None
        self._base: Snapshot | None = None  # with the demand figures, before the overlay
        self._snap: Snapshot | None = None
        #: collects at once on the backend's lifecycle events (libvirt), see service/events.py
        self.event_watch = EventWatch(port, self.collect)
        #: asks for a balance cycle at once (the runtime's scheduler sets it)
        self.replan_soon: Callable[[], None] | None = None
        #: per VM copy factors learned from finished migrations, see service/copycost.py
        self.copy_cost = CopyCostModel()
        self._stale_detail: str | None = None
        self._last_collect: datetime | None = None
        self._collect_error: str | None = None
        self._last_plan_id: str | None = None
        self._stopping = False
        self._agent: dict[str, HostSample] = {}  # the newest agent sample per host
        #: maintenance request id -> maintenance ticks in a row without progress (a restart
        #: starts again from the request's recorded stuck flag)
        self._evac_idle: dict[int, int] = {}
        self._breaker_watch = BreakerWatch()
        self._breaker_lock = threading.Lock()  # one evaluation at a time: changes stay in order
        #: host health facts and signals (service/hostwatch.py), evaluated by watch_health
        self._host_watch = HW.HostWatch(clock.now())
        self._host_signals: dict[str, tuple[HW.Raised, ...]] = {}
        self._health_lock = threading.Lock()  # the facts (the executor's thread adds to them)
        self._health_turn = threading.Lock()  # one evaluation at a time, see watch_health
        #: observers (metrics): called with (name, seconds)
        self.timings: list[Callable[[str, float], None]] = []
        #: called with every newly applied policy (the executor's limits follow it)
        self.policy_listeners: list[Callable[[Policy], None]] = []
        #: high availability (balancer.ha): does this instance lead the cluster now? A standby
        #: reads the cluster and takes requests into the database, but collects, evacuates and
        #: runs tasks only as leader
        self.leading: Callable[[], bool] = lambda: True
        #: high availability: each cluster's leader as this instance sees it (status)
        self.cluster_status: Callable[[], Sequence[Any]] = lambda: ()
        #: rolling maintenances (service/rolling.py), advanced after each maintenance tick
        self.rolling = RollingMaintenance(self, self._lock)

    # ------------------------------------------------------------------------------------------
    # lifecycle
    # ------------------------------------------------------------------------------------------
    def start(self) -> None:
        """Load the policy (a bad one at start is an error), recover the executor, collect."""
        self.reload_policy(initial=True)
        self.executor.start()
        self.audit.record(
            at=self.clock.now(),
            kind="service",
            who=SYSTEM,
            result="started",
            detail=f"backend {self.backend_name}; policy "
            + (self._pol.policy.digest[:12] if self._pol.policy else "-"),
        )
        try:
            self.collect()
        except BalancerError as exc:
            log.warning("first collect failed: %s", exc)
        self.event_watch.start()

    @property
    def stopping(self) -> bool:
        return self._stopping

    def begin_stop(self, *, who: str = SYSTEM, signal_name: str = "") -> None:
        """Stop taking new work (first signal)."""
        if self._stopping:
            return
        self._stopping = True
        self.executor.stop_taking_work()
        self.audit.record(
            at=self.clock.now(),
            kind="service",
            who=who,
            result="stopping",
            detail=f"{signal_name or 'stop'}: no new work; waiting for migrations in flight",
        )
        log.info("stopping: no new work; draining migrations in flight")

    def drain(self, timeout_s: float) -> bool:
        ok = self.executor.wait_idle(timeout_s)
        self.audit.record(
            at=self.clock.now(),
            kind="service",
            who=SYSTEM,
            result="drained" if ok else "drain_timeout",
            detail="" if ok else f"migrations still in flight after {timeout_s:.0f} s",
        )
        return ok

    def abort_in_flight(self, reason: str) -> None:
        self.audit.record(
            at=self.clock.now(), kind="service", who=SYSTEM, result="aborting", detail=reason
        )
        log.warning("aborting migrations in flight: %s", reason)
        self.executor.abort_all(reason=reason)

    def close(self) -> None:
        self.event_watch.stop()
        self.audit.record(at=self.clock.now(), kind="service", who=SYSTEM, result="stopped")
        self.executor.close()
        self.demand.close()  # the last InfluxDB flush
        if self.forecasts is not None:
            self.forecasts.close()  # the last demand-history flush

    # ------------------------------------------------------------------------------------------
    # policy
    # ------------------------------------------------------------------------------------------
    @property
    def policy(self) -> Policy | None:
        return self._pol.policy

    def automation(self) -> Automation | None:
        override = self.store.flag(AUTOMATION_FLAG)
        if override is not None:
            return Automation(str(override["value"]))
        return self._pol.policy.automation if self._pol.policy else None

    def reload_policy(self, *, initial: bool = False) -> bool:
        """Load the policy files when they changed. A bad file is refused (log, API, audit) and
        the last good policy stays in force. Returns True when a new policy was applied.

        Any failure refuses the files, not only a PolicyError: an exception of another class
        is a bug of the loader or of lint, but it must still show as ``last_error`` (API,
        dashboard) with the last good policy kept, and its traceback goes to the log once."""
        try:
            fp = _fingerprint(self.policy_path)
        except OSError as exc:
            fp = f"error:{exc}"
        if fp == self._pol.fingerprint:
            return False
        if not initial and _settling(self.policy_path, time.time()):
            # being written: a half-written file can be valid YAML with rules missing, and it
            # would be in force until the next look. Look again at the next poll.
            return False
        now = self.clock.now()
        try:
            policy = _load_policy(self.policy_path)
            errors = [str(f) for f in lint(policy, self._snap) if f.severity is Severity.ERROR]
            if errors:
                raise PolicyError("; ".join(errors), path=str(self.policy_path))
            if policy.goal is Goal.CONSOLIDATE:
                raise PolicyError(
                    "consolidate is not carried out by the service yet (only `balancer "
                    "simulate` packs hosts and powers them off); use goal: balance",
                    path=str(self.policy_path),
                    field="goal",
                )
        except Exception as exc:
            self._pol.fingerprint = fp
            if initial and self._pol.policy is None:
                if isinstance(exc, BalancerError):
                    raise
                raise PolicyError(
                    f"cannot load the policy: {type(exc).__name__}: {exc}",
                    path=str(self.policy_path),
                ) from exc
            expected = isinstance(exc, PolicyError)
            # an unexpected exception's text may quote the input at length (5000 digits)
            text = (
                str(exc) if expected else f"{self.policy_path}: {type(exc).__name__}: {exc}"[:2000]
            )
            self._pol.error, self._pol.error_at = text, now
            kept = self._pol.policy.digest[:12] if self._pol.policy else "none"
            log.error(
                "policy refused, keeping %s: %s",
                kept,
                text,
                exc_info=None if expected else exc,
                extra=fields(reason="policy_refused"),
            )
            self.audit.record(
                at=now,
                kind="policy",
                who=SYSTEM,
                result="refused",
                error=text,
                detail=f"kept policy {kept}",
                policy_digest=self._pol.policy.digest if self._pol.policy else None,
            )
            return False
        try:
            unchanged = _fingerprint(self.policy_path) == fp
        except OSError:
            unchanged = False
        if not unchanged and not initial:
            return False  # changed while it was read: the next poll loads what it became
        self._pol.fingerprint = fp
        old = self._pol.policy
        self._pol.policy, self._pol.loaded_at = policy, now
        self._pol.error = self._pol.error_at = None
        for listener in self.policy_listeners:
            listener(policy)
        if old is None or old.digest != policy.digest:
            log.info(
                "policy %s in force (automation %s, threshold %d)",
                policy.digest[:12],
                policy.automation.value,
                policy.threshold,
                extra=fields(policy_digest=policy.digest),
            )
            self.audit.record(
                at=now,
                kind="policy",
                who=SYSTEM,
                result="applied",
                policy_digest=policy.digest,
                detail=f"from {self.policy_path}; replaced {old.digest[:12] if old else 'none'}",
            )
        return True

    def validate_policy(self, files: Mapping[str, str]) -> ValidationView:
        """Check candidate policy files without applying them. ``files`` maps a file name of
        the policy directory (or the policy file) to its new text; other files of the
        directory are taken as they are."""
        with tempfile.TemporaryDirectory(prefix="policy-candidate-") as tmp:
            root = Path(tmp)
            if self.policy_path.is_dir():
                for f in [*self.policy_path.glob("*.yaml"), *self.policy_path.glob("*.yml")]:
                    shutil.copy(f, root / f.name)
            elif self.policy_path.exists():
                shutil.copy(self.policy_path, root / self.policy_path.name)
            for name, text in files.items():
                if not name or "/" in name or "\\" in name or name.startswith("."):
                    raise InputError(f"files: {name!r} is not a plain file name")
                if not name.endswith((".yaml", ".yml")):
                    raise InputError(f"files: {name!r}: policy files end in .yaml or .yml")
                (root / name).write_text(text)
            try:
                policy = _load_policy(root)
            except PolicyError as exc:
                msg = str(exc).replace(str(root) + "/", "")
                return ValidationView(ok=False, digest=None, error=msg, findings=[])
        findings = lint(policy, self._snap)
        errors = [str(f) for f in findings if f.severity is Severity.ERROR]
        return ValidationView(
            ok=not errors,
            digest=policy.digest,
            error="; ".join(errors) or None,
            findings=[str(f) for f in findings],
        )

    def policy_view(self) -> PolicyView:
        p = self._pol.policy
        override = self.store.flag(AUTOMATION_FLAG)
        return PolicyView(
            digest=p.digest if p else None,
            path=str(self.policy_path),
            automation=p.automation.value if p else None,
            automation_override=str(override["value"]) if override else None,
            threshold=p.threshold if p else None,
            cooldown_minutes=p.cooldown_minutes if p else None,
            cooldown_max_minutes=p.cooldown_max_minutes if p else None,
            loaded_at=self._pol.loaded_at,
            last_error=self._pol.error,
            last_error_at=self._pol.error_at,
            soft_rules=p.soft_rules.value if p else None,
        )

    def set_automation(self, level: Automation | None, *, who: str) -> None:
        """Override the policy's automation level (None: back to the policy's)."""
        now = self.clock.now()
        self.store.set_flag(AUTOMATION_FLAG, level.value if level else None, who=who, at=now)
        self.audit.record(
            at=now,
            kind="automation",
            who=who,
            result=level.value if level else "policy",
            detail="override" if level else "override removed; the policy's level applies",
        )
        log.info("automation set to %s", level.value if level else "policy", extra=fields(user=who))

    # ------------------------------------------------------------------------------------------
    # collect
    # ------------------------------------------------------------------------------------------
    def overlay(self, raw: Snapshot) -> Snapshot:
        """The port's snapshot with the administrative host states (maintenance) applied."""
        states = self.store.host_states()
        if not states:
            return raw
        hosts = []
        for h in raw.hosts:
            s = states.get(h.name)
            if s is not None and h.state is not HostState.UNREACHABLE:
                hosts.append(h.with_state(HostState(s)))
            else:
                hosts.append(h)
        return replace(raw, hosts=tuple(hosts))

    def collect(self) -> Snapshot:
        """One collect cycle: read the cluster, note moves, expire recommendations, advance
        maintenance."""
        t0 = time.monotonic()
        with self._lock:
            # a breaker that opened since the last look is audited before this collect may close
            # it: the timer can fall behind, but no opening goes unrecorded (before the first
            # collect there are no metrics yet, which is no news)
            if self._last_collect is not None:
                self.watch_breakers()
            now = self.clock.now()
            try:
                raw = self.port.snapshot()
            except HypervisorError as exc:
                self._collect_error = str(exc)
                log.warning("collect failed: %s", exc)
                raise
            base, stale = self.demand.observe(raw, now)
            snap = self.overlay(base)
            previous = self._raw
            self._raw, self._base, self._snap = raw, base, snap
            self._stale_detail = stale
            self._last_collect, self._collect_error = now, None
            if not self.leading():  # a standby: read the cluster, write nothing
                self._raw = None
                return snap
            if previous is not None:
                self._note_moves(previous, raw, now)
            with self._health_lock:
                for h in raw.hosts:
                    if h.state is HostState.UNREACHABLE:
                        self._host_watch.connection_failed(h.name, now)
            if self.forecasts is not None:
                self.forecasts.record(raw, now)
            imb, mcpu, mmem = imbalance_of(snap, self._pol.policy)
            self.store.add_history(
                HistoryPoint(at=now, imbalance=imb, max_cpu_load=mcpu, max_memory_load=mmem),
                keep_since=now - timedelta(hours=self.settings.service.history_h),
            )
            self._expire_recommendations(snap, now)
            self._advance_maintenance(snap, now)
            self.rolling.advance()
        self.watch_breakers()
        self.watch_health()
        self._timed("collect", time.monotonic() - t0)
        return snap

    def _timed(self, name: str, seconds: float) -> None:
        for cb in self.timings:
            cb(name, seconds)

    def _note_moves(self, before: Snapshot, after: Snapshot, now: datetime) -> None:
        moved = D.moved_vms(before, after)
        if not moved:
            return
        # the reason of the request that made the move: matched on VM, source and target, in
        # any state but a failed one (the collect can see a VM on its new host before the
        # executor has marked the request succeeded; the move was then recorded "external"
        # and had no cooldown, and the next plans moved the VM straight back)
        reasons: dict[tuple[str, str, str], str] = {}
        for m in self.executor.migrations(limit=500):
            if m.state in (MigrationState.FAILED, MigrationState.ABORTED, MigrationState.SKIPPED):
                continue
            reasons.setdefault((m.vm, m.source, m.target), m.reason)
        self.store.add_moves(
            [
                MoveRecord(
                    at=now,
                    vm=vm,
                    source=src,
                    target=dst,
                    reason=reasons.get((vm, src, dst), "external").split(":")[0],
                )
                for vm, src, dst in moved
            ]
        )
        outside = []
        for vm, src, dst in moved:
            log.info("%s moved %s -> %s", vm, src, dst, extra=fields(vm=vm))
            if (vm, src, dst) not in reasons:
                outside.append((vm, src, dst))
                self.audit.record(
                    at=now,
                    kind="external_migration",
                    who="external",
                    result="seen",
                    vm=vm,
                    source=src,
                    target=dst,
                    detail="moved outside the balancer (not by any of its requests)",
                )
        if outside:
            self._supersede_broken_plans(outside, now)

    def _supersede_broken_plans(self, outside: list[tuple[str, str, str]], now: datetime) -> None:
        """A move made outside the balancer breaks the premises of every plan with work not
        started yet (queued requests, pending recommendations) on the moved VM or on either of
        its hosts: such a plan is superseded at once (its queued requests finish
        ``superseded``, its recommendations expire, both audited) and a new plan is asked for
        (``replan_soon``) instead of waiting for the next balance cycle."""
        vms = {vm for vm, _, _ in outside}
        hosts = {h for _, src, dst in outside for h in (src, dst)}
        why = "superseded: " + ", ".join(
            f"{vm} moved {a} -> {b} outside the balancer" for vm, a, b in outside
        )

        def touches(vm: str, source: str, target: str) -> bool:
            return vm in vms or source in hosts or target in hosts

        broken = {
            m.plan_id
            for m in self.executor.migrations(active_only=True, limit=1000)
            if m.plan_id and m.state is MigrationState.QUEUED and touches(m.vm, m.source, m.target)
        }
        pending = self.store.recommendations(state=PENDING, limit=10000)
        broken |= {r.plan_id for r in pending if r.plan_id and touches(r.vm, r.source, r.target)}
        for plan_id in sorted(broken):
            ids = self.executor.supersede_queued(plan_id, why)
            recs = [r for r in pending if r.plan_id == plan_id]
            for r in recs:
                self.store.decide_recommendation(r.id, state=EXPIRED, at=now, who=None, note=why)
            self.audit.record(
                at=now,
                kind="plan",
                who=SYSTEM,
                result="superseded",
                plan_id=plan_id,
                detail=f"{why} ({len(ids)} queued moves, {len(recs)} recommendations)",
            )
            log.info("plan %s %s", plan_id, why, extra=fields(plan_id=plan_id))
        if broken and self.replan_soon is not None:
            self.replan_soon()

    def _refresh_overlay(self) -> None:
        """Apply changed administrative host states to the current snapshot at once."""
        if self._base is not None:
            self._snap = self.overlay(self._base)

    def snapshot(self) -> Snapshot:
        if self._snap is None:
            try:
                return self.collect()
            except HypervisorError as exc:
                raise UnavailableError(f"no snapshot of the cluster yet: {exc}") from exc
        return self._snap

    def ingest_host_sample(self, sample: HostSample) -> None:
        """A sample from a host's agent (``balancer agent``): fed to the sample window, where it
        stands for the whole host's use while fresh (unmanaged load beyond the VMs), and shown
        in the status with its pressure stall information. A host the cluster does not have is
        refused, naming it."""
        snap = self.snapshot()
        if sample.host not in snap.host_map():
            raise InputError(f"host: no host {sample.host!r} in the cluster", subject="host")
        self.demand.ingest_sample(sample)
        with self._lock:
            prev = self._agent.get(sample.host)
            if prev is None or prev.time <= sample.time:
                self._agent[sample.host] = sample
        with self._health_lock:
            self._host_watch.sampled(sample.host, *HW.points_of(sample))

    # ------------------------------------------------------------------------------------------
    # holds and breakers
    # ------------------------------------------------------------------------------------------
    def _active_migrations(self) -> list[Migration]:
        return self.executor.migrations(active_only=True, limit=10000)

    def holds(self) -> dict[str, D.Hold]:
        now = self.clock.now()
        policy = self._pol.policy or Policy()
        cooldown = timedelta(minutes=policy.cooldown_minutes)
        cooldown_max = timedelta(minutes=policy.cooldown_max_minutes)
        window = timedelta(hours=self.settings.service.pingpong_window_h)
        span = D.cooldown_history(base=cooldown, cap=cooldown_max, pingpong_window=window)
        moves = self.store.moves_since(now - span)
        # a migration that ended since the last collect is not in the snapshot yet, nor in the
        # move history (a collect notes moves): its VM is held as if still in flight, or a
        # cycle on the older snapshot would plan the same move again (seen: a plan that stops
        # at its target left the next cycle just outside it, on the view before the move)
        since = self._last_collect
        unseen = (
            [
                m.vm
                for m in self.executor.migrations(limit=500)
                if m.state is MigrationState.SUCCEEDED and m.updated_at >= since
            ]
            if since is not None
            else []
        )
        return D.holds(
            moves,
            now=now,
            cooldown=cooldown,
            cooldown_max=cooldown_max,
            pingpong_window=window,
            in_flight=[m.vm for m in self._active_migrations()] + unseen,
        )

    def breakers(self) -> D.Breakers:
        now = self.clock.now()
        b = self.settings.breakers
        stale_after = timedelta(seconds=b.stale_after_s or 3 * self.settings.intervals.collect_s)
        failures = [
            m.updated_at
            for m in self.executor.migrations(limit=200)
            if m.state is MigrationState.FAILED
        ]
        pause = self.store.flag(PAUSE_FLAG)
        brk = D.breakers(
            now=now,
            pause=dict(pause["value"]) if pause else None,
            last_collect=self._last_collect,
            stale_after=stale_after,
            stale_detail=self._stale_detail,
            failures=failures,
            failure_limit=b.failure_limit,
            failure_window=timedelta(seconds=b.failure_window_s),
            allow_mandatory=b.allow_mandatory
            and not (pause is not None and not bool(pause["value"].get("allow_mandatory", True))),
        )
        if self._pol.policy is None:
            brk = D.Breakers(
                trips=(*brk.trips, D.Trip(reason=D.BreakerReason.NO_POLICY, detail="no policy")),
                allow_mandatory=False,
            )
        return brk

    def watch_breakers(self) -> None:
        """Audit every breaker that opened or closed since the last evaluation, in the order it
        happened (``balancer.service.health``). Runs on a timer of its own, and after a collect
        and a pause or resume; a standby evaluates nothing and writes nothing (its writes would
        be fenced): the leader reports."""
        if not self.leading():
            return
        with self._breaker_lock:
            now = self.clock.now()
            changes = self._breaker_watch.changes(
                self.breakers(), now=now, last_collect=self._last_collect
            )
            for ch in changes:
                if ch.opened:
                    log.warning("automation paused: %s", ch.text(), extra=fields(reason="breaker"))
                else:
                    log.info("breaker closed: %s", ch.text(), extra=fields(reason="breaker"))
                self.audit.record(
                    at=now,
                    kind="breaker",
                    who=SYSTEM,
                    result=ch.result,
                    detail=f"{ch.text()} (at {ch.at.isoformat(timespec='milliseconds')})",
                )

    def watch_health(self) -> None:
        """Evaluate the hosts' health signals (``balancer.service.hostwatch``): audit each
        signal raised or cleared, quarantine a host that crosses the policy's limits (within
        the cap; a held one is audited once), release a host the service quarantined once it
        has been healthy for the policy's period. After every collect and on the breakers'
        timer; the leader only. One evaluation at a time: while one runs (and acts), another
        caller returns at once, so that two never quarantine past the cap."""
        if not self.leading() or self._stopping:
            return
        if not self._health_turn.acquire(blocking=False):
            return
        try:
            self._watch_health()
        finally:
            self._health_turn.release()

    def _watch_health(self) -> None:
        snap, policy = self._snap, self._pol.policy
        if snap is None or policy is None:
            return
        health = policy.health
        now = self.clock.now()
        with self._health_lock:
            signals, changes = self._host_watch.evaluate(
                [h.name for h in snap.hosts], health, now=now
            )
            self._host_signals = signals
            verdict = HW.decide(
                self._health_hosts(snap, policy, signals), _demand(snap), health, now=now
            )
            held = self._host_watch.newly_held(verdict.held)
        for ch in changes:
            self.audit.record(
                at=now,
                kind="host_health",
                who=SYSTEM,
                result="raised" if ch.raised else "cleared",
                source=ch.host,
                reason=ch.signal.value,
                detail=ch.detail,
            )
        for h in held:
            self.audit.record(
                at=now,
                kind="quarantine",
                who=SYSTEM,
                result="held",
                source=h.host,
                reason=h.signal.signal.value,
                detail=f"would quarantine on {h.signal.text()}; held: {h.why}",
            )
            log.warning("%s not quarantined: %s", h.host, h.why, extra=fields(host=h.host))
        try:
            for q in verdict.quarantine:
                self.quarantine(q.host, who=SYSTEM, reason=q.reason())
            for r in verdict.release:
                self.release_quarantine(r.host, who=SYSTEM, reason=r.reason())
        except BalancerError as exc:  # e.g. the host entered maintenance meanwhile
            log.warning("health: %s", exc)

    def _health_hosts(
        self, snap: Snapshot, policy: Policy, signals: Mapping[str, tuple[HW.Raised, ...]]
    ) -> list[HW.HostInfo]:
        admin = self.store.host_admin()
        maintenance = {
            r.host for r in self.store.maintenance_requests(active_only=True, limit=1000)
        }
        out: list[HW.HostInfo] = []
        for h in snap.hosts:
            state, who, since = admin.get(h.name, (HostState.ACTIVE.value, "", None))
            if h.name in maintenance or HostState(state).must_evacuate:
                cond = HW.HostCondition.MAINTENANCE
            elif state == HostState.QUARANTINED.value:
                cond = (
                    HW.HostCondition.QUARANTINED_BY_HEALTH
                    if who == SYSTEM
                    else HW.HostCondition.QUARANTINED
                )
            else:
                cond = HW.HostCondition.ACTIVE
            out.append(
                HW.HostInfo(
                    name=h.name,
                    condition=cond,
                    raised=signals.get(h.name, ()),
                    unhealthy_at=self._host_watch.unhealthy_at(h.name, since),
                    cpu_cores=h.cpu_cores * (1 - policy.headroom.cpu),
                    memory_mib=h.memory_mib * (1 - policy.headroom.memory),
                    accepts_vms=h.state.accepts_vms,
                )
            )
        return out

    def pause(self, *, who: str, reason: str, allow_mandatory: bool = True) -> None:
        now = self.clock.now()
        self.store.set_flag(
            PAUSE_FLAG,
            {"who": who, "reason": reason, "allow_mandatory": allow_mandatory},
            who=who,
            at=now,
        )
        self.audit.record(
            at=now,
            kind="pause",
            who=who,
            result="paused",
            detail=f"{reason or 'no reason'}; mandatory moves "
            + ("continue" if allow_mandatory else "stop too"),
        )
        self.watch_breakers()

    def resume(self, *, who: str) -> None:
        now = self.clock.now()
        self.store.set_flag(PAUSE_FLAG, None, who=who, at=now)
        self.audit.record(at=now, kind="pause", who=who, result="resumed")
        self.watch_breakers()

    # ------------------------------------------------------------------------------------------
    # balance
    # ------------------------------------------------------------------------------------------
    def _maintenance_hosts(self) -> set[str]:
        return {h for h, s in self.store.host_states().items() if HostState(s).must_evacuate}

    def balance(self, *, who: str = SYSTEM) -> PlanView:
        """One balance cycle: plan on the current snapshot, then execute, recommend or hold
        each move according to the automation level and the breakers."""
        if self._stopping:
            raise UnavailableError("the service is stopping")
        t0 = time.monotonic()
        with self._lock:
            snap = self.snapshot()
            policy = self._pol.policy
            if policy is None:
                raise UnavailableError("no policy in force")
            automation = self.automation() or policy.automation
            now = self.clock.now()
            plan_id = new_id("plan", now)
            active = self._active_migrations()
            busy = [m for m in active if m.priority == Priority.BALANCE.value]
            brk = self.breakers()
            holds = self.holds()
            evacuating = self._maintenance_hosts()
            if busy:
                note = f"skipped: {len(busy)} balance migrations of an earlier plan still running"
                return self._record_empty(plan_id, now, snap, policy, automation, note)
            if self._stale_detail or (brk.open and not brk.allow_mandatory):
                pass  # still plan: mandatory moves may continue, the rest is held and shown
            outlook = self._outlook(snap, policy, now)
            plan = self.planner.plan(
                self.copy_cost.apply(snap),
                policy,
                held=frozenset(holds),
                seed=self.settings.service.plan_seed,
                time_limit_s=self.settings.service.plan_time_limit_s,
                outlook=outlook,
            )
            in_flight = {m.vm for m in active}
            # evacuations belong to the maintenance requests; in-flight VMs to the executor
            moves = [m for m in plan.moves if m.vm not in in_flight and m.source not in evacuating]
            parts = D.split_plan(replace(plan, moves=tuple(moves)), automation, brk)
            window = window_state(policy, now)
            if window.held:
                parts = D.hold_balancing(parts)
                self._note_window(window, now, len(parts[D.Disposition.HOLD]))
            elif self.store.flag(WINDOW_FLAG) is not None:
                self.store.set_flag(WINDOW_FLAG, None, who=SYSTEM, at=now)
            execute = parts[D.Disposition.EXECUTE]
            recommend = parts[D.Disposition.RECOMMEND]
            held = parts[D.Disposition.HOLD]
            note = "; ".join(n for n in (brk.explain() if brk.open else "", window.detail) if n)
            self._record_plan(
                plan_id, now, "balance", plan, policy, automation, execute, recommend, held, note
            )
            self._last_plan_id = plan_id
            if execute:
                self.executor.submit(
                    [MoveRequest.from_move(m) for m in execute],
                    who=f"{SYSTEM} {plan_id}" if who == SYSTEM else who,
                    plan_id=plan_id,
                    snapshot_digest=plan.snapshot_digest or snap.digest(),
                    policy_digest=policy.digest,
                    made_at=now,
                )
            self._sync_recommendations(plan_id, snap, policy, recommend, now)
            log.info(
                "plan %s: %s, %d moves (%d executed, %d recommended, %d held), "
                "imbalance %.4f -> %.4f",
                plan_id,
                plan.status.value,
                len(moves),
                len(execute),
                len(recommend),
                len(held),
                plan.before.imbalance,
                plan.after.imbalance,
                extra=fields(plan_id=plan_id, policy_digest=policy.digest),
            )
            for m in execute:
                log.info(
                    "execute %s %s -> %s (%s)",
                    m.vm,
                    m.source,
                    m.target,
                    m.reason_label,
                    extra=fields(plan_id=plan_id, vm=m.vm, reason=m.reason_label),
                )
        self._timed("balance", time.monotonic() - t0)
        self._timed("solve", plan.solve_seconds)
        view = self.plan(plan_id)
        assert view is not None
        return view

    def _note_window(self, window: WindowState, now: datetime, held: int) -> None:
        """Audit a balancing window's hold once: at the first cycle it holds."""
        seen = self.store.flag(WINDOW_FLAG)
        if seen is not None and seen["value"] == window.key:
            return
        self.store.set_flag(WINDOW_FLAG, window.key, who=SYSTEM, at=now)
        self.audit.record(
            at=now,
            kind="window",
            who=SYSTEM,
            result="held",
            detail=f"balancing held: {window.detail}; {held} moves held this cycle; "
            "mandatory moves continue",
        )
        log.info("balancing held: %s", window.detail, extra=fields(reason="window"))

    def on_migration_result(self, r: MigrationResult) -> None:
        """A finished migration (the executor's hook): a succeeded one teaches the copy-cost
        model what the VM really copies (libvirt's figure against the model's); a failed one is
        a health fact of both its hosts."""
        if r.result is Result.FAILED:
            with self._health_lock:
                self._host_watch.migration_failed(
                    (r.source, r.target), r.ended_at or self.clock.now()
                )
        if r.result is not Result.SUCCEEDED or not r.data_copied_mib:
            return
        snap, policy = self._snap, self._pol.policy
        if snap is None or policy is None:
            return
        vm = snap.vm_map().get(r.vm)
        if vm is None:
            return
        error = self.copy_cost.learn(
            vm, r.data_copied_mib, policy.migration.bandwidth_mib_s, r.duration_s
        )
        if error is not None:
            log.info(
                "%s copied %.2f GiB; the cost model's error %.0f%%, its copy factor now %.2f",
                r.vm,
                r.data_copied_mib / 1024,
                100 * error,
                self.copy_cost.factor(r.vm),
                extra=fields(vm=r.vm),
            )

    def _outlook(self, snap: Snapshot, policy: Policy, now: datetime) -> Outlook | None:
        """The forecast the cycle plans against (None: reactive, or no history kept)."""
        if self.forecasts is None:
            return None
        try:
            view = self.forecasts.outlook(snap, policy.predictive, now)
        except BalancerError as exc:  # a forecast that cannot be made: plan on the present
            log.warning("forecast failed, planning on the present demand: %s", exc)
            return None
        if view is not None:
            self._timed("forecast", self.forecasts.last_cpu_s)
        return view

    def forecast_view(self) -> ForecastView:
        """The last balance cycle's forecast: per host the expected peak, per VM the demand
        planned against (``GET /api/v1/forecast``)."""
        with self._lock:
            policy = self._pol.policy
            view = self.forecasts.last if self.forecasts is not None else None
            snap = self._snap
            stats = self.forecasts.history.stats() if self.forecasts is not None else None
        present = {v.name: v.cpu_used_cores for v in snap.vms} if snap else {}
        return ForecastView(
            enabled=bool(policy and policy.predictive.enabled),
            history=self.forecasts is not None,
            history_series=stats.series if stats else 0,
            history_oldest=stats.oldest if stats else None,
            at=view.at if view else None,
            horizon_minutes=view.horizon_minutes if view else None,
            quantile=view.quantile if view else None,
            weight=view.weight if view else None,
            hosts=[host_forecast(h, view) for h in view.hosts] if view else [],
            vms=[
                VMForecastView(
                    name=name,
                    present_cores=round(present.get(name, 0.0), 4),
                    planned_cores=round(cores, 4),
                    peak_at=view.peak_at.get(name),
                )
                for name, cores in sorted(view.demand.items())
            ]
            if view
            else [],
            fallback_vms=len(view.fallback) if view else 0,
        )

    def vm_targets(self, vm: str) -> TargetsView:
        """The migration assistant for ``vm`` on the current snapshot under the policy in
        force, with the last predictive cycle's forecast per host (``GET
        /api/v1/vms/{vm}/targets``; see :mod:`balancer.service.assistant`)."""
        snap = self.snapshot()
        with self._lock:
            policy = self._pol.policy
            view = self.forecasts.last if self.forecasts is not None else None
            at = self._last_collect or self.clock.now()
        if policy is None:
            raise UnavailableError("no policy loaded yet")
        if vm not in snap.vm_map():
            raise NotFoundError(f"vm: no VM {vm!r} in the cluster")
        if view is not None and not policy.predictive.enabled:
            view = None
        return assistant_targets(snap, policy, vm, view, at=at)

    def place(
        self,
        new: NewVM,
        *,
        who: str,
        define_xml: str | None = None,
        start: bool = False,
        host: str | None = None,
    ) -> PlacementView:
        """Rank the hosts a new VM could start on (``POST /api/v1/placements``); with
        ``define_xml`` define it on ``host`` (default: the best) and, with ``start``, start it
        there, audited as ``placement``. A host the ranking rules out is refused (409)."""
        snap = self.snapshot()
        policy = self._pol.policy
        if policy is None:
            raise UnavailableError("no policy loaded yet")
        if new.name in snap.vm_map():
            raise ConflictError(f"vm: a VM named {new.name!r} exists already")
        view = place_new(snap, policy, new)
        if define_xml is None:
            return view
        define = getattr(self.port, "define_vm", None)
        if define is None:
            raise ConflictError(f"the {self.backend_name} backend cannot define VMs")
        ranked = [c.host for c in view.candidates]
        target = host or (ranked[0] if ranked else None)
        if target is None or target not in ranked:
            why = next((r for r in view.ruled_out if r.host == target), None)
            raise ConflictError(
                f"{new.name} cannot start on {target or 'any host'}"
                + (f": {why.reason} {why.detail}".rstrip() if why else ": no host can take it")
            )
        name = define(target, define_xml, start=start)
        if name != new.name:
            log.warning("placement of %s: the domain XML names %s", new.name, name)
        self.audit.record(
            at=self.clock.now(),
            kind="placement",
            who=who,
            result="started" if start else "defined",
            vm=name,
            target=target,
            detail=f"{new.vcpus} vCPUs, {new.memory_mib} MiB; ranked first: "
            + (ranked[0] if ranked else "-"),
        )
        with contextlib.suppress(BalancerError):
            self.collect()
        return replace(view, placed_on=target, started=start)

    def _record_empty(
        self,
        plan_id: str,
        now: datetime,
        snap: Snapshot,
        policy: Policy,
        automation: Automation,
        note: str,
    ) -> PlanView:
        imb, mcpu, mmem = imbalance_of(snap, policy)
        from balancer.plan import Metrics

        m = Metrics(
            imbalance=imb,
            cpu_stddev=0.0,
            memory_stddev=0.0,
            max_cpu_load=mcpu,
            max_memory_load=mmem,
        )
        plan = Plan(
            status=PlanStatus.BALANCED,
            moves=(),
            blocked=(),
            before=m,
            after=m,
            snapshot_digest=snap.digest(),
            policy_digest=policy.digest,
        )
        self._record_plan(plan_id, now, "balance", plan, policy, automation, [], [], [], note)
        log.info("plan %s %s", plan_id, note, extra=fields(plan_id=plan_id))
        view = self.plan(plan_id)
        assert view is not None
        return view

    def _record_plan(
        self,
        plan_id: str,
        now: datetime,
        kind: str,
        plan: Plan,
        policy: Policy,
        automation: Automation,
        execute: Sequence[Move],
        recommend: Sequence[Move],
        held: Sequence[Move],
        note: str,
    ) -> None:
        doc = plan_to_dict(plan)
        doc["executed"] = [m.vm for m in execute]
        doc["recommended"] = [m.vm for m in recommend]
        doc["held"] = [m.vm for m in held]
        doc["note"] = note
        self.store.add_plan(
            PlanRecord(
                id=plan_id,
                created_at=now,
                kind=kind,
                status=plan.status.value,
                snapshot_digest=plan.snapshot_digest,
                policy_digest=policy.digest,
                automation=automation.value,
                doc=doc,
            )
        )

    def plans(self, *, limit: int = 50) -> list[PlanView]:
        return [self._plan_view(r) for r in self.store.plans(limit=limit)]

    def plan(self, plan_id: str) -> PlanView | None:
        r = self.store.plan(plan_id)
        return None if r is None else self._plan_view(r)

    @staticmethod
    def _plan_view(r: PlanRecord) -> PlanView:
        d = r.doc
        return PlanView(
            id=r.id,
            created_at=r.created_at,
            kind=r.kind,
            status=r.status,
            automation=r.automation,
            snapshot_digest=r.snapshot_digest,
            policy_digest=r.policy_digest,
            imbalance_before=float(d.get("before", {}).get("imbalance", 0.0)),
            imbalance_after=float(d.get("after", {}).get("imbalance", 0.0)),
            solve_seconds=float(d.get("solve_seconds", 0.0)),
            moves=[
                PlannedMove(
                    vm=m["vm"],
                    source=m["source"],
                    target=m["target"],
                    step=int(m["step"]),
                    reason=m["reason"],
                    gain=float(m["gain"]),
                )
                for m in d.get("moves", [])
            ],
            blocked=[
                BlockedVM(
                    vm=b["vm"], reason=b["reason"], detail=b.get("detail", ""), rule=b.get("rule")
                )
                for b in d.get("blocked", [])
            ],
            executed=list(d.get("executed", [])),
            recommended=list(d.get("recommended", [])),
            held=list(d.get("held", [])),
            note=str(d.get("note", "")),
            violations=[ViolationView.of_doc(v) for v in d.get("violations", [])],
            soft_violations=[SoftViolationView.of_doc(s) for s in d.get("soft_violations", [])],
        )

    # ------------------------------------------------------------------------------------------
    # recommendations
    # ------------------------------------------------------------------------------------------
    def _sync_recommendations(
        self,
        plan_id: str,
        snap: Snapshot,
        policy: Policy,
        moves: Sequence[Move],
        now: datetime,
    ) -> None:
        pending = self.store.recommendations(state=PENDING, limit=10000)
        wanted = {(m.vm, m.source, m.target): m for m in moves}
        kept: set[tuple[str, str, str]] = set()
        for r in pending:
            key = (r.vm, r.source, r.target)
            if key in wanted and key not in kept:
                kept.add(key)
                continue
            self.store.decide_recommendation(
                r.id, state=EXPIRED, at=now, who=None, note=f"superseded by {plan_id}"
            )
        for key, m in wanted.items():
            if key in kept:
                continue
            rid = self.store.add_recommendation(
                at=now,
                plan_id=plan_id,
                vm=m.vm,
                source=m.source,
                target=m.target,
                reason=m.reason_label,
                gain=m.gain,
                snapshot_digest=snap.digest(),
                policy_digest=policy.digest,
                premise=D.premise(snap, m),
            )
            log.info(
                "recommend %s %s -> %s (%s, gain %.4f)",
                m.vm,
                m.source,
                m.target,
                m.reason_label,
                m.gain,
                extra=fields(plan_id=plan_id, vm=m.vm, recommendation_id=rid),
            )

    def _expire_recommendations(self, snap: Snapshot, now: datetime) -> None:
        ttl = timedelta(seconds=self.settings.service.recommendation_ttl_s)
        digest = self._pol.policy.digest if self._pol.policy else ""
        for r in self.store.recommendations(state=PENDING, limit=10000):
            why = D.premise_broken(snap, r.vm, r.target, r.premise)
            if not why and r.created_at + ttl < now:
                why = "older than the recommendation time-to-live"
            if not why and digest and r.policy_digest != digest:
                why = "the policy changed"
            if why:
                self.store.decide_recommendation(r.id, state=EXPIRED, at=now, who=None, note=why)
                log.info(
                    "recommendation %d expired: %s",
                    r.id,
                    why,
                    extra=fields(vm=r.vm, recommendation_id=r.id, plan_id=r.plan_id),
                )

    def recommendations(
        self, *, state: str | None = PENDING, limit: int = 200
    ) -> list[RecommendationView]:
        return [_rec_view(r) for r in self.store.recommendations(state=state, limit=limit)]

    def approve(self, rid: int, *, who: str) -> RecommendationView:
        if self._stopping:
            raise UnavailableError("the service is stopping")
        with self._lock:
            r = self.store.recommendation(rid)
            if r is None:
                raise NotFoundError(f"recommendation {rid}: no such recommendation")
            if r.state != PENDING:
                raise ConflictError(f"recommendation {rid} is {r.state}, not pending")
            now = self.clock.now()
            snap = self.snapshot()
            why = D.premise_broken(snap, r.vm, r.target, r.premise)
            if why:
                self.store.decide_recommendation(rid, state=EXPIRED, at=now, who=None, note=why)
                raise ConflictError(f"recommendation {rid} expired: {why}")
            if not self.store.decide_recommendation(rid, state=APPROVED, at=now, who=who):
                raise ConflictError(f"recommendation {rid} is no longer pending")
            reason, rule = _parse_reason(r.reason)
            req = MoveRequest(
                vm=r.vm,
                source=r.source,
                target=r.target,
                reason=reason,
                rule=rule,
                priority=Priority.for_reason(reason, rule),
                gain=r.gain,
            )
            ids = self.executor.submit(
                [req],
                who=who,
                plan_id=r.plan_id,
                snapshot_digest=r.snapshot_digest,
                policy_digest=r.policy_digest,
                made_at=now,
            )
            if ids:
                self.store.link_recommendation(rid, ids[0], at=now)
            self.audit.record(
                at=now,
                kind="recommendation",
                who=who,
                result="approved",
                vm=r.vm,
                source=r.source,
                target=r.target,
                plan_id=r.plan_id,
                reason=r.reason,
                policy_digest=r.policy_digest,
                detail=f"recommendation {rid}; migration {ids[0] if ids else '-'}",
            )
            log.info(
                "recommendation %d approved by %s",
                rid,
                who,
                extra=fields(vm=r.vm, plan_id=r.plan_id, recommendation_id=rid, user=who),
            )
        out = self.store.recommendation(rid)
        assert out is not None
        return _rec_view(out)

    def reject(self, rid: int, *, who: str, note: str = "") -> RecommendationView:
        r = self.store.recommendation(rid)
        if r is None:
            raise NotFoundError(f"recommendation {rid}: no such recommendation")
        now = self.clock.now()
        if not self.store.decide_recommendation(rid, state=REJECTED, at=now, who=who, note=note):
            raise ConflictError(f"recommendation {rid} is {r.state}, not pending")
        self.audit.record(
            at=now,
            kind="recommendation",
            who=who,
            result="rejected",
            vm=r.vm,
            source=r.source,
            target=r.target,
            plan_id=r.plan_id,
            reason=r.reason,
            detail=f"recommendation {rid}: {note or 'no note'}",
        )
        out = self.store.recommendation(rid)
        assert out is not None
        return _rec_view(out)

    # ------------------------------------------------------------------------------------------
    # migrations
    # ------------------------------------------------------------------------------------------
    def migrations(self, *, active_only: bool = False, limit: int = 200) -> list[MigrationView]:
        return [
            _mig_view(m) for m in self.executor.migrations(active_only=active_only, limit=limit)
        ]

    def request_migration(
        self, vm: str, target: str, *, priority: str = "normal", who: str
    ) -> MigrationView:
        if self._stopping:
            raise UnavailableError("the service is stopping")
        prio = MANUAL_PRIORITIES.get(priority)
        if prio is None:
            raise InputError(f"priority: {priority!r} is not one of high, normal, low")
        with self._lock:
            snap = self.snapshot()
            try:
                v = snap.vm(vm)
            except KeyError:
                raise NotFoundError(f"vm: no VM named {vm!r}") from None
            try:
                h = snap.host(target)
            except KeyError:
                raise NotFoundError(f"target: no host named {target!r}") from None
            if v.host == target:
                raise ConflictError(f"target: {vm} already runs on {target}")
            if not h.state.accepts_vms:
                raise ConflictError(f"target: host {target} is {h.state.value}")
            if not v.runs_on(h):
                missing = ", ".join(sorted(v.cpu_features - h.cpu_features))
                raise ConflictError(f"target: {target}'s CPU lacks {missing} needed by {vm}")
            if any(m.vm == vm for m in self._active_migrations()):
                raise ConflictError(f"vm: a migration of {vm} is already queued or running")
            now = self.clock.now()
            ids = self.executor.submit(
                [
                    MoveRequest(
                        vm=vm,
                        source=v.host,
                        target=target,
                        reason=MoveReason.MANUAL,
                        priority=prio,
                    )
                ],
                who=who,
                plan_id=None,
                snapshot_digest=snap.digest(),
                policy_digest=self._pol.policy.digest if self._pol.policy else "",
                made_at=now,
            )
            log.info(
                "manual migration %s -> %s (%s) by %s",
                vm,
                target,
                priority,
                who,
                extra=fields(vm=vm, user=who, migration_id=ids[0] if ids else None),
            )
        return self._migration(ids[0])

    def _migration(self, mid: int) -> MigrationView:
        for m in self.executor.migrations(limit=10000):
            if m.id == mid:
                return _mig_view(m)
        raise NotFoundError(f"migration {mid}: no such migration")

    def cancel_migration(self, mid: int, *, who: str) -> MigrationView:
        self._migration(mid)
        if not self.executor.cancel(mid, who=who):
            raise ConflictError(f"migration {mid} is already finished")
        return self._migration(mid)

    # ------------------------------------------------------------------------------------------
    # maintenance
    # ------------------------------------------------------------------------------------------
    def _evacuation_plan(self, snap: Snapshot, hosts: set[str], policy: Policy) -> Plan:
        """Plan only mandatory moves (threshold 1) with ``hosts`` being emptied."""
        s = snap
        for h in hosts:
            if s.host(h).state not in (HostState.UNREACHABLE,):
                s = s.with_host_state(h, HostState.ENTERING_MAINTENANCE)
        active = self._active_migrations()
        in_flight = frozenset(m.vm for m in active)
        # queued and running migrations are counted where they go: the room they will take is
        # taken (held at their source, they left their targets looking free, and an
        # evacuation entered right after another was planned onto room already promised)
        hosts_known = s.host_map()
        going = {m.vm: m.target for m in active if m.target in hosts_known}
        if going:
            s = s.with_placement(going)
        return self.planner.plan(
            s,
            replace(policy, threshold=1),
            held=in_flight,
            seed=self.settings.service.plan_seed,
            time_limit_s=self.settings.service.plan_time_limit_s,
        )

    def preflight(self, host: str) -> PreflightView:
        """Whether ``host`` can be emptied now (with every host already in maintenance), where
        each of its VMs would go and what blocks the others. Changes nothing."""
        with self._lock:
            snap = self.snapshot()
            policy = self._pol.policy
            if policy is None:
                raise UnavailableError("no policy in force")
            try:
                h = snap.host(host)
            except KeyError:
                raise NotFoundError(f"host: no host named {host!r}") from None
            others = sorted(self._maintenance_hosts() - {host})
            vms = {v.name for v in snap.vms_on(host)}
            if h.state is HostState.UNREACHABLE:
                return PreflightView(
                    host=host,
                    can_enter=False,
                    reason=f"host {host} is unreachable: its VMs cannot be migrated",
                    vms=len(vms),
                    moves=[],
                    blocked=[BlockedVM(vm=v, reason="unreachable") for v in sorted(vms)],
                    other_hosts_in_maintenance=others,
                    solve_seconds=0.0,
                )
            plan = self._evacuation_plan(snap, {host, *others}, policy)
        moves = [m for m in plan.moves if m.vm in vms or m.reason is MoveReason.TEMPORARY]
        blocked = [b for b in plan.blocked if b.vm in vms]
        reason = ""
        if plan.status is PlanStatus.INFEASIBLE:
            reason = "the rules conflict: " + ", ".join(plan.conflicts)
        elif blocked:
            reason = f"{len(blocked)} of {len(vms)} VMs cannot leave {host}: " + "; ".join(
                _blocked_text(b) for b in blocked[:5]
            )
            if others:
                reason += f" (with {', '.join(others)} in maintenance too)"
        elif len({m.vm for m in moves if m.vm in vms}) < len(vms):
            reason = (
                f"the plan moves only {len({m.vm for m in moves})} of {len(vms)} VMs in one cycle;"
                " the rest follow"
            )
        return PreflightView(
            host=host,
            can_enter=not blocked and plan.status is not PlanStatus.INFEASIBLE,
            reason=reason or f"all {len(vms)} VMs can leave {host}",
            vms=len(vms),
            moves=[_planned(m) for m in moves],
            blocked=[_blocked_view(b) for b in blocked],
            other_hosts_in_maintenance=others,
            solve_seconds=plan.solve_seconds,
        )

    def enter_maintenance(self, host: str, *, who: str, force: bool = False) -> MaintenanceView:
        """Put ``host`` into ``entering_maintenance`` and evacuate it; refused (with the
        preflight's reason) when its VMs cannot all leave, unless ``force``."""
        if self._stopping:
            raise UnavailableError("the service is stopping")
        with self._lock:
            if self.store.active_maintenance(host) is not None:
                raise ConflictError(f"host: {host} is already entering or in maintenance")
            try:
                pre = self.preflight(host)
            except PlanningError as exc:
                if not force:
                    raise
                # forced: the evacuation's own ticks retry the plan (and report it stuck)
                pre = PreflightView(
                    host=host,
                    can_enter=False,
                    reason=f"the preflight plan failed: {exc}",
                    vms=len(self.snapshot().vms_on(host)),
                    moves=[],
                    blocked=[],
                    other_hosts_in_maintenance=[],
                    solve_seconds=0.0,
                )
            if not pre.can_enter and not force:
                self.audit.record(
                    at=self.clock.now(),
                    kind="maintenance",
                    who=who,
                    result="refused",
                    source=host,
                    detail=pre.reason,
                )
                raise ConflictError(f"host {host} cannot enter maintenance: {pre.reason}")
            now = self.clock.now()
            snap = self.snapshot()
            original = sorted(v.name for v in snap.vms_on(host))
            # written before acted on: the request, the host's state, the audit record
            mid = self.store.add_maintenance(
                host=host, who=who, at=now, original_vms=original, state=EVACUATING
            )
            self.store.set_host_state(host, HostState.ENTERING_MAINTENANCE.value, who=who, at=now)
            self.audit.record(
                at=now,
                kind="maintenance",
                who=who,
                result="entering",
                source=host,
                detail=f"request {mid}: {len(original)} VMs to evacuate"
                + ("; forced despite: " + pre.reason if not pre.can_enter else ""),
            )
            log.info(
                "maintenance %d: %s entering maintenance (%d VMs) by %s",
                mid,
                host,
                len(original),
                who,
                extra=fields(host=host, user=who),
            )
            self._refresh_overlay()
            self._advance_maintenance(self.snapshot(), now)
        return self.maintenance_status(host)

    def quarantine(self, host: str, *, who: str, reason: str) -> StatusView:
        """Mark ``host`` failing or underperforming: it takes no VM and its VMs leave it as
        mandatory moves (run under ``partial`` and ``full`` automation, recommended under
        ``manual``), planned at once. Refused for a host in maintenance or unknown."""
        if self._stopping:
            raise UnavailableError("the service is stopping")
        with self._lock:
            snap = self.snapshot()
            if host not in snap.host_map():
                raise NotFoundError(f"host: no host {host!r} in the cluster")
            if self.store.active_maintenance(host) is not None:
                raise ConflictError(f"host: {host} is in maintenance; exit it first")
            now = self.clock.now()
            self.store.set_host_state(host, HostState.QUARANTINED.value, who=who, at=now)
            vms = len(snap.vms_on(host))
            self.audit.record(
                at=now,
                kind="quarantine",
                who=who,
                result="quarantined",
                source=host,
                detail=f"{reason or 'no reason given'}; {vms} VMs to move off",
            )
            log.warning("%s quarantined by %s: %s", host, who, reason, extra=fields(host=host))
            self._refresh_overlay()
        with contextlib.suppress(UnavailableError):
            self.balance(who=who)
        return self.status()

    def release_quarantine(self, host: str, *, who: str, reason: str = "") -> StatusView:
        """``host`` takes VMs again (nothing moves back by itself: balancing may use it). Its
        health facts until now no longer count (service/hostwatch.py)."""
        with self._lock:
            if self.store.host_states().get(host) != HostState.QUARANTINED.value:
                raise ConflictError(f"host: {host} is not quarantined")
            now = self.clock.now()
            self.store.set_host_state(host, None, who=who, at=now)
            self.audit.record(
                at=now, kind="quarantine", who=who, result="released", source=host, detail=reason
            )
            with self._health_lock:
                self._host_watch.released(host, now)
            self._refresh_overlay()
        return self.status()

    def exit_maintenance(self, host: str, *, who: str, move_back: bool = False) -> MaintenanceView:
        with self._lock:
            req = self.store.active_maintenance(host)
            if req is None:
                raise ConflictError(f"host: {host} is not in maintenance")
            now = self.clock.now()
            cancelled = 0
            for m in self._active_migrations():
                if m.source == host and m.priority == Priority.EVACUATION.value:
                    cancelled += int(self.executor.cancel(m.id, who=who))
            self.store.update_maintenance(
                req.id, at=now, state=EXITED, finished_at=now, exited_by=who
            )
            self.store.set_host_state(host, None, who=who, at=now)
            self.audit.record(
                at=now,
                kind="maintenance",
                who=who,
                result="exited",
                source=host,
                detail=f"request {req.id}; {cancelled} queued evacuations cancelled"
                + ("; moving its VMs back" if move_back else ""),
            )
            log.info(
                "maintenance %d: %s back to active by %s",
                req.id,
                host,
                who,
                extra=fields(host=host, user=who),
            )
            self._refresh_overlay()
            if move_back:
                snap = self.snapshot()
                in_flight = {m.vm for m in self._active_migrations()}
                back = [
                    MoveRequest(
                        vm=v.name,
                        source=v.host,
                        target=host,
                        reason=MoveReason.MANUAL,
                        priority=Priority.MANUAL_NORMAL,
                    )
                    for v in snap.vms
                    if v.name in set(req.original_vms)
                    and v.host != host
                    and v.name not in in_flight
                ]
                if back:
                    self.executor.submit(
                        back,
                        who=who,
                        plan_id=None,
                        snapshot_digest=snap.digest(),
                        policy_digest=self._pol.policy.digest if self._pol.policy else "",
                        made_at=now,
                    )
        return self._maintenance_view(self._maint_row(req.id), self.snapshot())

    def _maint_row(self, mid: int) -> MaintenanceRow:
        for r in self.store.maintenance_requests(limit=10000):
            if r.id == mid:
                return r
        raise NotFoundError(f"maintenance request {mid}: no such request")

    def maintenance_status(self, host: str | None = None) -> MaintenanceView:
        if host is None:
            raise NotFoundError("host: required")
        snap = self.snapshot()
        try:
            snap.host(host)
        except KeyError:
            raise NotFoundError(f"host: no host named {host!r}") from None
        rows = self.store.maintenance_requests(host=host, limit=1)
        if not rows:
            raise NotFoundError(f"host: {host} has no maintenance request")
        return self._maintenance_view(rows[0], snap)

    def maintenance_list(self, *, active_only: bool = False) -> list[MaintenanceView]:
        snap = self.snapshot()
        return [
            self._maintenance_view(r, snap)
            for r in self.store.maintenance_requests(active_only=active_only, limit=100)
        ]

    def _advance_maintenance(self, snap: Snapshot, now: datetime) -> None:
        """Evacuate every host entering maintenance; a host that is empty with nothing in
        flight becomes ``maintenance``. Records per-VM progress and blockers."""
        if not self.leading():
            return  # the leader of the cluster evacuates (balancer.ha)
        reqs = [r for r in self.store.maintenance_requests(active_only=True, limit=1000)]
        if not reqs:
            return
        active = self._active_migrations()
        busy = {m.source for m in active} | {m.target for m in active}
        # hosts being emptied, and hosts in maintenance that something moved a VM onto
        evac = [
            r
            for r in reqs
            if r.state == EVACUATING
            or (r.state == IN_MAINTENANCE and (snap.vms_on(r.host) or r.host in busy))
        ]
        if not evac:
            return
        policy = self._pol.policy
        recent = self.executor.migrations(limit=2000)
        evac_hosts = {r.host for r in reqs}
        plan: Plan | None = None
        plan_id: str | None = None
        #: the evacuation plan of this tick could not be made (the solver crashed or overran)
        plan_failed: str | None = None
        #: VMs of other hosts moved this tick to make room for an evacuation (or parked to
        #: break a cycle): submitted once, with the first evacuation that needs them
        helpers_sent: set[str] = set()
        for req in evac:
            host = req.host
            on = {v.name for v in snap.vms_on(host)}
            mine = [m for m in active if m.source == host]
            inbound = [m for m in active if m.target == host]
            progress: dict[str, dict[str, Any]] = {k: dict(v) for k, v in req.vms.items()}
            left: list[str] = []  # VMs that left the host since the last tick
            #: why a VM left on the host has no blocker of its own (reason, detail)
            no_move = (
                ("no_policy", "no policy in force")
                if policy is None
                else ("stopping", "the service is stopping")
                if self._stopping
                else ("no_move", "no evacuation move was planned for it")
            )
            for vm in set(req.original_vms) | on | set(progress):
                p = progress.setdefault(vm, {"state": "pending", "attempts": 0})
                try:
                    where = snap.vm(vm).host
                except KeyError:
                    if p.get("state") != "done":
                        left.append(vm)
                    p.update(state="done", detail="the VM no longer exists")
                    continue
                if where != host:
                    if p.get("state") != "done":
                        left.append(vm)
                    p.update(state="done", target=where, fraction=1.0, detail="")
                    continue
                mig = next((m for m in mine if m.vm == vm), None)
                if mig is not None:
                    p.update(
                        state="migrating" if mig.state is not MigrationState.QUEUED else "queued",
                        target=mig.target,
                        fraction=round(mig.fraction, 4),
                        migration_id=mig.id,
                        detail="",
                    )
                    continue
                last = next(
                    (m for m in recent if m.vm == vm and m.id == p.get("migration_id")), None
                )
                if last is not None and last.state in (
                    MigrationState.FAILED,
                    MigrationState.ABORTED,
                    MigrationState.SKIPPED,
                ):
                    p["attempts"] = int(p.get("attempts", 0)) + 1
                    p.update(
                        state="failed",
                        fraction=0.0,
                        migration_id=None,
                        detail=f"{last.state.value}: {last.error or ''}".strip(": "),
                    )
            remaining = [vm for vm in on if progress[vm]["state"] not in ("migrating", "queued")]
            values: dict[str, Any] = {}
            if not on and not mine and not inbound:
                if req.state != EVACUATING:
                    continue
                self.store.set_host_state(host, HostState.MAINTENANCE.value, who=req.who, at=now)
                values.update(
                    state=IN_MAINTENANCE,
                    finished_at=now,
                    blockers=[],
                    message=f"{host} is empty and in maintenance",
                )
                self._refresh_overlay()
                self._evac_idle.pop(req.id, None)
                self.audit.record(
                    at=now,
                    kind="maintenance",
                    who=req.who,
                    result="maintenance",
                    source=host,
                    detail=f"request {req.id}: {host} is empty and in maintenance",
                )
                log.info(
                    "maintenance %d: %s is empty and in maintenance",
                    req.id,
                    host,
                    extra=fields(host=host),
                )
            elif remaining and policy is not None and not self._stopping:
                retry = [
                    vm for vm in remaining if int(progress[vm].get("attempts", 0)) < EVAC_ATTEMPTS
                ]
                blockers: list[dict[str, str]] = [
                    {
                        "vm": vm,
                        "reason": "migration_failed",
                        "detail": f"{progress[vm].get('attempts')} attempts failed: "
                        + str(progress[vm].get("detail", "")),
                    }
                    for vm in remaining
                    if vm not in retry
                ]
                if retry and plan is None and plan_failed is None:
                    try:
                        plan = self._evacuation_plan(snap, evac_hosts, policy)
                        plan_id = new_id("evac", now)
                    except PlanningError as exc:
                        # no plan this tick: nothing moves, which the stuck count sees; the
                        # next tick tries again
                        plan_failed = str(exc)
                        log.warning("evacuation plan failed: %s", exc)
                if plan_failed is not None:
                    no_move = ("planning_failed", plan_failed)
                elif retry:
                    assert plan is not None and plan_id is not None
                    moves = [m for m in plan.moves if m.vm in retry]
                    if moves:
                        # the evacuation's own moves may need others to make room first (the
                        # executor runs a plan's steps in order)
                        helpers = [
                            m
                            for m in plan.moves
                            if m.vm not in on
                            and m.vm not in helpers_sent
                            and m.reason in (MoveReason.MAKE_ROOM, MoveReason.TEMPORARY)
                        ]
                        helpers_sent.update(m.vm for m in helpers)
                        moves = sorted(helpers + moves, key=lambda m: (m.step, m.vm))
                    brk = self.breakers()
                    if moves and brk.allows(MoveReason.MAINTENANCE):
                        self._record_plan(
                            plan_id,
                            now,
                            "maintenance",
                            replace(plan, moves=tuple(moves)),
                            policy,
                            self.automation() or policy.automation,
                            moves,
                            [],
                            [],
                            f"evacuation of {host}",
                        )
                        ids = self.executor.submit(
                            [MoveRequest.from_move(m, Priority.EVACUATION) for m in moves],
                            who=req.who,
                            plan_id=plan_id,
                            snapshot_digest=plan.snapshot_digest,
                            policy_digest=policy.digest,
                            made_at=now,
                        )
                        for m, mid in zip(moves, ids, strict=False):
                            if m.vm in progress:
                                progress[m.vm].update(
                                    state="queued",
                                    target=m.target,
                                    migration_id=mid,
                                    fraction=0.0,
                                )
                            log.info(
                                "evacuate %s %s -> %s",
                                m.vm,
                                m.source,
                                m.target,
                                extra=fields(plan_id=plan_id, vm=m.vm, host=host),
                            )
                    elif moves:
                        blockers.extend(
                            {"vm": m.vm, "reason": "paused", "detail": brk.explain()}
                            for m in moves
                            if m.vm in on
                        )
                    for b in plan.blocked:
                        if b.vm in retry:
                            progress[b.vm].update(state="blocked", detail=_blocked_text(b))
                            blockers.append(
                                {"vm": b.vm, "reason": b.reason.value, "detail": b.detail}
                            )
                    no_move = _no_move(plan, plan_id)
                for vm in remaining:
                    if vm not in retry:
                        progress[vm]["state"] = "blocked"
                values["blockers"] = blockers
                values["plan_id"] = plan_id or req.plan_id
            else:
                values["blockers"] = [] if not remaining else req.blockers
            if values.get("state") != IN_MAINTENANCE:
                self._judge_progress(req, on, progress, values, left=left, no_move=no_move)
            if progress != req.vms or values:
                self.store.update_maintenance(req.id, at=now, vms=progress, **values)
        for mid in set(self._evac_idle) - {r.id for r in evac}:
            del self._evac_idle[mid]

    def _judge_progress(
        self,
        req: MaintenanceRow,
        on: set[str],
        progress: dict[str, dict[str, Any]],
        values: dict[str, Any],
        *,
        left: Sequence[str],
        no_move: tuple[str, str],
    ) -> None:
        """Count the ticks in a row in which no VM left the host and none was in flight; at
        :data:`STUCK_AFTER_CYCLES` the evacuation is stuck, with a blocker for every VM left
        on the host (``no_move`` for one the plan gave neither a move nor a reason). A VM
        leaving, or a migration queued or running, clears it."""
        in_flight = any(progress[vm].get("state") in ("queued", "migrating") for vm in on)
        if left or in_flight or not on:
            self._evac_idle[req.id] = 0
            values["message"] = ""
            return
        was_stuck = req.message.startswith("stuck")
        idle = self._evac_idle.get(req.id, STUCK_AFTER_CYCLES if was_stuck else 0) + 1
        self._evac_idle[req.id] = idle
        if idle < STUCK_AFTER_CYCLES:
            values["message"] = ""
            return
        known = [b for b in values.get("blockers", req.blockers) if b["vm"] in on]
        have = {b["vm"] for b in known}
        reason, detail = no_move
        for vm in sorted(on - have):
            known.append({"vm": vm, "reason": reason, "detail": detail})
            progress[vm].update(state="blocked", detail=f"{reason}: {detail}".rstrip(": "))
        blockers = sorted(known, key=lambda b: b["vm"])
        values["blockers"] = blockers
        shown = "; ".join(f"{b['vm']} {b['reason']}" for b in blockers[:10])
        more = f"; and {len(blockers) - 10} more" if len(blockers) > 10 else ""
        values["message"] = (
            f"stuck: {len(on)} VM{'' if len(on) == 1 else 's'} cannot leave {req.host} "
            f"(nothing moved for {idle} cycles): "
            f"{shown}{more}"
        )

    def _maintenance_view(self, r: MaintenanceRow, snap: Snapshot) -> MaintenanceView:
        try:
            host_state = snap.host(r.host).state.value
        except KeyError:
            host_state = "unknown"
        vms = [
            VMProgress(
                vm=vm,
                state=str(p.get("state", "pending")),
                target=p.get("target"),
                fraction=float(p.get("fraction", 0.0) or 0.0),
                migration_id=p.get("migration_id"),
                attempts=int(p.get("attempts", 0) or 0),
                detail=str(p.get("detail", "") or ""),
            )
            for vm, p in sorted(r.vms.items())
        ]
        total = max(len(r.original_vms), len(vms))
        on = [v.name for v in snap.vms_on(r.host)] if r.state == EVACUATING else []
        remaining = len(on)
        done = max(0, total - remaining)
        partial = sum(v.fraction for v in vms if v.state == "migrating")
        percent = 100.0 if total == 0 else min(100.0, 100.0 * (done + partial) / total)
        eta: float | None = None
        stuck = r.message.startswith("stuck")
        moving = any(v.state in ("queued", "migrating") for v in vms)
        # no time left is promised for an evacuation that is stuck or has not started moving
        if r.state == EVACUATING and remaining and not stuck and (moving or done):
            eta = self._eta(r, snap, on)
        blockers = [
            BlockedVM(vm=b["vm"], reason=b["reason"], detail=b.get("detail", ""))
            for b in r.blockers
        ]
        return MaintenanceView(
            id=r.id,
            host=r.host,
            state=r.state,
            host_state=host_state,
            who=r.who,
            created_at=r.created_at,
            updated_at=r.updated_at,
            finished_at=r.finished_at,
            total_vms=total,
            remaining_vms=remaining,
            done_vms=done,
            percent=round(percent, 1),
            eta_s=None if eta is None else round(eta, 1),
            stuck=stuck,
            message=r.message,
            blockers=blockers,
            vms=vms,
            exited_by=r.exited_by,
        )

    def _eta(self, r: MaintenanceRow, snap: Snapshot, remaining: Sequence[str]) -> float | None:
        """Time left: the mean duration of this evacuation's finished migrations (or an
        estimate from memory at 1 GiB/s) times the remaining VMs, over the per-host limit."""
        durations = [
            m.duration_s
            for m in self.executor.migrations(limit=2000)
            if m.source == r.host
            and m.state is MigrationState.SUCCEEDED
            and m.duration_s is not None
            and m.created_at >= r.created_at
        ]
        vms = snap.vm_map()
        if durations:
            per_vm = sum(durations) / len(durations)
        else:
            mem = [vms[v].memory_mib for v in remaining if v in vms]
            per_vm = 1.0 + (sum(mem) / max(1, len(mem))) / 1024.0
        blocked = {b["vm"] for b in r.blockers}
        movable = [v for v in remaining if v not in blocked]
        if not movable:
            return None
        lanes = self._pol.policy.limits.concurrent_per_host if self._pol.policy else 2
        return per_vm * len(movable) / max(1, min(lanes, len(movable)))

    # ------------------------------------------------------------------------------------------
    # status, history, audit
    # ------------------------------------------------------------------------------------------
    def status(self) -> StatusView:
        snap = self._snap
        now = self.clock.now()
        brk = self.breakers()
        holds = self.holds()
        loads = snap.loads() if snap else {}
        imb: tuple[float, float, float] | None = (
            imbalance_of(snap, self._pol.policy) if snap else None
        )
        automation = self.automation()
        last = self.plan(self._last_plan_id) if self._last_plan_id else None
        return StatusView(
            time=now,
            backend=self.backend_name,
            hosts=[
                HostView(
                    name=h.name,
                    state=h.state.value,
                    cpu_cores=h.cpu_cores,
                    memory_mib=h.memory_mib,
                    cpu_load=round(loads[h.name].cpu_load, 4),
                    memory_load=round(loads[h.name].memory_load, 4),
                    vm_count=loads[h.name].vm_count,
                    labels=dict(h.labels),
                    agent=_agent_view(self._agent.get(h.name)),
                    forecast=_host_forecast_of(h.name, self.forecasts),
                    health=[
                        HealthSignalView(signal=r.signal.value, since=r.since, detail=r.detail)
                        for r in self._host_signals.get(h.name, ())
                    ],
                )
                for h in (snap.hosts if snap else ())
            ],
            vms=[
                VMView(
                    name=v.name,
                    host=v.host,
                    vcpus=v.vcpus,
                    memory_mib=v.memory_mib,
                    cpu_used_cores=round(v.cpu_used_cores, 3),
                )
                for v in (snap.vms if snap else ())
            ],
            imbalance=round(imb[0], 6) if imb else None,
            max_cpu_load=round(imb[1], 4) if imb else None,
            max_memory_load=round(imb[2], 4) if imb else None,
            snapshot_digest=snap.digest() if snap else None,
            last_collect=self._last_collect,
            last_collect_error=self._collect_error,
            policy=self.policy_view(),
            automation=automation.value if automation else None,
            paused=brk.open,
            pause_reasons=[BreakerView(reason=t.reason.value, detail=t.detail) for t in brk.trips],
            mandatory_allowed=brk.allow_mandatory,
            holds=[
                HoldView(vm=h.vm, reason=h.reason.value, until=h.until, detail=h.detail)
                for h in sorted(holds.values(), key=lambda h: h.vm)
            ],
            pending_recommendations=len(self.store.recommendations(state=PENDING, limit=10000)),
            migrations_active=len(self._active_migrations()),
            last_plan_id=self._last_plan_id,
            stopping=self._stopping,
            clusters=[
                ClusterLeaderView(
                    cluster=c.cluster, role=c.role, leader=c.leader, epoch=c.epoch, since=c.since
                )
                for c in self.cluster_status()
            ],
            last_plan_status=last.status if last else None,
            violations=last.violations if last else [],
            window=self._window_text(now),
        )

    def _window_text(self, now: datetime) -> str | None:
        """The balancing window's hold now ("frozen by X until ..."), None when balancing may
        run."""
        policy = self._pol.policy
        return (window_state(policy, now).detail or None) if policy is not None else None

    def history(self, hours: float) -> list[HistoryView]:
        since = self.clock.now() - timedelta(hours=hours)
        return [
            HistoryView(
                at=p.at,
                imbalance=round(p.imbalance, 6),
                max_cpu_load=round(p.max_cpu_load, 4),
                max_memory_load=round(p.max_memory_load, 4),
            )
            for p in self.store.history(since)
        ]

    def audit_records(self, f: AuditFilter) -> list[AuditItem]:
        return self.audit.query(f)

    def record_call(self, *, who: str, action: str, detail: str = "", result: str = "ok") -> None:
        """The audit record of one mutating API call."""
        self.audit.record(
            at=self.clock.now(),
            kind="api",
            who=who,
            result=result,
            detail=f"{action} {detail}".strip(),
        )


def _load_policy(path: Path) -> Policy:
    """:func:`policies.loader.load_policy`, with every unreadable file a PolicyError too."""
    try:
        return load_policy([path])
    except (yaml.YAMLError, UnicodeDecodeError, OSError) as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise PolicyError(f"cannot read the policy: {first}", path=str(path)) from exc


def _demand(snap: Snapshot) -> HW.Demand:
    return HW.Demand(
        cpu_cores=sum(v.cpu_used_cores for v in snap.vms),
        memory_mib=float(sum(v.memory_mib for v in snap.vms)),
    )


def _host_forecast_of(host: str, forecasts: ForecastSource | None) -> HostForecastView | None:
    view = forecasts.last if forecasts is not None else None
    h = view.host(host) if view is not None else None
    return host_forecast(h, view) if h is not None and view is not None else None


def _parse_reason(label: str) -> tuple[MoveReason, str | None]:
    try:
        return parse_reason_label(label)
    except ValueError:
        return MoveReason.BALANCE, None


def _no_move(plan: Plan, plan_id: str | None) -> tuple[str, str]:
    """The blocker of a VM left on an evacuating host for which the evacuation plan has
    neither a move nor a blocked entry (reason, detail)."""
    if plan.status is PlanStatus.INFEASIBLE:
        why = "; ".join(c.message for c in plan.causes if c.message) or ", ".join(plan.conflicts)
        return "infeasible", f"the rules conflict: {why}" if why else "no placement is feasible"
    return "no_move", f"the evacuation plan {plan_id} moves it nowhere" if plan_id else (
        "the evacuation plan moves it nowhere"
    )


def _blocked_text(b: Blocked) -> str:
    text = f"{b.vm} {b.reason.value}"
    if b.rule:
        text += f" (rule {b.rule})"
    if b.detail:
        text += f": {b.detail}"
    return text


def _planned(m: Move) -> PlannedMove:
    return PlannedMove(
        vm=m.vm, source=m.source, target=m.target, step=m.step, reason=m.reason_label, gain=m.gain
    )


def _blocked_view(b: Blocked) -> BlockedVM:
    return BlockedVM(vm=b.vm, reason=b.reason.value, detail=b.detail, rule=b.rule)


def _rec_view(r: RecommendationRow) -> RecommendationView:
    return RecommendationView(
        id=r.id,
        created_at=r.created_at,
        plan_id=r.plan_id,
        vm=r.vm,
        source=r.source,
        target=r.target,
        reason=r.reason,
        gain=round(r.gain, 6),
        state=r.state,
        policy_digest=r.policy_digest,
        decided_by=r.decided_by,
        decided_at=r.decided_at,
        migration_id=r.migration_id,
        note=r.note,
    )


def _mig_view(m: Migration) -> MigrationView:
    return MigrationView(
        id=m.id,
        vm=m.vm,
        source=m.source,
        target=m.target,
        state=m.state.value,
        priority=m.priority,
        reason=m.reason,
        who=m.who,
        plan_id=m.plan_id,
        created_at=m.created_at,
        updated_at=m.updated_at,
        fraction=round(m.fraction, 4),
        duration_s=m.duration_s,
        error=m.error,
    )
