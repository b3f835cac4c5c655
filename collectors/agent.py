"""The host agent (``balancer agent``): sample this host every ``interval_s`` and push each sample
to the service's ingest endpoint (``POST <url>/api/v1/ingest/host``, the JSON document of
:func:`host_sample_doc`) and/or to InfluxDB (through the spooling exporter). Stops cleanly when
its stop event is set (the CLI sets it on SIGTERM and SIGINT).

The service's ingest endpoint turns the document back into a sample with
:func:`host_sample_from_doc` and feeds it to its window (``Window.ingest``).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any, Protocol

import httpx

from balancer.errors import InputError
from collectors.hostagent import HostAgentSampler
from collectors.influx import InfluxExporter
from collectors.samples import (
    HardwareErrors,
    HostSample,
    Psi,
    PsiLine,
    PsiResource,
    SampleBatch,
    SampleSource,
)

log = logging.getLogger("balancer.collectors.agent")

INGEST_PATH = "/api/v1/ingest/host"
DOC_KEYS = (
    "host",
    "time",
    "cpu_cores",
    "cpu_used_cores",
    "memory_mib",
    "memory_used_mib",
    "psi",
    "net_rx_bps",
    "net_tx_bps",
    "hardware",
)
#: keys an older agent may leave out
OPTIONAL_KEYS = frozenset({"hardware"})


HW_KEYS = ("edac_corrected", "edac_uncorrected", "mce")


def _line_doc(line: PsiLine | None) -> dict[str, float | int] | None:
    if line is None:
        return None
    return {
        "avg10": line.avg10,
        "avg60": line.avg60,
        "avg300": line.avg300,
        "total_us": line.total_us,
    }


def _psi_doc(psi: Psi | None) -> dict[str, Any] | None:
    if psi is None:
        return None
    out: dict[str, Any] = {}
    for name in ("cpu", "memory", "io"):
        res: PsiResource | None = getattr(psi, name)
        out[name] = (
            None if res is None else {"some": _line_doc(res.some), "full": _line_doc(res.full)}
        )
    return out


def host_sample_doc(s: HostSample) -> dict[str, Any]:
    """The agent's JSON document of one sample (``balancer agent --once --json``)."""
    return {
        "host": s.host,
        "time": s.time.astimezone(UTC).isoformat(),
        "cpu_cores": s.cpu_cores,
        "cpu_used_cores": s.cpu_used_cores,
        "memory_mib": s.memory_mib,
        "memory_used_mib": s.memory_used_mib,
        "psi": _psi_doc(s.psi),
        "net_rx_bps": s.net_rx_bps,
        "net_tx_bps": s.net_tx_bps,
        "hardware": None if s.hardware is None else s.hardware.counters(),
    }


def _line_from(doc: Any) -> PsiLine | None:
    if doc is None:
        return None
    return PsiLine(
        avg10=float(doc["avg10"]),
        avg60=float(doc["avg60"]),
        avg300=float(doc["avg300"]),
        total_us=int(doc["total_us"]),
    )


def host_sample_from_doc(doc: Mapping[str, Any]) -> HostSample:
    """Parse an ingest document (raises :class:`InputError` naming the field)."""
    missing = [k for k in DOC_KEYS if k not in doc and k not in OPTIONAL_KEYS]
    if missing:
        raise InputError(f"host sample: missing {', '.join(missing)}", subject="host sample")
    field = "time"
    try:
        t = datetime.fromisoformat(str(doc["time"]))
        if t.tzinfo is None:
            raise ValueError("time must carry a UTC offset")
        psi_doc = doc["psi"]
        psi = None
        if psi_doc is not None:
            field = "psi"
            parts: dict[str, PsiResource | None] = {}
            for name in ("cpu", "memory", "io"):
                r = psi_doc.get(name)
                some = _line_from(r["some"]) if r else None
                parts[name] = (
                    PsiResource(some=some, full=_line_from(r.get("full"))) if some else None
                )
            psi = Psi(cpu=parts["cpu"], memory=parts["memory"], io=parts["io"])
        field = "hardware"
        hw_doc = doc.get("hardware")
        hardware = None
        if hw_doc is not None:
            hardware = HardwareErrors(
                **{k: None if hw_doc.get(k) is None else int(hw_doc[k]) for k in HW_KEYS}
            )
        field = "numbers"
        return HostSample(
            host=str(doc["host"]),
            time=t.astimezone(UTC),
            cpu_cores=int(doc["cpu_cores"]),
            cpu_used_cores=float(doc["cpu_used_cores"]),
            memory_mib=int(doc["memory_mib"]),
            memory_used_mib=int(doc["memory_used_mib"]),
            psi=psi,
            net_rx_bps=None if doc["net_rx_bps"] is None else float(doc["net_rx_bps"]),
            net_tx_bps=None if doc["net_tx_bps"] is None else float(doc["net_tx_bps"]),
            source=SampleSource.AGENT,
            hardware=hardware,
        )
    except (TypeError, ValueError, KeyError, AttributeError) as exc:
        raise InputError(f"host sample: bad {field}: {exc}", subject=str(doc.get("host"))) from exc


class Target(Protocol):
    def push(self, sample: HostSample) -> None:
        """Hand over one sample (never raises for a target that is down: it keeps it)."""
        ...

    def close(self) -> None: ...


class HttpIngestTarget:
    """POSTs samples to the service, oldest first; keeps up to ``max_pending`` samples in
    memory while the service is unreachable (the oldest beyond that are dropped and counted)."""

    def __init__(
        self,
        base_url: str,
        *,
        token: str | None = None,
        timeout_s: float = 5.0,
        max_pending: int = 1000,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._client = httpx.Client(
            base_url=base_url.rstrip("/"), headers=headers, timeout=timeout_s, transport=transport
        )
        self.pending: deque[HostSample] = deque()
        self._max = max_pending
        self.dropped = 0
        self.sent = 0
        self._last_error: str | None = None

    def push(self, sample: HostSample) -> None:
        self.pending.append(sample)
        while len(self.pending) > self._max:
            self.pending.popleft()
            self.dropped += 1
        self.flush()

    def flush(self) -> None:
        while self.pending:
            sample = self.pending[0]
            try:
                r = self._client.post(INGEST_PATH, json=host_sample_doc(sample))
            except httpx.HTTPError as exc:
                self._error(type(exc).__name__)
                return
            if r.status_code >= 500 or r.status_code in (401, 403, 408, 429):
                self._error(f"HTTP {r.status_code}")
                return
            self.pending.popleft()
            if r.status_code >= 400:
                log.error(
                    "ingest refused the sample of %s at %s: HTTP %d",
                    sample.host,
                    sample.time.isoformat(),
                    r.status_code,
                )
                continue
            self.sent += 1
            self._last_error = None

    def _error(self, message: str) -> None:
        if message != self._last_error:
            log.warning(
                "ingest at %s failed (%s); %d samples kept",
                self._client.base_url,
                message,
                len(self.pending),
            )
        self._last_error = message

    def close(self) -> None:
        self._client.close()


class InfluxTarget:
    """Writes samples through the spooling exporter (sent at each push; kept on disk if not)."""

    def __init__(self, exporter: InfluxExporter) -> None:
        self.exporter = exporter

    def push(self, sample: HostSample) -> None:
        self.exporter.export_batch(SampleBatch(time=sample.time, hosts=(sample,)))
        self.exporter.flush()

    def close(self) -> None:
        deadline = time.monotonic() + self.exporter.settings.timeout_s
        while time.monotonic() < deadline:
            result = self.exporter.flush(force=True, max_batches=1)
            if result.error or result.pending_lines == 0:
                break
        self.exporter.close()


def run_agent(
    sampler: HostAgentSampler,
    targets: Sequence[Target],
    *,
    interval_s: float,
    stop: threading.Event,
    now: Callable[[], datetime] = lambda: datetime.now(UTC),
    max_cycles: int | None = None,
) -> int:
    """Sample every ``interval_s`` (on a fixed schedule) and push to every target until ``stop``
    is set (or ``max_cycles``); closes the targets; returns the number of samples taken."""
    cycles = 0
    next_at = time.monotonic() + interval_s
    try:
        while not stop.wait(max(0.0, next_at - time.monotonic())):
            next_at += interval_s
            if next_at < time.monotonic():  # fell behind (suspend): do not burst
                next_at = time.monotonic() + interval_s
            (sample,) = sampler.sample(now()).hosts
            for t in targets:
                t.push(sample)
            cycles += 1
            if max_cycles is not None and cycles >= max_cycles:
                break
    finally:
        for t in targets:
            t.close()
    return cycles
