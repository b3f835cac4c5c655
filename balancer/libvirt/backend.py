"""The libvirt implementation of :class:`balancer.port.HypervisorPort`.

* One connection per host, opened by URI with a per-host timeout; a host that does not answer
  is marked ``unreachable`` (listed with its last known VMs) and comes back when it answers.
* One ``getAllDomainStats`` call per host per snapshot; CPU time becomes cores used between
  samples; memory from the balloon driver or the QEMU RSS; dirty rate where libvirt has it.
* CPU compatibility from ``compareHypervisorCPU`` (cached per host and distinct CPU XML).
* Live migration with ``migrateToURI3`` (P2P, live, persistent on the target, undefined on
  the source, abort on error) in a worker thread; progress from ``jobStats``; abort with
  ``abortJob``; the completed job's stats (time, downtime, bytes) in the final progress.
* Lifecycle events (libvirt's event loop in a thread) keep a change feed, so VMs started,
  stopped or migrated by someone else are seen without waiting for the next poll.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
import uuid
import xml.etree.ElementTree as ET
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any, Protocol, TypeVar

import libvirt

from balancer.errors import (
    HostUnreachableError,
    HypervisorError,
    InputError,
    MigrationError,
    VMNotFoundError,
)
from balancer.libvirt import domxml, stats
from balancer.libvirt.errors import (
    LibvirtFault,
    is_aborted,
    translate_host_error,
    translate_migration_error,
)
from balancer.libvirt.events import VMEvent, ensure_event_loop, event_kind
from balancer.libvirt.sysinfo import sysinfo_labels
from balancer.model import VM, Host, HostState, Snapshot
from balancer.port import JobState, MigrationOptions, MigrationProgress

log = logging.getLogger(__name__)
T = TypeVar("T")

DOMAIN_STATS = (
    libvirt.VIR_DOMAIN_STATS_STATE
    | libvirt.VIR_DOMAIN_STATS_CPU_TOTAL
    | libvirt.VIR_DOMAIN_STATS_BALLOON
    | libvirt.VIR_DOMAIN_STATS_VCPU
    | getattr(libvirt, "VIR_DOMAIN_STATS_DIRTYRATE", 0)
)
MIGRATION_FLAGS = (
    libvirt.VIR_MIGRATE_LIVE
    | libvirt.VIR_MIGRATE_PEER2PEER
    | libvirt.VIR_MIGRATE_PERSIST_DEST
    | libvirt.VIR_MIGRATE_UNDEFINE_SOURCE
    | libvirt.VIR_MIGRATE_ABORT_ON_ERROR
)


#: how long a dropped connection waits for the calls still running on it before it is closed
RELEASE_WAIT_S = 600.0


#: the reason a migration is refused when its disks are not shared and may not be copied
STORAGE_NOT_SHARED = "storage_not_shared"
#: the reason a migration is refused when tls is required and a host cannot encrypt
MIGRATION_TLS_UNAVAILABLE = "migration_tls_unavailable"


def _silence_libvirt_stderr() -> None:
    def _ignore(_ctx: object, _err: object) -> None:
        return None

    libvirt.registerErrorHandler(_ignore, None)


@dataclass(frozen=True, slots=True, kw_only=True)
class HostConfig:
    """One hypervisor host: its name in the balancer and its libvirt URI."""

    name: str
    uri: str  # qemu+ssh://, qemu+tls://, qemu+tcp://, qemu:///system
    timeout_s: float = 5.0
    labels: Mapping[str, str] = field(default_factory=dict)
    #: labels read from the host's SMBIOS data: label key -> SECTION.ENTRY
    #: (:mod:`balancer.libvirt.sysinfo`); its ``kvm-balancer:`` OEM strings are labels too
    sysinfo_labels: Mapping[str, str] = field(default_factory=dict)
    #: VIR_MIGRATE_PARAM_URI for migrations *to* this host (e.g. tcp://10.0.0.2); None: libvirt
    migration_uri: str | None = None
    #: VIR_MIGRATE_PARAM_LISTEN_ADDRESS for incoming migrations (e.g. 127.0.0.1)
    listen_address: str | None = None
    #: guest type used for this host's CPU model (kvm, or qemu for plain emulation)
    virt_type: str = "kvm"
    #: count the host's own CPU/memory use (outside its VMs) against its capacity
    measure_host_overhead: bool = True
    #: disk paths under these prefixes are shared by every host (no storage copy)
    shared_storage_prefixes: tuple[str, ...] = ()
    #: the host's QEMU has migration TLS certificates (migrate_tls_x509_cert_dir), so
    #: migrations to and from it can be encrypted (VIR_MIGRATE_TLS)
    migration_tls: bool = False


@dataclass(frozen=True, slots=True, kw_only=True)
class MigrationRecord:
    """What happened in one migration job, beyond the port's MigrationProgress."""

    progress: MigrationProgress
    #: our wall time from start_migration to the end of the worker's libvirt call
    wall_s: float | None
    #: libvirt's completed job statistics (raw keys, e.g. time_elapsed, downtime)
    libvirt_stats: Mapping[str, object]
    error: MigrationError | None


@dataclass(frozen=True, slots=True, kw_only=True)
class HostCpu:
    name: str
    model: str | None
    features: frozenset[str]
    #: features the other hosts all have and this one lacks (it holds the baseline down)
    lacks: frozenset[str]


@dataclass(frozen=True, slots=True, kw_only=True)
class VMCpuFit:
    vm: str
    host: str
    model: str | None
    required: frozenset[str]
    incompatible_hosts: tuple[str, ...]


@dataclass(frozen=True, slots=True, kw_only=True)
class CpuReport:
    """``balancer cpu report``: the cluster baseline, who holds it down, who cannot move."""

    baseline_model: str | None
    baseline_features: frozenset[str]
    baseline_xml: str | None
    hosts: tuple[HostCpu, ...]
    hosts_below: tuple[str, ...]
    vms_not_everywhere: tuple[VMCpuFit, ...]
    unreachable: tuple[str, ...]


@dataclass(slots=True)
class _HostState:
    config: HostConfig
    conn: libvirt.virConnect | None = None
    unreachable_since: datetime | None = None
    last_error: str | None = None
    last_host: Host | None = None
    last_vms: tuple[VM, ...] = ()
    host_cpu_xml: str | None = None
    host_features: frozenset[str] = frozenset()
    host_model: str | None = None
    #: the labels the host carries itself (read once a connection, None: not read yet)
    own_labels: dict[str, str] | None = None
    node_sample: stats.CpuSample | None = None
    callback_ids: list[int] = field(default_factory=list)


@dataclass(slots=True)
class _Job:
    id: str
    vm: str
    source: str
    target: str
    options: MigrationOptions
    started: float
    dom: libvirt.virDomain
    progress: MigrationProgress
    done: threading.Event = field(default_factory=threading.Event)
    #: guards ``progress`` between the worker (final figures) and progress() (live figures)
    lock: threading.Lock = field(default_factory=threading.Lock)
    abort_requested: bool = False
    wall_s: float | None = None
    libvirt_stats: dict[str, object] = field(default_factory=dict)
    error: MigrationError | None = None


def _with_timeout(fn: Callable[[], T], timeout_s: float, what: str) -> T:
    """Run ``fn`` in a daemon thread; raise TimeoutError when it takes longer than allowed
    (a hung libvirt call must not block the cycle; its thread finishes on its own)."""
    fut: Future[T] = Future()

    def run() -> None:
        try:
            fut.set_result(fn())
        except BaseException as exc:  # handed over to the caller below
            fut.set_exception(exc)

    threading.Thread(target=run, name=f"libvirt-call {what}", daemon=True).start()
    return fut.result(timeout=timeout_s)


#: dirty-rate measurements started per host and collect, by default (each samples the guest's
#: pages for one second; the least recently measured VMs go first)
DIRTY_RATE_PER_HOST = 2


def pick_for_dirty_rate(
    running: Sequence[str],
    measured_at: Mapping[str, float],
    budget: int,
    *,
    migrating: bool,
) -> list[str]:
    """Which running VMs of a host get a dirty-rate measurement this collect: none while a
    migration involves the host (the measurement would compete with it for the guest's pages
    and the link), else the ``budget`` least recently measured (never measured first, then by
    name)."""
    if migrating or budget <= 0:
        return []
    order = sorted(running, key=lambda n: (measured_at.get(n, -1.0), n))
    return order[:budget]


def _start_dirty_rate_calc(doms: Sequence[libvirt.virDomain]) -> None:
    """Start a one-second dirty-rate measurement on each VM (read by the next snapshot)."""
    for dom in doms:
        with contextlib.suppress(libvirt.libvirtError):
            dom.startDirtyRateCalc(1, 0)


class LibvirtBackend:
    """HypervisorPort on real libvirt hosts."""

    def __init__(
        self,
        hosts: Sequence[HostConfig],
        *,
        warmup_s: float = 0.5,
        measure_dirty_rate: bool = False,
        dirty_rate_per_host: int = DIRTY_RATE_PER_HOST,
        event_history: int = 1000,
    ) -> None:
        if not hosts:
            raise HypervisorError("the libvirt backend needs at least one host")
        names = [h.name for h in hosts]
        if len(set(names)) != len(names):
            raise HypervisorError(f"host names must be unique: {names}")
        _silence_libvirt_stderr()
        ensure_event_loop()
        self._hosts: dict[str, _HostState] = {h.name: _HostState(config=h) for h in hosts}
        self._lock = threading.RLock()
        #: calls in flight per connection (id), so a dropped connection is closed only after
        self._inflight: dict[int, int] = {}
        self._idle = threading.Condition(threading.Lock())
        self._samples: dict[tuple[str, str], stats.CpuSample] = {}
        self._running: dict[tuple[str, str], bool] = {}
        self._dominfo: dict[tuple[str, str, int], domxml.DomainInfo] = {}
        self._compat: dict[tuple[str, str, str], bool] = {}
        self._expanded: dict[tuple[str, str], frozenset[str]] = {}
        self._jobs: dict[str, _Job] = {}
        self._events: deque[VMEvent] = deque(maxlen=event_history)
        self._event_seq = 0
        self._listeners: list[Callable[[VMEvent], None]] = []
        self._warmup_s = warmup_s
        self._measure_dirty_rate = measure_dirty_rate
        self._dirty_per_host = dirty_rate_per_host
        #: when each VM's last dirty-rate measurement started (monotonic), per (host, VM)
        self._dirty_at: dict[tuple[str, str], float] = {}
        #: dirty-rate measurements started so far (``GET /metrics``)
        self.dirty_rate_measurements = 0
        self._closed = False

    # -- connections -------------------------------------------------------------------------
    @property
    def host_names(self) -> list[str]:
        return list(self._hosts)

    def _state(self, host: str) -> _HostState:
        try:
            return self._hosts[host]
        except KeyError:
            raise HypervisorError(f"unknown host {host!r}", subject=host) from None

    def is_reachable(self, host: str) -> bool:
        return self._state(host).unreachable_since is None

    def connection(self, host: str) -> libvirt.virConnect:
        """The host's live connection, opened (with the host's timeout) when needed.

        Raises HostUnreachableError (and marks the host unreachable) when it does not answer."""
        st = self._state(host)
        with self._lock:
            conn = st.conn
        if conn is not None:
            try:
                if conn.isAlive():
                    return conn
            except libvirt.libvirtError:
                pass
            self._drop(st)
        cfg = st.config
        try:
            conn = _with_timeout(lambda: libvirt.open(cfg.uri), cfg.timeout_s, f"open {host}")
        except libvirt.libvirtError as exc:
            err = translate_host_error(exc, host)
            self._mark_unreachable(st, err.message)
            raise err from exc
        except TimeoutError as exc:
            err = HostUnreachableError(host, f"no answer from {cfg.uri} in {cfg.timeout_s:g}s")
            self._mark_unreachable(st, err.message)
            raise err from exc
        self._attach(st, conn)
        return conn

    def _attach(self, st: _HostState, conn: libvirt.virConnect) -> None:
        host = st.config.name
        with contextlib.suppress(libvirt.libvirtError):
            conn.setKeepAlive(max(1, int(st.config.timeout_s / 3)), 3)
        ids = []
        with contextlib.suppress(libvirt.libvirtError):
            ids.append(
                conn.domainEventRegisterAny(
                    None, libvirt.VIR_DOMAIN_EVENT_ID_LIFECYCLE, self._on_lifecycle, host
                )
            )
        with contextlib.suppress(libvirt.libvirtError):
            ids.append(
                conn.domainEventRegisterAny(
                    None, libvirt.VIR_DOMAIN_EVENT_ID_METADATA_CHANGE, self._on_metadata, host
                )
            )
        with contextlib.suppress(libvirt.libvirtError):
            conn.registerCloseCallback(self._on_close, host)
        with self._lock:
            recovered = st.unreachable_since is not None
            st.conn = conn
            st.callback_ids = ids
            st.unreachable_since = None
            st.last_error = None
            if recovered:
                # the host may have been changed while away: forget what we cached about it
                self._compat = {k: v for k, v in self._compat.items() if k[0] != host}
                st.host_cpu_xml = None
            st.own_labels = None  # a new connection: read what the host carries again
        if recovered:
            log.info("host %s is reachable again", host)

    def _drop(self, st: _HostState) -> None:
        with self._lock:
            conn, st.conn = st.conn, None
            ids, st.callback_ids = st.callback_ids, []
        if conn is None:
            return

        def release(conn: libvirt.virConnect = conn) -> None:
            # RPCs to a host that may hang: never on the caller's thread. Closing while another
            # thread is still inside a call on this connection could free it under that call,
            # so wait for those calls to end (a host hung for good keeps its connection).
            with self._idle:
                if not self._idle.wait_for(
                    lambda: id(conn) not in self._inflight, timeout=RELEASE_WAIT_S
                ):
                    log.warning("a call to a hung host never returned; its connection is kept")
                    return
            for cid in ids:
                with contextlib.suppress(libvirt.libvirtError):
                    conn.domainEventDeregisterAny(cid)
            with contextlib.suppress(libvirt.libvirtError):
                conn.unregisterCloseCallback()
            with contextlib.suppress(libvirt.libvirtError):
                conn.close()

        threading.Thread(target=release, name="libvirt-release", daemon=True).start()

    def _mark_unreachable(self, st: _HostState, why: str) -> None:
        self._drop(st)
        with self._lock:
            if st.unreachable_since is None:
                st.unreachable_since = datetime.now(UTC)
                log.warning("host %s is unreachable: %s", st.config.name, why)
            st.last_error = why

    def _on_close(self, _conn: libvirt.virConnect, reason: int, host: str) -> None:
        st = self._hosts.get(host)
        if st is None:
            return
        with self._lock:
            if st.conn is _conn:
                st.conn = None  # reopened (or marked unreachable) on the next call
                st.callback_ids = []
        log.info("connection to %s closed (reason %d)", host, reason)

    def close(self) -> None:
        self._closed = True
        for st in self._hosts.values():
            self._drop(st)

    def __enter__(self) -> LibvirtBackend:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _call(self, host: str, fn: Callable[[libvirt.virConnect], T], what: str) -> T:
        """Run ``fn(conn)`` with the host's timeout; connection failures mark it unreachable."""
        st = self._state(host)
        conn = self.connection(host)
        key = id(conn)
        with self._idle:
            self._inflight[key] = self._inflight.get(key, 0) + 1

        def tracked() -> T:
            try:
                return fn(conn)
            finally:  # when the call really ends, which may be long after a timeout
                with self._idle:
                    self._inflight[key] -= 1
                    if not self._inflight[key]:
                        del self._inflight[key]
                    self._idle.notify_all()

        try:
            return _with_timeout(tracked, st.config.timeout_s, f"{what} on {host}")
        except TimeoutError as exc:
            err = HostUnreachableError(host, f"{what} got no answer in {st.config.timeout_s:g}s")
            self._mark_unreachable(st, err.message)
            raise err from exc
        except libvirt.libvirtError as exc:
            alive = False
            with contextlib.suppress(libvirt.libvirtError):
                alive = bool(conn.isAlive())
            if alive:
                raise HypervisorError(
                    f"{what} on {host} failed: libvirt: {LibvirtFault.of(exc).describe()}",
                    subject=host,
                ) from exc
            err = translate_host_error(exc, host)
            self._mark_unreachable(st, err.message)
            raise err from exc

    # -- events ------------------------------------------------------------------------------
    def _on_metadata(
        self, _conn: libvirt.virConnect, dom: libvirt.virDomain, _kind: int, _ns: str, host: str
    ) -> None:
        """A domain's metadata changed (its labels, say): read its XML again next time."""
        uuid = dom.UUIDString()
        with self._lock:
            for key in [k for k in self._dominfo if k[0] == host and k[1] == uuid]:
                del self._dominfo[key]

    def _on_lifecycle(
        self,
        _conn: libvirt.virConnect,
        dom: libvirt.virDomain,
        event: int,
        detail: int,
        host: str,
    ) -> None:
        ev = VMEvent(
            host=host,
            vm=dom.name(),
            kind=event_kind(event, detail),
            detail=detail,
            at=datetime.now(UTC),
        )
        with self._lock:
            self._events.append(ev)
            self._event_seq += 1
            listeners = list(self._listeners)
        for listener in listeners:
            try:
                listener(ev)
            except Exception:  # a listener's bug must not stop the event loop
                log.exception("VM event listener failed on %s", ev)

    def subscribe(self, listener: Callable[[VMEvent], None]) -> Callable[[], None]:
        """Call ``listener`` for every VM lifecycle event; returns an unsubscribe function."""
        with self._lock:
            self._listeners.append(listener)

        def unsubscribe() -> None:
            with self._lock, contextlib.suppress(ValueError):
                self._listeners.remove(listener)

        return unsubscribe

    def events(self) -> list[VMEvent]:
        """The recent lifecycle events (oldest first)."""
        with self._lock:
            return list(self._events)

    @property
    def event_count(self) -> int:
        """How many events were seen so far (grows by one per event: a cheap change marker)."""
        with self._lock:
            return self._event_seq

    # -- inventory and stats -----------------------------------------------------------------
    def _domain_info(self, host: str, dom: libvirt.virDomain) -> domxml.DomainInfo:
        key = (host, dom.UUIDString(), dom.ID())
        with self._lock:
            info = self._dominfo.get(key)
        if info is None:
            info = domxml.parse_domain(dom.XMLDesc(0))
            with self._lock:
                self._dominfo[key] = info
        return info

    def _expand(self, conn: libvirt.virConnect, virt_type: str, cpu_xml: str) -> frozenset[str]:
        """Every feature of a CPU definition (its model's and its own), via libvirt."""
        key = (virt_type, cpu_xml)
        with self._lock:
            cached = self._expanded.get(key)
        if cached is not None:
            return cached
        try:
            full = conn.baselineHypervisorCPU(
                None,
                "x86_64",
                None,
                virt_type,
                [cpu_xml],
                libvirt.VIR_CONNECT_BASELINE_CPU_EXPAND_FEATURES,
            )
            feats = domxml.cpu_model_and_features(full)[1]
        except libvirt.libvirtError:
            feats = domxml.cpu_model_and_features(cpu_xml)[1]
        with self._lock:
            self._expanded[key] = feats
        return feats

    def _host_cpu(self, st: _HostState, conn: libvirt.virConnect) -> None:
        if st.host_cpu_xml is not None:
            return
        caps = conn.getDomainCapabilities(None, "x86_64", None, st.config.virt_type, 0)
        cpu_xml = domxml.host_model_cpu(caps)
        if cpu_xml is None:
            st.host_cpu_xml, st.host_model, st.host_features = "", None, frozenset()
            return
        st.host_cpu_xml = cpu_xml
        st.host_model = domxml.cpu_model_and_features(cpu_xml)[0]
        st.host_features = self._expand(conn, st.config.virt_type, cpu_xml)

    @staticmethod
    def _own_labels(st: _HostState, conn: libvirt.virConnect) -> dict[str, str]:
        """The labels the host carries in its SMBIOS data (read once a connection: hardware
        data does not change while libvirtd runs)."""
        if st.own_labels is None:
            try:
                xml = conn.getSysinfo(0)
            except libvirt.libvirtError as exc:
                log.info("%s: no sysinfo (%s): no labels from it", st.config.name, exc)
                xml = ""
            st.own_labels = (
                sysinfo_labels(xml, st.config.sysinfo_labels, host=st.config.name) if xml else {}
            )
        return st.own_labels

    def _collect(self, host: str) -> tuple[Host, tuple[VM, ...], bool]:
        """One host's inventory and stats; the flag says whether some VM had no prior sample."""
        st = self._state(host)
        cfg = st.config

        def work(conn: libvirt.virConnect) -> tuple[Host, tuple[VM, ...], bool]:
            info = conn.getInfo()  # [model, memory MiB, cpus, MHz, nodes, sockets, cores, threads]
            self._host_cpu(st, conn)
            now = time.monotonic()
            records = conn.getAllDomainStats(
                DOMAIN_STATS,
                libvirt.VIR_CONNECT_GET_ALL_DOMAINS_STATS_ACTIVE
                # never wait for a VM busy in a job (an incoming migration holds its job)
                | libvirt.VIR_CONNECT_GET_ALL_DOMAINS_STATS_NOWAIT,
            )
            vms: list[VM] = []
            calc: list[libvirt.virDomain] = []
            new = False
            seen: set[tuple[str, str]] = set()
            for dom, st_ in records:
                dinfo = self._domain_info(host, dom)
                key = (host, dinfo.uuid)
                seen.add(key)
                cpu_ns = stats.cpu_time_ns(st_)
                cores: float | None = None
                if cpu_ns is not None:
                    cur = stats.CpuSample(at_s=now, cpu_ns=cpu_ns)
                    with self._lock:
                        cores = stats.cores_used(self._samples.get(key), cur)
                        self._samples[key] = cur
                new = new or cores is None
                with self._lock:
                    self._running[(host, dinfo.name)] = (
                        st_.get("state.state") == libvirt.VIR_DOMAIN_RUNNING
                    )
                if self._measure_dirty_rate and st_.get("state.state") == (
                    libvirt.VIR_DOMAIN_RUNNING
                ):
                    calc.append(dom)
                features: frozenset[str] = frozenset()
                if dinfo.cpu_xml is not None:
                    features = self._expand(conn, dinfo.domain_type, dinfo.cpu_xml)
                vcpus = stats.vcpus(st_) or dinfo.vcpus
                memory = stats.memory_mib(st_) or dinfo.memory_mib
                used = stats.memory_used_mib(st_)
                vms.append(
                    VM(
                        name=dinfo.name,
                        host=host,
                        vcpus=vcpus,
                        memory_mib=memory,
                        # at most its vCPUs and its memory (a snapshot file refuses more): above
                        # is the jitter of two CPU-time readings, or QEMU's own RSS
                        cpu_used_cores=round(min(cores or 0.0, float(vcpus)), 4),
                        memory_used_mib=None if used is None else min(used, memory),
                        cpu_features=features,
                        labels=dict(dinfo.labels),
                        dirty_rate_mib_s=stats.dirty_rate_mib_s(st_),
                    )
                )
            if calc:
                with self._lock:
                    migrating = any(
                        not j.done.is_set() and host in (j.source, j.target)
                        for j in self._jobs.values()
                    )
                    last = {n: t for (h, n), t in self._dirty_at.items() if h == host}
                by_name = {d.name(): d for d in calc}
                chosen = pick_for_dirty_rate(
                    list(by_name), last, self._dirty_per_host, migrating=migrating
                )
                calc = [by_name[n] for n in chosen]
                with self._lock:
                    for n in chosen:
                        self._dirty_at[(host, n)] = now
                    self.dirty_rate_measurements += len(chosen)
            # starting a measurement needs a job: a VM busy migrating would make us wait, so
            # each VM's start has its own thread (one VM's migration must not hold the others')
            for dom in calc:
                threading.Thread(
                    target=_start_dirty_rate_calc,
                    args=([dom],),
                    name=f"dirtyrate {host}",
                    daemon=True,
                ).start()
            names = {v.name for v in vms}
            with self._lock:
                for k in [k for k in self._samples if k[0] == host and k not in seen]:
                    del self._samples[k]
                for k2 in [k for k in self._running if k[0] == host and k[1] not in names]:
                    del self._running[k2]
                for k3 in [k for k in self._dirty_at if k[0] == host and k[1] not in names]:
                    del self._dirty_at[k3]
            overhead_cpu = 0.0
            overhead_mem = 0
            if cfg.measure_host_overhead:
                node = stats.CpuSample(
                    at_s=now,
                    cpu_ns=stats.host_busy_ns(
                        conn.getCPUStats(libvirt.VIR_NODE_CPU_STATS_ALL_CPUS)
                    ),
                )
                busy = stats.cores_used(st.node_sample, node)
                st.node_sample = node
                if busy is not None:
                    overhead_cpu = max(0.0, busy - sum(v.cpu_used_cores for v in vms))
                mem = conn.getMemoryStats(libvirt.VIR_NODE_MEMORY_STATS_ALL_CELLS)
                used_kib = (
                    mem.get("total", 0)
                    - mem.get("free", 0)
                    - mem.get("buffers", 0)
                    - (mem.get("cached", 0))
                )
                overhead_mem = max(0, int(used_kib // 1024) - sum(v.memory_mib for v in vms))
            h = Host(
                name=host,
                cpu_cores=int(info[2]),
                memory_mib=int(info[1]),
                cpu_features=st.host_features,
                state=HostState.ACTIVE,
                labels={**self._own_labels(st, conn), **cfg.labels},
                overhead_cpu_cores=round(overhead_cpu, 4),
                overhead_memory_mib=overhead_mem,
            )
            return h, tuple(sorted(vms, key=lambda v: v.name)), new

        return self._call(host, work, "getAllDomainStats")

    def _collect_all(self) -> dict[str, tuple[Host, tuple[VM, ...], bool] | HostUnreachableError]:
        results: dict[str, tuple[Host, tuple[VM, ...], bool] | HostUnreachableError] = {}
        threads = []

        def one(host: str) -> None:
            for attempt in (1, 2):
                try:
                    results[host] = self._collect(host)
                    return
                except HostUnreachableError as exc:
                    results[host] = exc
                    return
                except HypervisorError as exc:  # e.g. a VM vanished mid-call: try once more
                    if attempt == 2:
                        results[host] = HostUnreachableError(host, exc.message)

        for host in self._hosts:
            t = threading.Thread(target=one, args=(host,), name=f"collect {host}", daemon=True)
            t.start()
            threads.append(t)
        for t in threads:
            t.join()
        return results

    def snapshot(self) -> Snapshot:
        results = self._collect_all()
        if self._warmup_s > 0 and any(
            not isinstance(r, HostUnreachableError) and r[2] for r in results.values()
        ):
            time.sleep(self._warmup_s)  # VMs seen for the first time: measure over warmup_s
            results = self._collect_all()
        hosts: list[Host] = []
        vms: list[VM] = []
        for name, st in self._hosts.items():
            r = results[name]
            if isinstance(r, HostUnreachableError):
                base = st.last_host or Host(
                    name=name, cpu_cores=1, memory_mib=1, labels=dict(st.config.labels)
                )
                hosts.append(base.with_state(HostState.UNREACHABLE))
                vms.extend(st.last_vms)
                continue
            host, host_vms, _ = r
            st.last_host, st.last_vms = host, host_vms
            hosts.append(host)
            vms.extend(host_vms)

        # a VM seen on two hosts is mid-migration (the target holds a paused incoming copy)
        # or stale on an unreachable host: keep the reachable, running one
        def rank(v: VM) -> tuple[bool, bool]:
            reachable = self._hosts[v.host].unreachable_since is None
            return reachable, self._running.get((v.host, v.name), True)

        seen: dict[str, VM] = {}
        for v in vms:
            if v.name not in seen or rank(v) > rank(seen[v.name]):
                seen[v.name] = v
        return Snapshot(hosts=tuple(hosts), vms=tuple(seen.values()))

    def unreachable_hosts(self) -> dict[str, str]:
        """Hosts currently unreachable, with the last error seen."""
        return {
            n: st.last_error or "unreachable"
            for n, st in self._hosts.items()
            if st.unreachable_since is not None
        }

    # -- locate ------------------------------------------------------------------------------
    def _find(self, vm: str, host: str) -> libvirt.virDomain | None:
        def look(conn: libvirt.virConnect) -> libvirt.virDomain | None:
            try:
                dom = conn.lookupByName(vm)
            except libvirt.libvirtError as exc:
                if LibvirtFault.of(exc).code == libvirt.VIR_ERR_NO_DOMAIN:
                    return None
                raise
            return dom if dom.isActive() else None

        return self._call(host, look, f"lookup {vm}")

    def locate(self, vm: str) -> str | None:
        running: list[str] = []
        paused: list[str] = []
        for host in self._hosts:
            try:
                dom = self._find(vm, host)
            except HypervisorError:
                continue
            if dom is None:
                continue
            try:
                state = dom.state()[0]
            except libvirt.libvirtError:
                continue
            (running if state == libvirt.VIR_DOMAIN_RUNNING else paused).append(host)
        if running:
            return running[0]
        return paused[0] if paused else None

    # -- CPU compatibility -------------------------------------------------------------------
    def _vm_cpu(self, vm: str) -> tuple[str, domxml.DomainInfo]:
        host = self.locate(vm)
        if host is None:
            raise VMNotFoundError(vm)
        dom = self._find(vm, host)
        if dom is None:
            raise VMNotFoundError(vm)
        return host, self._domain_info(host, dom)

    def _compatible(self, host: str, virt_type: str, cpu_xml: str) -> bool:
        key = (host, virt_type, cpu_xml)
        with self._lock:
            cached = self._compat.get(key)
        if cached is not None:
            return cached
        result = self._call(
            host,
            lambda c: c.compareHypervisorCPU(None, "x86_64", None, virt_type, cpu_xml, 0),
            "compareHypervisorCPU",
        )
        ok = result in (libvirt.VIR_CPU_COMPARE_IDENTICAL, libvirt.VIR_CPU_COMPARE_SUPERSET)
        with self._lock:
            self._compat[key] = ok
        return ok

    def define_vm(self, host: str, xml: str, *, start: bool) -> str:
        """Define the domain ``xml`` on ``host`` (persistently) and, with ``start``, start it
        there; its name. A domain of that name anywhere in the cluster is refused first."""
        try:
            name = domxml.parse_domain(xml).name
        except ET.ParseError as exc:
            raise InputError(f"the domain XML does not parse: {exc}", subject="xml") from exc
        if not name:
            raise InputError("the domain XML has no <name>", subject="xml")
        for other in self._hosts:
            try:
                there = self._call(other, lambda c: name in _domain_names(c), "list domains")
            except HypervisorError:
                continue  # an unreachable host: the target's own define refuses a duplicate
            if there:
                raise InputError(f"a domain named {name!r} exists on {other}", subject=name)

        def define(conn: libvirt.virConnect) -> None:
            dom = conn.defineXML(xml)
            if start:
                try:
                    dom.create()
                except libvirt.libvirtError:
                    with contextlib.suppress(libvirt.libvirtError):
                        dom.undefine()  # nothing half done is left behind
                    raise

        self._call(host, define, f"define {name}")
        return name

    def can_run(self, vm: str, host: str) -> bool:
        self._state(host)
        source, info = self._vm_cpu(vm)
        return self._fits(source, info, host)

    def _fits(self, source: str, info: domxml.DomainInfo, host: str) -> bool:
        if info.cpu_mode in (domxml.CpuMode.HOST_PASSTHROUGH, domxml.CpuMode.MAXIMUM):
            # the guest sees the source's CPU as it is: the target must offer at least that
            src = self._state(source)
            self._call(source, lambda c: self._host_cpu(src, c), "domain capabilities")
            if not src.host_cpu_xml:
                return source == host
            return source == host or self._compatible(host, info.domain_type, src.host_cpu_xml)
        if info.cpu_xml is None:
            return True
        return self._compatible(host, info.domain_type, info.cpu_xml)

    def cpu_report(self) -> CpuReport:
        """The cluster's CPU baseline (baselineHypervisorCPU, migratable), the hosts that hold
        it down and the VMs that would not run on every host."""
        hosts: list[tuple[str, _HostState]] = []
        unreachable: list[str] = []
        for name, st in self._hosts.items():

            def load(c: libvirt.virConnect, st: _HostState = st) -> None:
                self._host_cpu(st, c)

            try:
                self._call(name, load, "domain capabilities")
            except HostUnreachableError:
                unreachable.append(name)
                continue
            if st.host_cpu_xml:
                hosts.append((name, st))
        baseline_xml: str | None = None
        baseline_model: str | None = None
        baseline_features: frozenset[str] = frozenset()
        if hosts:
            first, st0 = hosts[0]
            xmls = [st.host_cpu_xml or "" for _, st in hosts]
            baseline_xml = self._call(
                first,
                lambda c: c.baselineHypervisorCPU(
                    None,
                    "x86_64",
                    None,
                    st0.config.virt_type,
                    xmls,
                    libvirt.VIR_CONNECT_BASELINE_CPU_MIGRATABLE,
                ),
                "baselineHypervisorCPU",
            )
            baseline_model = domxml.cpu_model_and_features(baseline_xml)[0]
            bxml = baseline_xml

            def expand(c: libvirt.virConnect) -> frozenset[str]:
                return self._expand(c, st0.config.virt_type, bxml)

            baseline_features = self._call(first, expand, "baselineHypervisorCPU")
        rows = []
        for name, st in hosts:
            others = [o.host_features for n, o in hosts if n != name]
            common = frozenset.intersection(*others) if others else frozenset()
            rows.append(
                HostCpu(
                    name=name,
                    model=st.host_model,
                    features=st.host_features,
                    lacks=common - st.host_features,
                )
            )
        fits = []
        for name, _ in hosts:
            try:
                doms = self._call(
                    name,
                    lambda c: c.listAllDomains(libvirt.VIR_CONNECT_LIST_DOMAINS_ACTIVE),
                    "listAllDomains",
                )
                infos = [self._domain_info(name, d) for d in doms]
            except HostUnreachableError:
                continue
            for info in infos:
                bad = []
                for other, _ in hosts:
                    if other == name:
                        continue
                    try:
                        if not self._fits(name, info, other):
                            bad.append(other)
                    except HypervisorError:
                        continue
                if bad:
                    fits.append(
                        VMCpuFit(
                            vm=info.name,
                            host=name,
                            model=info.cpu_model,
                            required=info.required_features,
                            incompatible_hosts=tuple(bad),
                        )
                    )
        return CpuReport(
            baseline_model=baseline_model,
            baseline_features=baseline_features,
            baseline_xml=baseline_xml,
            hosts=tuple(rows),
            hosts_below=tuple(r.name for r in rows if r.lacks),
            vms_not_everywhere=tuple(fits),
            unreachable=tuple(unreachable),
        )

    # -- storage -----------------------------------------------------------------------------
    def disks_needing_copy(self, vm: str, source: str, target: str) -> tuple[domxml.DiskInfo, ...]:
        """The VM's disks that the target host cannot see (a live migration must copy them)."""
        dom = self._find(vm, source)
        if dom is None:
            raise VMNotFoundError(vm)
        info = self._domain_info(source, dom)
        cfg = self._state(target).config
        candidates = domxml.disks_needing_copy(info.disks, cfg.shared_storage_prefixes)

        def pool_identity(conn: libvirt.virConnect, path: str) -> tuple[str, str] | None:
            try:
                vol = conn.storageVolLookupByPath(path)
                pool_xml = vol.storagePoolLookupByVolume().XMLDesc(0)
            except libvirt.libvirtError:
                return None
            return domxml.pool_source_identity(pool_xml)

        out = []
        for d in candidates:
            path = d.source or ""

            def check(c: libvirt.virConnect, path: str = path) -> tuple[str, str] | None:
                return pool_identity(c, path)

            # shared only when both hosts see the path in the same network pool
            theirs = self._call(target, check, "storage pools")
            if theirs is None or self._call(source, check, "storage pools") != theirs:
                out.append(d)
        return tuple(out)

    # -- migration ---------------------------------------------------------------------------
    def start_migration(self, vm: str, source: str, target: str, options: MigrationOptions) -> str:
        started = time.monotonic()
        if source == target:
            raise MigrationError(vm, source, target, "source and target are the same host")
        self._state(source)
        tcfg = self._state(target).config
        try:
            self.connection(target)
            dom = self._find(vm, source)
        except HypervisorError as exc:
            raise MigrationError(vm, source, target, exc.message) from exc
        if dom is None:
            raise MigrationError(vm, source, target, f"{vm} is not running on {source}")
        try:
            copies = self.disks_needing_copy(vm, source, target)
        except HypervisorError as exc:
            raise MigrationError(vm, source, target, exc.message) from exc
        if copies and not options.copy_storage:
            listed = ", ".join(f"{d.target} ({d.source})" for d in copies)
            raise MigrationError(
                vm,
                source,
                target,
                f"{STORAGE_NOT_SHARED}: disks {listed} are not shared with {target} and "
                "copying them is not allowed (allow_storage_copy: false); it needs a storage "
                "copy",
            )
        encrypted = self._encrypt(vm, source, target, options.tls)
        flags = MIGRATION_FLAGS
        if encrypted:
            flags |= libvirt.VIR_MIGRATE_TLS
        if options.auto_converge:
            flags |= libvirt.VIR_MIGRATE_AUTO_CONVERGE
        if options.post_copy:
            flags |= libvirt.VIR_MIGRATE_POSTCOPY
        params: dict[str, Any] = {}
        if tcfg.migration_uri:
            params[libvirt.VIR_MIGRATE_PARAM_URI] = tcfg.migration_uri
        if tcfg.listen_address:
            params[libvirt.VIR_MIGRATE_PARAM_LISTEN_ADDRESS] = tcfg.listen_address
        if options.bandwidth_mib_s > 0:
            params[libvirt.VIR_MIGRATE_PARAM_BANDWIDTH] = int(options.bandwidth_mib_s)
        if copies:
            flags |= libvirt.VIR_MIGRATE_NON_SHARED_DISK
            params[libvirt.VIR_MIGRATE_PARAM_MIGRATE_DISKS] = [d.target for d in copies]
            if tcfg.migration_uri:
                params[libvirt.VIR_MIGRATE_PARAM_DISKS_URI] = tcfg.migration_uri
        job_id = uuid.uuid4().hex[:12]
        job = _Job(
            id=job_id,
            vm=vm,
            source=source,
            target=target,
            options=options,
            started=started,
            dom=dom,
            progress=MigrationProgress(
                job_id=job_id,
                vm=vm,
                source=source,
                target=target,
                state=JobState.RUNNING,
                encrypted=encrypted,
                storage="copied" if copies else "shared",
            ),
        )
        with self._lock:
            self._jobs[job_id] = job
        threading.Thread(
            target=self._run_job,
            args=(job, tcfg.uri, params, flags),
            name=f"migrate {vm} {source}->{target}",
            daemon=True,
        ).start()
        if options.post_copy:
            threading.Thread(
                target=self._switch_to_post_copy, args=(job,), name=f"postcopy {vm}", daemon=True
            ).start()
        return job_id

    def _encrypt(self, vm: str, source: str, target: str, tls: str) -> bool:
        """Whether to encrypt the migration stream; MigrationError (before anything starts)
        when ``tls`` is "required" and a host has no migration certificates."""
        if tls not in ("off", "preferred", "required"):
            raise MigrationError(
                vm, source, target, f"migration tls must be off, preferred or required, not {tls!r}"
            )
        if tls == "off":
            return False
        lacking = [h for h in (source, target) if not self._state(h).config.migration_tls]
        if not lacking:
            return True
        if tls == "required":
            raise MigrationError(
                vm,
                source,
                target,
                f"{MIGRATION_TLS_UNAVAILABLE}: the migration stream cannot be encrypted: "
                f"{' and '.join(lacking)} {'has' if len(lacking) == 1 else 'have'} no "
                "migration TLS certificates (migration: {tls: required}); nothing was started",
            )
        return False

    def _switch_to_post_copy(self, job: _Job) -> None:
        """Switch to post-copy once the first full pass is done (iteration 2)."""
        while not job.done.wait(0.05):
            with contextlib.suppress(libvirt.libvirtError):
                if int(job.dom.jobStats().get("memory_iteration", 0)) >= 2:
                    job.dom.migrateStartPostCopy(0)
                    return

    def _run_job(self, job: _Job, target_uri: str, params: dict[str, Any], flags: int) -> None:
        try:
            # a QEMU monitor round trip: done here so that start_migration returns at once
            with contextlib.suppress(libvirt.libvirtError):
                job.dom.migrateSetMaxDowntime(int(job.options.max_downtime_ms), 0)
            if job.abort_requested:
                job.wall_s = time.monotonic() - job.started
                job.error = MigrationError(
                    job.vm, job.source, job.target, "aborted before it started"
                )
                self._finish(
                    job, replace(job.progress, state=JobState.ABORTED, error=job.error.message)
                )
                return
            job.dom.migrateToURI3(target_uri, params, flags)
        except libvirt.libvirtError as exc:
            job.wall_s = time.monotonic() - job.started
            err = translate_migration_error(exc, job.vm, job.source, job.target)
            err.__cause__ = exc
            aborted = job.abort_requested and is_aborted(exc)
            job.error = err
            log.warning("%s", err.message)
            self._finish(
                job,
                replace(
                    job.progress,
                    state=JobState.ABORTED if aborted else JobState.FAILED,
                    elapsed_s=job.wall_s,
                    error=err.message,
                ),
            )
            return
        except Exception as exc:  # never leave a job RUNNING forever
            job.wall_s = time.monotonic() - job.started
            err = MigrationError(job.vm, job.source, job.target, f"internal error: {exc!r}")
            err.__cause__ = exc
            job.error = err
            self._finish(job, replace(job.progress, state=JobState.FAILED, error=err.message))
            return
        job.wall_s = time.monotonic() - job.started
        completed: dict[str, object] = {}
        with contextlib.suppress(HypervisorError, libvirt.libvirtError):
            tdom = self._find(job.vm, job.target)
            if tdom is not None:
                completed = dict(tdom.jobStats(libvirt.VIR_DOMAIN_JOB_STATS_COMPLETED))
        job.libvirt_stats = completed
        fig = stats.job_figures(completed)
        self._finish(
            job,
            replace(
                job.progress,
                state=JobState.SUCCEEDED,
                elapsed_s=fig.elapsed_s or job.wall_s,
                data_total_mib=fig.data_total_mib,
                data_processed_mib=fig.data_processed_mib,
                data_remaining_mib=0.0,
                dirty_rate_mib_s=fig.dirty_rate_mib_s,
                iteration=fig.iteration,
                downtime_ms=fig.downtime_ms,
            ),
        )

    @staticmethod
    def _finish(job: _Job, final: MigrationProgress) -> None:
        """Publish the job's final progress; after this nothing overwrites it."""
        with job.lock:
            job.progress = final
            job.done.set()

    def _job(self, job_id: str) -> _Job:
        with self._lock:
            job = self._jobs.get(job_id)
        if job is None:
            raise HypervisorError(f"unknown migration job {job_id}", subject=job_id)
        return job

    def progress(self, job_id: str) -> MigrationProgress:
        job = self._job(job_id)
        if job.done.is_set():
            return job.progress
        try:
            live: dict[str, Any] | None = job.dom.jobStats()
        except libvirt.libvirtError:  # e.g. the source domain is gone: the job just ended
            live = None
        with job.lock:
            # checked under the lock _finish publishes under: a job that finished while we
            # asked returns its final figures, never a final state with a wall-clock elapsed
            if job.done.is_set():
                return job.progress
            if live is None or int(live.get("type", 0)) == libvirt.VIR_DOMAIN_JOB_NONE:
                return replace(job.progress, elapsed_s=time.monotonic() - job.started)
            fig = stats.job_figures(live)
            job.progress = replace(
                job.progress,
                elapsed_s=time.monotonic() - job.started,
                data_total_mib=fig.data_total_mib,
                data_processed_mib=fig.data_processed_mib,
                data_remaining_mib=fig.data_remaining_mib,
                dirty_rate_mib_s=fig.dirty_rate_mib_s,
                iteration=fig.iteration,
            )
            return job.progress

    def abort(self, job_id: str) -> None:
        job = self._job(job_id)
        if job.done.is_set():
            return
        job.abort_requested = True
        try:
            job.dom.abortJob()
        except libvirt.libvirtError as exc:
            if job.done.wait(1.0):
                return
            raise MigrationError(
                job.vm,
                job.source,
                job.target,
                f"cannot abort: libvirt: {LibvirtFault.of(exc).describe()}",
            ) from exc

    def wait(self, job_id: str, timeout_s: float) -> MigrationProgress:
        """Block until the job is final (or ``timeout_s`` passed) and return its progress."""
        job = self._job(job_id)
        job.done.wait(timeout_s)
        return self.progress(job_id)

    def job_record(self, job_id: str) -> MigrationRecord:
        job = self._job(job_id)
        return MigrationRecord(
            progress=job.progress,
            wall_s=job.wall_s,
            libvirt_stats=dict(job.libvirt_stats),
            error=job.error,
        )

    def job_error(self, job_id: str) -> MigrationError | None:
        """The typed error of a failed or aborted job (None while running or on success)."""
        return self._job(job_id).error

    def migrate(
        self,
        vm: str,
        source: str,
        target: str,
        options: MigrationOptions | None = None,
        *,
        timeout_s: float = 600.0,
    ) -> MigrationRecord:
        """Start a migration, wait for it, and raise its MigrationError if it failed."""
        job_id = self.start_migration(vm, source, target, options or MigrationOptions())
        progress = self.wait(job_id, timeout_s)
        if not progress.state.final:
            raise MigrationError(vm, source, target, f"still running after {timeout_s:g}s")
        rec = self.job_record(job_id)
        if rec.error is not None:
            raise rec.error
        return rec


class HostSettings(Protocol):
    """What the service settings say about one libvirt host (``balancer.settings.LibvirtHost``)."""

    @property
    def name(self) -> str: ...

    @property
    def uri(self) -> str: ...

    @property
    def timeout_s(self) -> float | None: ...


def backend_from_settings(hosts: Iterable[HostSettings], **kwargs: Any) -> LibvirtBackend:
    """A backend for the hosts of the settings file's ``backend: {kind: libvirt, hosts: [...]}``
    (``LibvirtBackend.resolved_hosts()``: the cluster-wide defaults already filled in)."""
    configs = []
    for h in hosts:
        address = getattr(h, "migration_address", None)
        timeout = getattr(h, "timeout_s", None)
        overhead = getattr(h, "measure_host_overhead", None)
        configs.append(
            HostConfig(
                name=h.name,
                uri=h.uri,
                timeout_s=5.0 if timeout is None else float(timeout),
                labels=dict(getattr(h, "labels", None) or {}),
                sysinfo_labels=dict(getattr(h, "labels_from_sysinfo", None) or {}),
                migration_uri=(f"tcp://[{address}]" if ":" in address else f"tcp://{address}")
                if address
                else None,
                listen_address=address,
                migration_tls=bool(getattr(h, "migration_tls", False)),
                virt_type=getattr(h, "virt_type", None) or "kvm",
                shared_storage_prefixes=tuple(getattr(h, "shared_storage", None) or ()),
                measure_host_overhead=True if overhead is None else bool(overhead),
            )
        )
    return LibvirtBackend(configs, **kwargs)


def backend_for_uris(uris: Iterable[str], **kwargs: Any) -> LibvirtBackend:
    """A backend over plain URIs, hosts named after them (``h1``, ``h2``... in order)."""
    return LibvirtBackend(
        [HostConfig(name=f"h{i}", uri=u) for i, u in enumerate(uris, start=1)], **kwargs
    )


def _domain_names(conn: libvirt.virConnect) -> set[str]:
    return {d.name() for d in conn.listAllDomains(0)}
