"""One instance of a high-availability deployment: a seat per cluster, each leading or standing by.

```python
node = Node.build(settings)      # one Runtime per cluster (service, executor, scheduler)
node.start()                     # standby everywhere, then the election thread
node.seats["default"].leading()  # the gate the service asks before it collects or acts
node.close()                     # step down, release the leases
```

The election thread, every ``ha.renew_seconds``:

1. heartbeat (``balancer_ha.instances``) and count the live instances;
2. renew every lease held; a lease that could not be renewed (lost, taken, or the database
   unreachable for longer than the lease) -> **step down**: the scheduler pauses, the executor
   thread stops *without aborting* anything (the migrations keep running on the hypervisors; the
   next leader follows them) and the executor only journals requests from then on;
3. hold a fair share, ``ceil(clusters / live instances)``: hand surplus clusters over (step
   down, release), then acquire free or expired leases up to the share, starting at a
   different cluster on each instance;
4. on the clusters it leads: take the requests standbys journaled (``adopt_queued``).

Becoming leader of a cluster at epoch *e*: the executor's store carries the fencing token
``(cluster, e)`` (the database refuses its writes once *e* no longer holds the lease), the
executor recovers from the journal (every migration in flight is asked after on the
hypervisors and followed, queued work is queued again), the scheduler resumes (collect,
balance, maintenance, scheduled tasks: only the leader runs them) and a ``leadership`` audit
record names the instance and the epoch.

The gate (:meth:`Seat.leading`) is true only while the last successful renewal is younger than
the lease by the instance's own monotonic clock, so a process that was paused (SIGSTOP, a long
GC) knows it is no longer leader before it asks the database.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import socket
import threading
import time
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from urllib.parse import quote

import sqlalchemy as sa

from balancer.errors import BalancerError, StorageError
from balancer.executor import ExecutorWorker
from balancer.ha.fence import install_fencing, install_ha_schema
from balancer.ha.lease import Lease, LeaseStore, Term
from balancer.service.runtime import Runtime
from balancer.settings import ClusterSettings, Settings
from balancer.storage import AuditEntry, Fence, Store, make_engine
from balancer.storage import audit as audit_mod

log = logging.getLogger("balancer.ha")

#: how much earlier than the lease the instance stops believing it leads
SAFETY_S = 0.25


def cluster_schema(name: str) -> str:
    return f"cluster_{name}"


def cluster_url(database: str, schema: str) -> str:
    """The database URL whose connections use ``schema`` (PostgreSQL ``search_path``)."""
    sep = "&" if "?" in database else "?"
    return f"{database}{sep}options={quote(f'-csearch_path={schema}', safe='')}"


@dataclass(frozen=True, slots=True, kw_only=True)
class SeatStatus:
    cluster: str
    #: this instance's role: leader | standby
    role: str
    #: the instance holding the lease (None: nobody now)
    leader: str | None
    epoch: int | None
    since: datetime | None


class Seat:
    """One cluster on this instance."""

    def __init__(
        self,
        node: Node,
        cluster: ClusterSettings,
        runtime: Runtime,
        *,
        elected: bool,
    ) -> None:
        self.node = node
        self.name = cluster.name
        self.runtime = runtime
        self.base_store: Store = runtime.store
        self.elected = elected
        self.term: Term | None = None
        self.deadline = 0.0  # monotonic
        self.since: datetime | None = None
        self._lock = threading.RLock()

    # -- the gate ----------------------------------------------------------------------------
    def leading(self) -> bool:
        if not self.elected:
            return True
        return self.term is not None and time.monotonic() < self.deadline

    def status(self, lease: Lease | None = None) -> SeatStatus:
        """This instance's role; the leader from the lease row when given (the database's
        view), else from this instance's own."""
        term = self.term
        lead = self.leading()
        role = "leader" if lead else "standby"
        if not self.elected:
            return SeatStatus(
                cluster=self.name, role=role, leader=self.node.instance, epoch=None, since=None
            )
        if lease is not None and lease.valid:
            return SeatStatus(
                cluster=self.name,
                role=role,
                leader=lease.holder,
                epoch=lease.epoch,
                since=lease.acquired_at,
            )
        if lead and term is not None:
            return SeatStatus(
                cluster=self.name,
                role=role,
                leader=self.node.instance,
                epoch=term.epoch,
                since=self.since,
            )
        return SeatStatus(cluster=self.name, role=role, leader=None, epoch=None, since=None)

    # -- transitions -------------------------------------------------------------------------
    def start_standby(self) -> None:
        rt = self.runtime
        svc = rt.service
        svc.leading = self.leading
        svc.cluster_status = self.node.cluster_status
        ex = rt.executor.executor
        if self.elected:
            ex.stand_by()
        svc.reload_policy(initial=True)
        svc.audit.record(
            at=svc.clock.now(),
            kind="service",
            who="balancer",
            result="started",
            detail=f"instance {self.node.instance}; cluster {self.name}; backend "
            f"{svc.backend_name}" + ("; standing by for the lease" if self.elected else ""),
        )
        if not self.elected:
            rt.executor.start()
        with contextlib.suppress(BalancerError):
            svc.collect()
        rt.scheduler.start(paused=self.elected)

    def lead(self, term: Term, started_mono: float) -> None:
        """Become the cluster's leader for ``term``."""
        with self._lock:
            rt = self.runtime
            ex = rt.executor.executor
            fenced = self.base_store.fenced(Fence(cluster=self.name, epoch=term.epoch))
            ex.store = fenced
            ex.resume_dispatch()
            self.term = term
            self.since = term.acquired_at
            self.deadline = started_mono + self.node.lease_s - SAFETY_S
            try:
                self._record(fenced, "acquired", term.epoch, "")
                worker = ExecutorWorker(ex)
                rt.executor.worker = worker
                worker.start()  # recovery from the journal, with the fencing token
            except Exception as exc:  # a failed takeover must not leave an idle leader
                log.error(
                    "cluster %s: taking over at epoch %d failed: %s", self.name, term.epoch, exc
                )
                self.step_down(f"takeover failed: {exc}")
                return
            rt.scheduler.scheduler.resume()
            rt.scheduler.run_soon("collect")
            log.info(
                "cluster %s: leader (instance %s, epoch %d)",
                self.name,
                self.node.instance,
                term.epoch,
            )

    def renewed(self, term: Term, started_mono: float) -> None:
        with self._lock:
            if self.term is not None and self.term.epoch == term.epoch:
                self.term = term
                self.deadline = started_mono + self.node.lease_s - SAFETY_S

    def step_down(self, why: str) -> Term | None:
        """Stop leading: no new work here; migrations in flight keep running (the next leader
        follows them). Returns the term that ended."""
        with self._lock:
            term = self.term
            if term is None:
                return None
            self.term = None
            self.deadline = 0.0
            self.since = None
            rt = self.runtime
            ex = rt.executor.executor
            with contextlib.suppress(Exception):
                rt.scheduler.pause()
            ex.stop_dispatch()
            rt.executor.worker.stop(timeout_s=0.0, abort=False)
            ex.stand_by()
            ex.store = self.base_store
            log.warning("cluster %s: stepped down from epoch %d (%s)", self.name, term.epoch, why)
            with contextlib.suppress(BalancerError):
                self._record(self.base_store, "stepped_down", term.epoch, why)
            return term

    def _record(self, store: Store, result: str, epoch: int, detail: str) -> None:
        entry = AuditEntry(
            at=datetime.now(UTC),
            kind="leadership",
            who=f"balancer {self.node.instance}",
            result=result,
            detail=f"instance {self.node.instance}; cluster {self.name}; epoch {epoch}"
            + (f"; {detail}" if detail else ""),
        )
        with store._tx() as conn:
            audit_mod.append(conn, entry)


class Node:
    """This instance: its seats and the election thread."""

    def __init__(
        self,
        settings: Settings,
        seats: list[Seat],
        leases: LeaseStore | None,
        engine: sa.Engine | None = None,
    ) -> None:
        self.settings = settings
        self.engine = engine
        self.seats: dict[str, Seat] = {}
        self.leases = leases
        ha = settings.ha
        self.instance = ha.instance if ha else socket.gethostname()
        self.lease_s = ha.lease_seconds if ha else 0.0
        self.renew_s = ha.renew_s if ha else 0.0
        self.alive_s = ha.alive_s if ha else 0.0
        self._halt = threading.Event()
        self._thread: threading.Thread | None = None
        self._reader: threading.Thread | None = None
        self.last_error: str | None = None
        for s in seats:
            self.seats[s.name] = s

    @staticmethod
    def build(settings: Settings, *, lab: bool = False) -> Node:
        clusters = settings.cluster_list()
        elected = settings.ha is not None
        leases: LeaseStore | None = None
        base = make_engine(settings.database)
        if elected or settings.clusters is not None:
            try:
                if base.dialect.name == "postgresql":
                    install_ha_schema(base)
                    if settings.clusters is not None:
                        with base.begin() as conn:
                            conn.execute(
                                sa.text("SELECT pg_advisory_xact_lock(:k)"),
                                {"k": zlib.crc32(b"balancer-ha-schema") - 2**31},
                            )
                            for c in clusters:
                                conn.execute(
                                    sa.text(f"CREATE SCHEMA IF NOT EXISTS {cluster_schema(c.name)}")
                                )
            except sa.exc.SQLAlchemyError as exc:
                raise StorageError(f"cannot prepare the database: {exc}") from exc
            if elected:
                leases = LeaseStore(base)
        node = Node(settings, [], leases, base if base.dialect.name == "postgresql" else None)
        with node.schema_lock():
            node._build_seats(clusters, elected, lab)
        return node

    @contextlib.contextmanager
    def schema_lock(self) -> Iterator[None]:
        """Instances starting at the same moment create the tables one after the other (a
        PostgreSQL session advisory lock)."""
        if self.engine is None:
            yield
            return
        key = zlib.crc32(b"balancer-ha-schema") - 2**31
        try:
            conn = self.engine.connect()
            conn.execute(sa.text("SELECT pg_advisory_lock(:k)"), {"k": key})
            conn.commit()
        except sa.exc.SQLAlchemyError as exc:
            raise StorageError(f"cannot lock the schema: {exc}") from exc
        try:
            yield
        finally:
            with contextlib.suppress(sa.exc.SQLAlchemyError):
                conn.execute(sa.text("SELECT pg_advisory_unlock(:k)"), {"k": key})
                conn.commit()
            conn.close()

    def _build_seats(self, clusters: list[ClusterSettings], elected: bool, lab: bool) -> None:
        settings = self.settings
        node = self
        for c in clusters:
            database = settings.database
            if settings.clusters is not None and database.startswith(("postgres", "postgresql")):
                database = cluster_url(database, cluster_schema(c.name))
            cs = settings.model_copy(
                update={"backend": c.backend, "policy": c.policy, "database": database}
            )
            rt = Runtime.build(cs, lab=lab)
            if elected:
                install_fencing(rt.store.engine)
            node.seats[c.name] = Seat(node, c, rt, elected=elected)

    # -- lifecycle ---------------------------------------------------------------------------
    def start(self) -> None:
        if self.leases is not None:
            self.leases.heartbeat(self.instance, pid=os.getpid(), api=self.settings.api.listen)
            self.leases.restarted(self.instance)
        with self.schema_lock():  # the scheduler creates its task table
            for seat in self.seats.values():
                seat.start_standby()
        if self.leases is not None:
            self._thread = threading.Thread(target=self._loop, name="balancer-ha", daemon=True)
            self._thread.start()
            self._reader = threading.Thread(
                target=self._standby_reads, name="balancer-ha-read", daemon=True
            )
            self._reader.start()

    def begin_stop(self) -> None:
        """First signal: stop taking leases (the election thread ends)."""
        self._halt.set()
        if self._thread is not None:
            self._thread.join(timeout=max(5.0, self.renew_s * 3))
            self._thread = None
        if self._reader is not None:
            self._reader.join(timeout=10.0)
            self._reader = None

    def release_all(self, why: str) -> None:
        """Step down everywhere and give the leases up at once (a clean stop)."""
        for seat in self.seats.values():
            term = seat.step_down(why)
            if term is not None and self.leases is not None:
                with contextlib.suppress(StorageError):
                    self.leases.release(term)

    def close(self) -> None:
        self.begin_stop()
        if self.leases is not None:
            self.release_all("stopping")
        for seat in self.seats.values():
            try:
                seat.runtime.close()
            except BalancerError as exc:
                log.warning("closing cluster %s: %s", seat.name, exc)

    def cluster_status(self) -> list[SeatStatus]:
        """Each cluster: its leader, epoch and since when (the lease table), and this
        instance's role."""
        rows: dict[str, Lease] = {}
        if self.leases is not None:
            with contextlib.suppress(StorageError):
                rows = {row.cluster: row for row in self.leases.leases()}
        return [s.status(rows.get(s.name)) for s in self.seats.values()]

    def local_roles(self) -> dict[str, bool]:
        """Which clusters this instance believes it leads now (cheap: no database)."""
        return {name: s.leading() for name, s in self.seats.items()}

    # -- standbys read the cluster for their API ---------------------------------------------
    def _standby_reads(self) -> None:
        """A standby's scheduler is paused; refresh its view of each cluster it does not lead
        at the collect interval (``Service.collect`` writes nothing on a standby)."""
        interval = self.settings.intervals.collect_s
        while not self._halt.wait(interval):
            for seat in self.seats.values():
                if self._halt.is_set():
                    return
                if seat.leading():
                    continue
                try:
                    seat.runtime.service.collect()
                except BalancerError as exc:
                    log.debug("cluster %s: standby read failed: %s", seat.name, exc)
                except Exception:  # keep reading: the API shows the last good view
                    log.exception("cluster %s: standby read failed", seat.name)

    # -- the election loop -------------------------------------------------------------------
    def _loop(self) -> None:
        # let instances started at the same moment register before the first election
        self._halt.wait(min(self.renew_s, 1.0))
        while not self._halt.is_set():
            t0 = time.monotonic()
            try:
                self.elect()
                self.last_error = None
            except Exception as exc:  # the election loop must outlive any error: log, retry
                self.last_error = f"{type(exc).__name__}: {exc}"
                log.exception("election round failed")
            self._halt.wait(max(0.05, self.renew_s - (time.monotonic() - t0)))

    def elect(self) -> None:
        """One round: heartbeat, renew, hand over the surplus, acquire up to a fair share."""
        assert self.leases is not None
        leases = self.leases
        live: list[str] = []
        try:
            leases.heartbeat(self.instance, pid=os.getpid(), api=self.settings.api.listen)
            live = leases.live_instances(self.alive_s)
        except StorageError as exc:
            log.warning("heartbeat failed: %s", exc)
        # renew what we hold
        for seat in self.seats.values():
            term = seat.term
            if term is None:
                continue
            started = time.monotonic()
            try:
                new = leases.renew(term, self.lease_s)
            except StorageError as exc:
                if not seat.leading():
                    seat.step_down(f"lease not renewed in time: {exc}")
                else:
                    log.warning("cluster %s: renewal failed, retrying: %s", seat.name, exc)
                continue
            if new is None:
                seat.step_down("the lease was lost (expired or taken over)")
            else:
                seat.renewed(new, started)
        if not live:
            return  # the database is unreachable: acquire nothing
        names = list(self.seats)
        share = math.ceil(len(names) / max(1, len(live)))
        held = [s for s in self.seats.values() if s.term is not None]
        for seat in held[share:]:
            term = seat.step_down(
                f"handing over: {len(live)} instances share {len(names)} clusters"
            )
            if term is not None:
                with contextlib.suppress(StorageError):
                    leases.release(term)
        count = min(len(held), share)
        start = zlib.crc32(self.instance.encode()) % max(1, len(names))
        for name in names[start:] + names[:start]:
            if count >= share:
                break
            seat = self.seats[name]
            if seat.term is not None:
                continue
            started = time.monotonic()
            try:
                term = leases.acquire(name, self.instance, self.lease_s)
            except StorageError as exc:
                log.warning("cluster %s: cannot acquire: %s", name, exc)
                break
            if term is not None:
                seat.lead(term, started)
                if seat.term is not None:
                    count += 1
        for seat in self.seats.values():
            if seat.leading():
                try:
                    if seat.runtime.executor.executor.adopt_queued():
                        seat.runtime.executor.worker.wake()
                except BalancerError as exc:
                    log.warning("cluster %s: cannot take journaled requests: %s", seat.name, exc)
