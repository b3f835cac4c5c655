"""The host agent's sampler: this host's CPU, memory, pressure stall information and network
throughput, read with psutil and /proc/pressure (Linux >= 4.20 with PSI enabled).

Rates (CPU cores used, network bytes per second) are differences between two readings, so the
sampler takes a first reading when it is made; each :meth:`HostAgentSampler.sample` returns the
rates since the previous call.
"""

from __future__ import annotations

import socket
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import psutil

from collectors.samples import (
    HardwareErrors,
    HostSample,
    Psi,
    PsiLine,
    PsiResource,
    SampleBatch,
    SampleSource,
    epoch_s,
)

MIB = 1024 * 1024
PRESSURE_DIR = Path("/proc/pressure")
#: where the hardware error counters are read from (a test passes a fake root)
SYSTEM_ROOT = Path("/")
EDAC_MC = "sys/devices/system/edac/mc"
INTERRUPTS = "proc/interrupts"


def parse_psi(text: str) -> PsiResource | None:
    """Parse one /proc/pressure/<resource> file (pure); None if it has no ``some`` line."""
    lines: dict[str, PsiLine] = {}
    for raw in text.splitlines():
        parts = raw.split()
        if not parts or parts[0] not in ("some", "full"):
            continue
        kv = dict(p.split("=", 1) for p in parts[1:] if "=" in p)
        try:
            lines[parts[0]] = PsiLine(
                avg10=float(kv["avg10"]),
                avg60=float(kv["avg60"]),
                avg300=float(kv["avg300"]),
                total_us=int(kv["total"]),
            )
        except (KeyError, ValueError):
            continue
    if "some" not in lines:
        return None
    return PsiResource(some=lines["some"], full=lines.get("full"))


def read_psi(pressure_dir: Path = PRESSURE_DIR) -> Psi | None:
    """PSI of cpu, memory and io; None when the kernel gives none (no directory, or PSI off:
    reading then fails with EOPNOTSUPP)."""
    found: dict[str, PsiResource | None] = {}
    for resource in ("cpu", "memory", "io"):
        try:
            text = (pressure_dir / resource).read_text(encoding="ascii")
        except OSError:
            found[resource] = None
            continue
        found[resource] = parse_psi(text)
    if all(v is None for v in found.values()):
        return None
    return Psi(cpu=found["cpu"], memory=found["memory"], io=found["io"])


def _read_int(path: Path) -> int | None:
    try:
        return int(path.read_text(encoding="ascii").strip())
    except (OSError, ValueError):
        return None


def _edac_sum(root: Path, name: str) -> int | None:
    """``name`` (ce_count, ue_count) summed over the memory controllers; None without any."""
    values = [_read_int(mc / name) for mc in sorted((root / EDAC_MC).glob("mc[0-9]*"))]
    found = [v for v in values if v is not None]
    return sum(found) if found else None


def _mce_count(root: Path) -> int | None:
    """Machine-check exceptions summed over CPUs (the ``MCE:`` line of /proc/interrupts)."""
    try:
        text = (root / INTERRUPTS).read_text(encoding="ascii", errors="replace")
    except OSError:
        return None
    for line in text.splitlines():
        parts = line.split()
        if parts and parts[0] == "MCE:":
            return sum(int(p) for p in parts[1:] if p.isdigit())
    return None


def read_hardware(root: Path = SYSTEM_ROOT) -> HardwareErrors | None:
    """The EDAC and machine-check counters under ``root``; None when the kernel gives none."""
    hw = HardwareErrors(
        edac_corrected=_edac_sum(root, "ce_count"),
        edac_uncorrected=_edac_sum(root, "ue_count"),
        mce=_mce_count(root),
    )
    return hw if hw.counters() else None


@dataclass(frozen=True, slots=True, kw_only=True)
class _Reading:
    time_s: float
    cpu_total_s: float
    cpu_busy_s: float
    rx_bytes: dict[str, int]
    tx_bytes: dict[str, int]


def _cpu_times() -> tuple[float, float]:
    """(total, busy) CPU seconds over all CPUs, as psutil's cpu_percent counts them."""
    t = psutil.cpu_times()
    total = sum(t)
    # on Linux guest time is already counted in user/nice
    total -= getattr(t, "guest", 0.0) + getattr(t, "guest_nice", 0.0)
    busy = total - t.idle - getattr(t, "iowait", 0.0)
    return total, busy


class HostAgentSampler:
    """Samples this host (see the module docstring)."""

    def __init__(
        self,
        now: datetime,
        *,
        host: str | None = None,
        pressure_dir: Path = PRESSURE_DIR,
        system_root: Path = SYSTEM_ROOT,
        exclude_nics: frozenset[str] = frozenset({"lo"}),
    ) -> None:
        self.host = host or socket.gethostname()
        self._pressure_dir = pressure_dir
        self._system_root = system_root
        self._exclude = exclude_nics
        self._cpu_cores = psutil.cpu_count(logical=True) or 1
        self._prev = self._read(now)

    def _read(self, now: datetime) -> _Reading:
        total, busy = _cpu_times()
        nics = psutil.net_io_counters(pernic=True)
        return _Reading(
            time_s=epoch_s(now),
            cpu_total_s=total,
            cpu_busy_s=busy,
            rx_bytes={n: c.bytes_recv for n, c in nics.items() if n not in self._exclude},
            tx_bytes={n: c.bytes_sent for n, c in nics.items() if n not in self._exclude},
        )

    def sample(self, now: datetime) -> SampleBatch:
        cur = self._read(now)
        prev, self._prev = self._prev, cur
        d_total = cur.cpu_total_s - prev.cpu_total_s
        d_busy = cur.cpu_busy_s - prev.cpu_busy_s
        used = self._cpu_cores * d_busy / d_total if d_total > 0 else 0.0
        used = min(float(self._cpu_cores), max(0.0, used))
        dt = cur.time_s - prev.time_s
        mem = psutil.virtual_memory()
        sample = HostSample(
            host=self.host,
            time=now,
            cpu_cores=self._cpu_cores,
            cpu_used_cores=round(used, 4),
            memory_mib=int(mem.total // MIB),
            memory_used_mib=int((mem.total - mem.available) // MIB),
            psi=read_psi(self._pressure_dir),
            net_rx_bps=_rate(prev.rx_bytes, cur.rx_bytes, dt),
            net_tx_bps=_rate(prev.tx_bytes, cur.tx_bytes, dt),
            source=SampleSource.AGENT,
            hardware=read_hardware(self._system_root),
        )
        return SampleBatch(time=now, hosts=(sample,))


def _rate(prev: dict[str, int], cur: dict[str, int], dt_s: float) -> float | None:
    """Bytes per second summed over NICs present in both readings (a counter that went back,
    e.g. a re-created interface, counts as 0)."""
    if dt_s <= 0:
        return None
    total = sum(max(0, cur[n] - prev[n]) for n in cur.keys() & prev.keys())
    return round(total / dt_s, 1)
