"""The simulated cluster: an in-process, deterministic implementation of the hypervisor port.

* Migrations take time in proportion to memory and dirty rate (a pre-copy model: each round
  copies what the guest dirtied during the previous one, until the rest fits in the allowed
  downtime), evaluated lazily from the clock: there is no background thread, so a test that
  drives a :class:`~balancer.sim.clock.ManualClock` sees exactly the same thing every time.
* While a VM migrates its memory is reserved on the target (and still used on the source).
* Faults that tests inject: a migration that fails at some fraction, a migration that stalls,
  a host that becomes unreachable (its migrations fail; it neither sends nor receives).
* Optional state file: with ``state_path`` every change is written atomically to disk and read
  back on construction, so the *hypervisors* outlive a balancer process that is killed — a
  migration in flight keeps going (its completion is computed from the clock) exactly as
  libvirt's would while the balancer is down. Several processes may share one state file (a
  standby and the leader of the high-availability service): every operation holds an exclusive
  ``fcntl.flock`` on ``<state file>.lock`` and reads the file again when another process
  changed it, so each operation sees and extends the latest state.
"""

from __future__ import annotations

import contextlib
import fcntl
import itertools
import math
import os
import threading
from collections.abc import Iterator
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from balancer.errors import InputError, MigrationError, VMNotFoundError
from balancer.inputs import SNAPSHOT, load_json
from balancer.model import HostState, Snapshot
from balancer.port import Clock, JobState, MigrationOptions, MigrationProgress
from balancer.snapshot_io import snapshot_from_dict, snapshot_to_dict, write_json_atomic

#: default link bandwidth between simulated hosts (10 GbE, a bit under line rate)
DEFAULT_LINK_MIB_S = 1100.0
#: fixed cost of a migration: connection setup, device state, switch-over
SETUP_S = 0.8
MAX_ROUNDS = 30


@dataclass(frozen=True, slots=True, kw_only=True)
class MigrationCost:
    duration_s: float
    data_mib: float
    downtime_ms: float
    rounds: int


def migration_cost(
    memory_mib: float,
    dirty_rate_mib_s: float,
    bandwidth_mib_s: float,
    max_downtime_ms: float,
    auto_converge: bool = True,
) -> MigrationCost:
    """Pre-copy model: round 0 copies all memory; round k copies what was dirtied in k-1."""
    bw = max(1.0, bandwidth_mib_s)
    dirty = max(0.0, dirty_rate_mib_s)
    to_copy = float(memory_mib)
    data = 0.0
    elapsed = 0.0
    stop_mib = bw * max(1.0, max_downtime_ms) / 1000.0
    rounds = 0
    while rounds < MAX_ROUNDS:
        t = to_copy / bw
        data += to_copy
        elapsed += t
        rounds += 1
        to_copy = min(float(memory_mib), dirty * t)
        if to_copy <= stop_mib:
            break
        if auto_converge and rounds >= 3:
            dirty *= 0.7  # throttling the guest's vCPUs slows its dirtying
    downtime_ms = 1000.0 * to_copy / bw + 15.0
    data += to_copy
    return MigrationCost(
        duration_s=SETUP_S + elapsed + downtime_ms / 1000.0,
        data_mib=data,
        downtime_ms=downtime_ms,
        rounds=rounds,
    )


@dataclass(slots=True, kw_only=True)
class _Job:
    job_id: str
    vm: str
    source: str
    target: str
    started: datetime
    cost: MigrationCost
    state: JobState = JobState.RUNNING
    ended: datetime | None = None
    error: str | None = None
    fail_at: float | None = None  # fraction at which it fails
    fail_message: str = "injected failure"
    stall_at: float | None = None  # fraction at which progress stops

    def to_doc(self) -> dict[str, Any]:
        return {
            "job_id": self.job_id,
            "vm": self.vm,
            "source": self.source,
            "target": self.target,
            "started": self.started.isoformat(),
            "state": self.state.value,
            "ended": self.ended.isoformat() if self.ended else None,
            "error": self.error,
            "fail_at": self.fail_at,
            "fail_message": self.fail_message,
            "stall_at": self.stall_at,
            "cost": [
                self.cost.duration_s,
                self.cost.data_mib,
                self.cost.downtime_ms,
                self.cost.rounds,
            ],
        }

    @staticmethod
    def from_doc(d: dict[str, Any]) -> _Job:
        c = d["cost"]
        return _Job(
            job_id=d["job_id"],
            vm=d["vm"],
            source=d["source"],
            target=d["target"],
            started=datetime.fromisoformat(d["started"]),
            cost=MigrationCost(duration_s=c[0], data_mib=c[1], downtime_ms=c[2], rounds=int(c[3])),
            state=JobState(d["state"]),
            ended=datetime.fromisoformat(d["ended"]) if d["ended"] else None,
            error=d["error"],
            fail_at=d["fail_at"],
            fail_message=d["fail_message"],
            stall_at=d["stall_at"],
        )


class SimulatedCluster:
    """A HypervisorPort over a simulated cluster."""

    def __init__(
        self,
        snapshot: Snapshot,
        *,
        clock: Clock,
        link_mib_s: float = DEFAULT_LINK_MIB_S,
        state_path: str | Path | None = None,
    ) -> None:
        self._clock = clock
        self._lock = threading.RLock()
        self._link_mib_s = link_mib_s
        self._state_path = Path(state_path) if state_path else None
        self._jobs: dict[str, _Job] = {}
        self._unreachable: set[str] = set()
        self._pending_faults: dict[str, tuple[str, float, str]] = {}  # vm -> (kind, at, msg)
        self._seq = itertools.count(1)
        self._snap = snapshot
        self._depth = 0
        self._stamp: tuple[int, int, int] | None = None
        with self._synced():
            if self._state_path is None or self._stamp is None:
                self._save()

    @contextlib.contextmanager
    def _synced(self) -> Iterator[None]:
        """The thread lock and, with a state file, the file lock across processes (re-entrant
        within this object), with the state read again when another process changed it."""
        with self._lock:
            if self._state_path is None or self._depth:
                self._depth += 1
                try:
                    yield
                finally:
                    self._depth -= 1
                return
            lock_path = self._state_path.with_name(self._state_path.name + ".lock")
            with open(lock_path, "a+") as fh:
                fcntl.flock(fh, fcntl.LOCK_EX)
                self._depth = 1
                try:
                    stamp = self._file_stamp()
                    if stamp is not None and stamp != self._stamp:
                        self._load()
                        self._stamp = stamp
                    yield
                finally:
                    self._depth = 0
                    fcntl.flock(fh, fcntl.LOCK_UN)

    def _file_stamp(self) -> tuple[int, int, int] | None:
        assert self._state_path is not None
        try:
            st = os.stat(self._state_path)
        except FileNotFoundError:
            return None
        return (st.st_ino, st.st_mtime_ns, st.st_size)

    # -- persistence -------------------------------------------------------------------------
    def _load(self) -> None:
        assert self._state_path is not None
        doc = load_json(self._state_path, SNAPSHOT)  # never blocks, bounded (balancer.inputs)
        self._snap = snapshot_from_dict(doc["snapshot"], path=str(self._state_path))
        self._jobs = {j["job_id"]: _Job.from_doc(j) for j in doc["jobs"]}
        self._unreachable = set(doc["unreachable"])
        self._pending_faults = {k: (v[0], float(v[1]), v[2]) for k, v in doc["faults"].items()}
        self._seq = itertools.count(int(doc["seq"]))

    def _save(self) -> None:
        if self._state_path is None:
            return
        seq = next(self._seq)
        self._seq = itertools.count(seq)
        write_json_atomic(
            self._state_path,
            {
                "snapshot": snapshot_to_dict(self._snap),
                "jobs": [j.to_doc() for j in self._jobs.values()],
                "unreachable": sorted(self._unreachable),
                "faults": {k: list(v) for k, v in self._pending_faults.items()},
                "seq": seq,
            },
        )
        self._stamp = self._file_stamp()

    # -- time --------------------------------------------------------------------------------
    def _elapsed(self, job: _Job, now: datetime) -> float:
        return max(0.0, (now - job.started).total_seconds())

    def _advance(self) -> None:
        """Settle every job whose outcome is decided by now (lazy, deterministic)."""
        now = self._clock.now()
        changed = False
        for job in self._jobs.values():
            if job.state is not JobState.RUNNING:
                continue
            dur = job.cost.duration_s
            el = self._elapsed(job, now)
            if job.source in self._unreachable or job.target in self._unreachable:
                dead = job.target if job.target in self._unreachable else job.source
                self._finish(
                    job, JobState.FAILED, now, f"host {dead} stopped answering during the migration"
                )
                changed = True
            elif job.fail_at is not None and el >= job.fail_at * dur:
                self._finish(
                    job,
                    JobState.FAILED,
                    job.started + timedelta(seconds=job.fail_at * dur),
                    job.fail_message,
                )
                changed = True
            elif job.stall_at is None and el >= dur:
                self._finish(job, JobState.SUCCEEDED, job.started + timedelta(seconds=dur), None)
                changed = True
        if changed:
            self._save()

    def _finish(self, job: _Job, state: JobState, when: datetime, error: str | None) -> None:
        job.state = state
        job.ended = when
        job.error = error
        if state is JobState.SUCCEEDED:
            self._snap = self._snap.with_placement({job.vm: job.target})

    def _running(self) -> list[_Job]:
        return [j for j in self._jobs.values() if j.state is JobState.RUNNING]

    # -- HypervisorPort ----------------------------------------------------------------------
    def snapshot(self) -> Snapshot:
        with self._synced():
            self._advance()
            if not self._unreachable:
                return self._snap
            return replace(
                self._snap,
                hosts=tuple(
                    h.with_state(HostState.UNREACHABLE) if h.name in self._unreachable else h
                    for h in self._snap.hosts
                ),
            )

    def can_run(self, vm: str, host: str) -> bool:
        with self._synced():
            try:
                return self._snap.vm(vm).runs_on(self._snap.host(host))
            except KeyError:
                return False

    def start_migration(self, vm: str, source: str, target: str, options: MigrationOptions) -> str:
        with self._synced():
            self._advance()
            try:
                v = self._snap.vm(vm)
            except KeyError:
                raise MigrationError(vm, source, target, "no such VM") from None
            hosts = self._snap.host_map()
            if target not in hosts:
                raise MigrationError(vm, source, target, f"no such host {target}")
            if v.host != source:
                raise MigrationError(vm, source, target, f"VM runs on {v.host}, not on {source}")
            for h in (source, target):
                if h in self._unreachable:
                    raise MigrationError(vm, source, target, f"host {h} is unreachable")
            if source == target:
                raise MigrationError(vm, source, target, "source and target are the same host")
            if any(j.vm == vm for j in self._running()):
                raise MigrationError(vm, source, target, "a migration of this VM is running")
            if not v.runs_on(hosts[target]):
                missing = ", ".join(sorted(v.cpu_features - hosts[target].cpu_features))
                raise MigrationError(vm, source, target, f"target CPU lacks {missing}")
            # the hypervisor itself refuses what does not fit in physical memory
            used = sum(x.memory_mib for x in self._snap.vms if x.host == target)
            inbound = sum(
                self._snap.vm(j.vm).memory_mib for j in self._running() if j.target == target
            )
            if used + inbound + v.memory_mib > hosts[target].memory_mib:
                raise MigrationError(vm, source, target, "target has not enough free memory")
            bw = float(options.bandwidth_mib_s) if options.bandwidth_mib_s else self._link_mib_s
            bw = min(bw, self._link_mib_s)
            cost = migration_cost(
                v.memory_used,
                v.dirty_rate_mib_s or 0.0,
                bw,
                options.max_downtime_ms,
                options.auto_converge,
            )
            job = _Job(
                job_id=f"sim-{next(self._seq)}",
                vm=vm,
                source=source,
                target=target,
                started=self._clock.now(),
                cost=cost,
            )
            fault = self._pending_faults.pop(vm, None)
            if fault:
                kind, at, msg = fault
                if kind == "fail":
                    job.fail_at, job.fail_message = at, msg
                else:
                    job.stall_at = at
            self._jobs[job.job_id] = job
            self._save()
            return job.job_id

    def progress(self, job_id: str) -> MigrationProgress:
        with self._synced():
            self._advance()
            job = self._jobs.get(job_id)
            if job is None:
                raise VMNotFoundError(f"(job {job_id})")
            now = job.ended or self._clock.now()
            el = self._elapsed(job, now)
            frac = min(1.0, el / job.cost.duration_s) if job.cost.duration_s else 1.0
            if job.stall_at is not None and job.state is JobState.RUNNING:
                frac = min(frac, job.stall_at)
            if job.state is JobState.SUCCEEDED:
                frac = 1.0
            total = job.cost.data_mib
            processed = total * frac
            dirty = self._snap.vm(job.vm).dirty_rate_mib_s or 0.0
            return MigrationProgress(
                job_id=job.job_id,
                vm=job.vm,
                source=job.source,
                target=job.target,
                state=job.state,
                elapsed_s=el,
                data_total_mib=total,
                data_processed_mib=processed,
                data_remaining_mib=max(0.0, total - processed),
                dirty_rate_mib_s=dirty,
                iteration=max(1, math.ceil(frac * job.cost.rounds)),
                downtime_ms=job.cost.downtime_ms if job.state is JobState.SUCCEEDED else None,
                error=job.error,
            )

    def abort(self, job_id: str) -> None:
        with self._synced():
            self._advance()
            job = self._jobs.get(job_id)
            if job is not None and job.state is JobState.RUNNING:
                self._finish(job, JobState.ABORTED, self._clock.now(), "aborted on request")
                self._save()

    def locate(self, vm: str) -> str | None:
        with self._synced():
            self._advance()
            try:
                host = self._snap.vm(vm).host
            except KeyError:
                return None
            return None if host in self._unreachable else host

    # -- test and demo controls (not part of the port) ---------------------------------------
    def inject_failure(
        self, vm: str, *, at_fraction: float = 0.5, message: str = "injected failure"
    ) -> None:
        """The next migration of ``vm`` fails once it reaches ``at_fraction``."""
        with self._synced():
            self._pending_faults[vm] = ("fail", at_fraction, message)
            self._save()

    def inject_stall(self, vm: str, *, at_fraction: float = 0.3) -> None:
        """The next migration of ``vm`` stops making progress at ``at_fraction``."""
        with self._synced():
            self._pending_faults[vm] = ("stall", at_fraction, "")
            self._save()

    def set_reachable(self, host: str, reachable: bool) -> None:
        with self._synced():
            self._snap.host(host)
            self._advance()
            if reachable:
                self._unreachable.discard(host)
            else:
                self._unreachable.add(host)
            self._advance()
            self._save()

    def set_host_state(self, host: str, state: HostState) -> None:
        with self._synced():
            self._snap = self._snap.with_host_state(host, state)
            self._save()

    def set_vm_cpu(self, vm: str, cpu_used_cores: float) -> None:
        self.set_cpu_usage({vm: cpu_used_cores})

    def set_cpu_usage(self, usage: dict[str, float]) -> None:
        """Set the measured CPU of many VMs at once (trace replay, demos). A VM cannot use
        more cores than it has vCPUs (a real hypervisor never reports it, and a snapshot file
        with it is refused): such a usage is refused, naming the VM, and nothing is set."""
        with self._synced():
            for v in self._snap.vms:
                cores = usage.get(v.name)
                if cores is not None and not 0.0 <= cores <= v.vcpus:
                    raise InputError(
                        f"vm {v.name}: cpu_used_cores {cores:g} is outside 0..{v.vcpus} "
                        f"(its vCPUs)",
                        subject=v.name,
                    )
            self._snap = self._snap.with_vms(
                replace(v, cpu_used_cores=usage[v.name]) if v.name in usage else v
                for v in self._snap.vms
            )
            self._save()

    def find_job(self, vm: str, *, target: str, since: datetime) -> str | None:
        """The newest job migrating ``vm`` to ``target`` started at or after ``since`` (running
        or final), or None. Lets the executor recover a migration it started but whose job id it
        could not write down before it was killed."""
        with self._synced():
            self._advance()
            found = [
                j
                for j in self._jobs.values()
                if j.vm == vm and j.target == target and j.started >= since
            ]
            return max(found, key=lambda j: j.started).job_id if found else None

    def jobs(self) -> list[MigrationProgress]:
        with self._synced():
            return [self.progress(j) for j in list(self._jobs)]
