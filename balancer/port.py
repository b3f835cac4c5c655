"""The one narrow port between the balancer and the hypervisors.

Everything above it (collectors, executor, service) works the same on the simulated cluster
(:mod:`balancer.sim`) and on libvirt (:mod:`balancer.libvirt`). Dry-run and simulation swap the
implementation; they are never ``if dry_run:`` branches.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Protocol, runtime_checkable

from balancer.model import Snapshot


class JobState(StrEnum):
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    ABORTED = "aborted"

    @property
    def final(self) -> bool:
        return self is not JobState.RUNNING


@dataclass(frozen=True, slots=True, kw_only=True)
class MigrationOptions:
    bandwidth_mib_s: int = 0  # 0 = unlimited
    max_downtime_ms: int = 300
    auto_converge: bool = True
    post_copy: bool = False
    copy_storage: bool = False
    #: encrypt the migration stream (VIR_MIGRATE_TLS): "off", "preferred" (when both hosts
    #: have migration certificates) or "required" (refuse to migrate in clear text)
    tls: str = "off"


@dataclass(frozen=True, slots=True, kw_only=True)
class MigrationProgress:
    job_id: str
    vm: str
    source: str
    target: str
    state: JobState
    elapsed_s: float = 0.0
    data_total_mib: float = 0.0
    data_processed_mib: float = 0.0
    data_remaining_mib: float = 0.0
    dirty_rate_mib_s: float = 0.0
    iteration: int = 0
    #: filled when the job is final and succeeded
    downtime_ms: float | None = None
    error: str | None = None
    #: the migration stream was TLS-encrypted (None: not known, e.g. a simulated move)
    encrypted: bool | None = None
    #: how the disks moved: "shared" (nothing to copy) or "copied" (NON_SHARED_DISK)
    storage: str | None = None

    @property
    def fraction(self) -> float:
        if self.state is JobState.SUCCEEDED:
            return 1.0
        if self.data_total_mib <= 0:
            return 0.0
        return min(
            1.0,
            self.data_processed_mib
            / max(self.data_total_mib, self.data_processed_mib + self.data_remaining_mib),
        )


class Clock(Protocol):
    def now(self) -> datetime: ...

    def sleep(self, seconds: float) -> None: ...


@runtime_checkable
class HypervisorPort(Protocol):
    """Inventory, stats, compatibility, migrate, progress, abort, locate."""

    def snapshot(self) -> Snapshot:
        """Every host with its stats (an unreachable host is listed with state
        ``unreachable`` and its last known VMs) and every VM with its stats."""
        ...

    def can_run(self, vm: str, host: str) -> bool:
        """Whether the VM's CPU definition runs on the host (CPU compatibility)."""
        ...

    def start_migration(self, vm: str, source: str, target: str, options: MigrationOptions) -> str:
        """Start a live migration and return its job id at once.

        Raises :class:`balancer.errors.MigrationError` when it cannot start."""
        ...

    def progress(self, job_id: str) -> MigrationProgress:
        """The job's progress; final jobs keep answering with their outcome."""
        ...

    def abort(self, job_id: str) -> None:
        """Ask the running job to abort (the VM stays on its source)."""
        ...

    def locate(self, vm: str) -> str | None:
        """The host the VM runs on now, or None when no reachable host runs it."""
        ...
