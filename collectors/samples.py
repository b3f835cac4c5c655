"""Sample values (pure): what a sampler measured at one moment.

A :class:`HostSample` is the host's *total* measured use (its VMs and its own processes); the
window derives the host's own use beyond its VMs (the unmanaged load) from it. A
:class:`VMSample` is one VM's use. A :class:`SampleBatch` is what one call of a sampler returns.
Datetimes are UTC-aware.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum

from balancer.port import MigrationProgress


class EntityKind(StrEnum):
    HOST = "host"
    VM = "vm"


class SampleSource(StrEnum):
    """Who measured a host sample. A host with a fresh agent sample ignores the port's: the
    agent sees the whole host (its own processes included) at the host itself."""

    PORT = "port"
    AGENT = "agent"


@dataclass(frozen=True, slots=True, kw_only=True)
class PsiLine:
    """One line of /proc/pressure/<resource>: share of time (percent) some/all tasks stalled."""

    avg10: float
    avg60: float
    avg300: float
    total_us: int


@dataclass(frozen=True, slots=True, kw_only=True)
class PsiResource:
    some: PsiLine
    #: ``full`` is absent for CPU on kernels before 5.13
    full: PsiLine | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class Psi:
    """Pressure stall information; a resource is None when the kernel does not give it."""

    cpu: PsiResource | None = None
    memory: PsiResource | None = None
    io: PsiResource | None = None

    def fields(self) -> dict[str, float]:
        """Flat numeric fields (``psi_cpu_some_avg10`` ...) for export."""
        out: dict[str, float] = {}
        for res_name in ("cpu", "memory", "io"):
            res: PsiResource | None = getattr(self, res_name)
            if res is None:
                continue
            for kind, line in (("some", res.some), ("full", res.full)):
                if line is None:
                    continue
                for avg in ("avg10", "avg60", "avg300"):
                    out[f"psi_{res_name}_{kind}_{avg}"] = float(getattr(line, avg))
        return out


@dataclass(frozen=True, slots=True, kw_only=True)
class HardwareErrors:
    """The host's hardware error counters since its boot, as the kernel exposes them (a
    counter is None when it does not): EDAC memory-controller corrected and uncorrected
    errors (summed over ``mc*``) and machine-check exceptions (``MCE`` in /proc/interrupts,
    summed over CPUs). A counter that rises between two samples is a health signal."""

    edac_corrected: int | None = None
    edac_uncorrected: int | None = None
    mce: int | None = None

    def counters(self) -> dict[str, int]:
        """The counters the kernel gave, by name."""
        out = {
            "edac_corrected": self.edac_corrected,
            "edac_uncorrected": self.edac_uncorrected,
            "mce": self.mce,
        }
        return {k: v for k, v in out.items() if v is not None}


@dataclass(frozen=True, slots=True, kw_only=True)
class HostSample:
    host: str
    time: datetime
    cpu_cores: int
    #: total CPU use of the host: its VMs plus its own processes
    cpu_used_cores: float
    memory_mib: int
    #: total memory in use on the host (MemTotal - MemAvailable)
    memory_used_mib: int
    psi: Psi | None = None
    net_rx_bps: float | None = None
    net_tx_bps: float | None = None
    source: SampleSource = SampleSource.PORT
    #: None: the agent read none (an older agent, or a kernel without EDAC and MCE counts)
    hardware: HardwareErrors | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class VMSample:
    vm: str
    host: str
    time: datetime
    cpu_used_cores: float
    memory_used_mib: int
    vcpus: int
    memory_mib: int


@dataclass(frozen=True, slots=True, kw_only=True)
class SampleBatch:
    """What one sampler call returns: every sample taken at ``time``."""

    time: datetime
    hosts: tuple[HostSample, ...] = ()
    vms: tuple[VMSample, ...] = ()


class MigrationOutcome(StrEnum):
    STARTED = "started"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    ABORTED = "aborted"


@dataclass(frozen=True, slots=True, kw_only=True)
class MigrationEvent:
    """One step in a migration's life, exported as a ``migration`` point."""

    time: datetime
    job_id: str
    vm: str
    source: str
    target: str
    outcome: MigrationOutcome
    elapsed_s: float = 0.0
    data_total_mib: float = 0.0
    downtime_ms: float | None = None
    #: the reason constant of the move (e.g. ``cpu_imbalance``), when known
    reason: str | None = None

    @staticmethod
    def from_progress(
        progress: MigrationProgress, time: datetime, reason: str | None = None
    ) -> MigrationEvent:
        outcome = (
            MigrationOutcome.STARTED
            if not progress.state.final
            else MigrationOutcome(progress.state.value)
        )
        return MigrationEvent(
            time=time,
            job_id=progress.job_id,
            vm=progress.vm,
            source=progress.source,
            target=progress.target,
            outcome=outcome,
            elapsed_s=progress.elapsed_s,
            data_total_mib=progress.data_total_mib,
            downtime_ms=progress.downtime_ms,
            reason=reason,
        )


def epoch_s(t: datetime) -> float:
    """Seconds since the epoch of a UTC-aware datetime (naive datetimes are refused)."""
    if t.tzinfo is None:
        raise ValueError(f"naive datetime {t.isoformat()}: times must be UTC-aware")
    return t.timestamp()


def from_epoch_s(s: float) -> datetime:
    return datetime.fromtimestamp(s, tz=UTC)
