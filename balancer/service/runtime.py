"""Wire the service from its settings: backend, store, executor, service, scheduler.

``Runtime.build(settings)`` builds everything without starting it; ``start()`` recovers the
executor, loads the policy, collects once and starts the jobs; ``stop()`` is the first-signal
path (drain with a limit) and ``abort()`` the second-signal path.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from balancer.errors import BalancerError, InputError, LabError
from balancer.executor import MigrationResult
from balancer.port import Clock, HypervisorPort
from balancer.service.adapters import ExecutorAdapter, IsolatedPlanner, OverlayPort, StoreAudit
from balancer.service.core import Service
from balancer.service.forecasting import ForecastSource
from balancer.service.scheduling import Intervals, Scheduler
from balancer.service.store import ServiceStore
from balancer.settings import LabBackend, LibvirtBackend, Settings, SimulatedBackend
from balancer.sim.clock import RealClock
from balancer.storage import Store
from balancer.storage.journal import AuditVerdict, sqlite_file
from collectors.history import DemandHistory, SqlHistoryBackend
from collectors.source import WindowDemandSource
from policies.loader import load_policy

log = logging.getLogger("balancer.service")


def make_port(
    settings: Settings, *, lab: bool = False, start_lab: bool = True
) -> tuple[HypervisorPort, str, Callable[[], None]]:
    """The hypervisor port of the configured backend, its name and how to close it. A lab
    backend with no lab running starts one (and stops it at close) unless ``start_lab`` is
    false: then it is an :class:`InputError` (a one-shot command never starts a lab)."""
    backend = settings.backend
    if lab or isinstance(backend, LabBackend):
        from balancer.lab import Lab

        state_dir = backend.state_dir if isinstance(backend, LabBackend) else None
        lab_ = Lab(state_dir)
        started = False
        if not lab_.exists() and not start_lab:
            raise InputError("backend lab: no lab is running (start one: balancer lab up)")
        if not lab_.exists():
            log.info("starting the libvirt lab (3 hosts, 6 guests)")
            lab_ = Lab.up(hosts=3, vms=6, busy=3, state_dir=state_dir)
            started = True
        port = lab_.backend()

        def close_lab() -> None:
            with contextlib.suppress(Exception):
                port.close()
            if started:
                lab_.down()

        return port, "lab", close_lab
    if isinstance(backend, LibvirtBackend):
        from balancer.libvirt.backend import backend_from_settings

        port_ = backend_from_settings(
            backend.resolved_hosts(),
            measure_dirty_rate=backend.dirty_rate.enabled,
            dirty_rate_per_host=backend.dirty_rate.per_host,
        )
        return port_, "libvirt", port_.close
    assert isinstance(backend, SimulatedBackend)
    from balancer.sim.cluster import SimulatedCluster
    from balancer.sim.generator import GeneratorSpec, generate
    from balancer.snapshot_io import load_snapshot

    if backend.snapshot:
        snap = load_snapshot(backend.snapshot)
    else:
        snap = generate(GeneratorSpec(hosts=backend.hosts, vms=backend.vms, seed=backend.seed))
    if backend.state_file:
        Path(backend.state_file).parent.mkdir(parents=True, exist_ok=True)
    sim = SimulatedCluster(
        snap, clock=RealClock(), link_mib_s=backend.link_mib_s, state_path=backend.state_file
    )
    return sim, "simulated", lambda: None


def anchor_path(settings: Settings) -> Path | None:
    """The audit anchor file of ``settings`` (``audit.anchor``: auto, off or a path)."""
    value = settings.audit.anchor
    if value == "off":
        return None
    if value != "auto":
        return Path(value)
    db = sqlite_file(settings.database)
    if db is not None:
        return Path(f"{db}.anchor")
    from balancer.storage.db import redact

    digest = hashlib.sha256(redact(settings.database).encode()).hexdigest()[:12]
    return Path(settings.state_dir) / f"audit-{digest}.anchor"


def audit_checker(store: Store, anchor: Path | None) -> Callable[[], AuditVerdict]:
    """The periodic job's function: verify the chain (and the anchor), log a bad one."""

    def check() -> AuditVerdict:
        v = store.check_audit(anchor)
        if not v.ok:
            log.error("audit trail does not verify: %s", v.error)
        return v

    return check


#: how often the demand history is written to the database (a crash loses at most this much)
HISTORY_FLUSH_S = 300.0


def _forecasts(settings: Settings, store: Store) -> ForecastSource | None:
    """The demand history in the service's database, and the forecaster (issue 18)."""
    h = settings.collector_settings().history
    if not h.enabled:
        return None
    history = DemandHistory(h, SqlHistoryBackend(store.engine))
    return ForecastSource(history, flush_every_s=HISTORY_FLUSH_S, background=True)


@dataclass
class Runtime:
    settings: Settings
    service: Service
    scheduler: Scheduler
    executor: ExecutorAdapter
    store: Store
    close_port: Callable[[], None]
    result_hooks: list[Callable[[MigrationResult], None]] = field(default_factory=list)
    close_planner: Callable[[], None] = lambda: None

    @staticmethod
    def build(
        settings: Settings,
        *,
        lab: bool = False,
        port: HypervisorPort | None = None,
        clock: Clock | None = None,
    ) -> Runtime:
        """Wire everything from the settings; ``port`` and ``clock`` replace the backend and the
        real clock (tests and backtests drive a simulated cluster on a manual clock)."""
        if settings.database.startswith("sqlite:///"):
            db_path = Path(settings.database[len("sqlite:///") :])
            db_path.parent.mkdir(parents=True, exist_ok=True)
        Path(settings.state_dir).mkdir(parents=True, exist_ok=True)
        if port is None:
            port, name, close_port = make_port(settings, lab=lab)
        else:
            name, close_port = "custom", (lambda: None)
        anchor = anchor_path(settings)
        store = Store.open(settings.database, anchor=anchor)
        svc_store = ServiceStore(store.engine)
        clock = clock or RealClock()
        hooks: list[Callable[[MigrationResult], None]] = []

        def on_result(r: MigrationResult) -> None:
            for h in hooks:
                try:
                    h(r)
                except Exception:  # a metrics hook must never break the executor
                    log.exception("result hook failed")

        policy = load_policy([settings.policy])
        planner = IsolatedPlanner()
        executor = ExecutorAdapter.build(
            OverlayPort(port, svc_store.host_states),
            store,
            clock=clock,
            policy=policy,
            poll_interval_s=settings.service.executor_poll_s,
            on_result=on_result,
        )
        svc = Service(
            settings=settings,
            port=port,
            planner=planner,
            executor=executor,
            store=svc_store,
            audit=StoreAudit(store),
            clock=clock,
            # the collectors' window; with collectors.influx also the InfluxDB export (and the
            # window rebuilt from its history at start)
            demand=WindowDemandSource.open(settings.collector_settings(), clock.now()),
            backend_name=name,
            forecasts=_forecasts(settings, store),
        )
        svc.policy_listeners.append(executor.set_policy)
        hooks.append(svc.on_migration_result)
        sched = Scheduler(
            svc,
            store.engine,
            Intervals(
                collect_s=settings.intervals.collect_s,
                balance_s=settings.intervals.balance_s,
                policy_reload_s=settings.intervals.policy_reload_s,
                audit_verify_s=settings.audit.verify_interval_s,
            ),
            audit_check=audit_checker(store, anchor),
        )
        # a plan broken by an outside move is replaced at once, not at the next cycle
        svc.replan_soon = functools.partial(sched.run_soon, "balance")
        return Runtime(
            settings=settings,
            service=svc,
            scheduler=sched,
            executor=executor,
            store=store,
            close_port=close_port,
            result_hooks=hooks,
            close_planner=planner.close,
        )

    def start(self) -> None:
        self.service.start()
        self.scheduler.start()

    def begin_stop(self, signal_name: str = "") -> None:
        self.scheduler.pause()
        self.service.begin_stop(signal_name=signal_name)

    def drain(self) -> bool:
        return self.service.drain(self.settings.service.drain_timeout_s)

    def abort(self, reason: str) -> None:
        self.service.abort_in_flight(reason)
        self.executor.wait_idle(10.0)

    def close(self) -> None:
        self.scheduler.shutdown()
        try:
            self.service.close()
        except BalancerError as exc:
            log.warning("closing: %s", exc)
        self.close_planner()
        self.store.close()
        try:
            self.close_port()
        except (BalancerError, LabError, OSError) as exc:
            log.warning("closing the backend: %s", exc)

    def __enter__(self) -> Runtime:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
