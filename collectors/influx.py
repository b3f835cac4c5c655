"""InfluxDB export (official ``influxdb-client``) with an on-disk spool, and the Flux read path.

Write path::

    samples / migration events ──► line protocol ──► spool (SQLite, append-only, fsync)
                                                        │  flush(): oldest first, batch_size lines
                                                        ▼
                                         InfluxDB /api/v2/write (synchronous, ms precision)

* **None lost**: a spool row is deleted only after the server acknowledged it (HTTP 204). While the
  server is down, rows stay on disk (also across restarts) and are sent when it is back, retried
  with exponential backoff (``retry_min_s`` doubling to ``retry_max_s``).
* **None doubled**: every point carries its own timestamp and tags, so a point sent twice (the
  server took it but the answer was lost) is the same series point and overwrites itself in
  InfluxDB. A batch the server refuses as malformed (400/413/422) is moved to a ``dead`` table
  and counted, never retried forever and never silently dropped. Beyond ``spool_max_mib`` the
  oldest rows are dropped and counted in ``stats().dropped_lines``.
* The token is read from the environment or a file (:meth:`InfluxSettings.token`) and never
  logged; errors are logged with status code and reason only.

Points (measurement, tags, fields), all numeric fields as floats:

* ``host``  tags ``cluster, host``: ``cpu_cores, cpu_used_cores, memory_mib, memory_used_mib``,
  ``net_rx_bps, net_tx_bps`` and ``psi_<resource>_<some|full>_<avg10|avg60|avg300>`` when known;
* ``vm``    tags ``cluster, vm, host``: ``cpu_used_cores, memory_used_mib, vcpus, memory_mib``;
* ``migration`` tags ``cluster, vm, source, target, outcome, job_id[, reason]``:
  ``elapsed_s, data_total_mib[, downtime_ms]``.

Read path: :func:`history_query` builds the Flux query that returns the window's history (pivoted
so one record is one sample), :func:`parse_history` turns its records into sample batches and
:func:`rebuild_window` feeds them to a :class:`~collectors.window.Window` at start.
"""

from __future__ import annotations

import logging
import math
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

from balancer.errors import StorageError
from collectors.samples import (
    HostSample,
    MigrationEvent,
    SampleBatch,
    VMSample,
    epoch_s,
)
from collectors.settings import InfluxSettings
from collectors.window import Window

log = logging.getLogger("balancer.collectors.influx")

HOST_MEASUREMENT = "host"
VM_MEASUREMENT = "vm"
MIGRATION_MEASUREMENT = "migration"
_NOT_RETRYABLE = frozenset({400, 413, 422})

# -- line protocol ---------------------------------------------------------------------------


def _esc_key(s: str) -> str:
    """Escape a tag key, tag value or field key."""
    return s.replace("\\", "\\\\").replace(",", "\\,").replace("=", "\\=").replace(" ", "\\ ")


def _esc_measurement(s: str) -> str:
    return s.replace("\\", "\\\\").replace(",", "\\,").replace(" ", "\\ ")


def _ts_ms(t: datetime) -> int:
    return round(epoch_s(t) * 1000)


def line(
    measurement: str, tags: Mapping[str, str], fields: Mapping[str, float], t: datetime
) -> str:
    """One line-protocol point (ms precision); tags sorted, empty tag values and non-finite
    field values left out."""
    tag_part = "".join(f",{_esc_key(k)}={_esc_key(v)}" for k, v in sorted(tags.items()) if v != "")
    field_part = ",".join(
        f"{_esc_key(k)}={float(v)!r}" for k, v in fields.items() if math.isfinite(v)
    )
    if not field_part:
        raise ValueError(f"point {measurement} {dict(tags)} has no finite field")
    return f"{_esc_measurement(measurement)}{tag_part} {field_part} {_ts_ms(t)}"


def host_line(s: HostSample, cluster: str) -> str:
    fields: dict[str, float] = {
        "cpu_cores": s.cpu_cores,
        "cpu_used_cores": s.cpu_used_cores,
        "memory_mib": s.memory_mib,
        "memory_used_mib": s.memory_used_mib,
    }
    if s.net_rx_bps is not None:
        fields["net_rx_bps"] = s.net_rx_bps
    if s.net_tx_bps is not None:
        fields["net_tx_bps"] = s.net_tx_bps
    if s.psi is not None:
        fields.update(s.psi.fields())
    return line(HOST_MEASUREMENT, {"cluster": cluster, "host": s.host}, fields, s.time)


def vm_line(s: VMSample, cluster: str) -> str:
    return line(
        VM_MEASUREMENT,
        {"cluster": cluster, "vm": s.vm, "host": s.host},
        {
            "cpu_used_cores": s.cpu_used_cores,
            "memory_used_mib": s.memory_used_mib,
            "vcpus": s.vcpus,
            "memory_mib": s.memory_mib,
        },
        s.time,
    )


def migration_line(e: MigrationEvent, cluster: str) -> str:
    tags = {
        "cluster": cluster,
        "vm": e.vm,
        "source": e.source,
        "target": e.target,
        "outcome": e.outcome.value,
        "job_id": e.job_id,
        "reason": e.reason or "",
    }
    fields: dict[str, float] = {"elapsed_s": e.elapsed_s, "data_total_mib": e.data_total_mib}
    if e.downtime_ms is not None:
        fields["downtime_ms"] = e.downtime_ms
    return line(MIGRATION_MEASUREMENT, tags, fields, e.time)


def batch_lines(batch: SampleBatch, cluster: str) -> list[str]:
    return [vm_line(v, cluster) for v in batch.vms] + [host_line(h, cluster) for h in batch.hosts]


# -- the writer port -------------------------------------------------------------------------


class WriteFailed(Exception):
    """A write did not go through. ``retryable`` False: the server refused the data itself."""

    def __init__(self, message: str, *, retryable: bool, status: int | None = None) -> None:
        super().__init__(message)
        self.retryable = retryable
        self.status = status


class LineWriter(Protocol):
    def write(self, lines: Sequence[str]) -> None:
        """Send the lines; raise :class:`WriteFailed` when they were not accepted."""
        ...

    def close(self) -> None: ...


class InfluxLineWriter:
    """The real writer: influxdb-client's synchronous write API (no client-side retries: the
    spool retries)."""

    def __init__(self, settings: InfluxSettings) -> None:
        from influxdb_client.client.influxdb_client import InfluxDBClient
        from influxdb_client.client.write_api import SYNCHRONOUS

        self._settings = settings
        self._client = InfluxDBClient(
            url=settings.url,
            token=settings.token().get_secret_value(),
            org=settings.org,
            timeout=int(settings.timeout_s * 1000),
        )
        self._api = self._client.write_api(write_options=SYNCHRONOUS)

    def write(self, lines: Sequence[str]) -> None:
        from influxdb_client.client.exceptions import InfluxDBError
        from influxdb_client.domain.write_precision import WritePrecision
        from urllib3.exceptions import HTTPError

        try:
            self._api.write(
                bucket=self._settings.bucket,
                org=self._settings.org,
                record=list(lines),
                write_precision=WritePrecision.MS,  # type: ignore[arg-type]
            )
        except InfluxDBError as exc:
            status = getattr(exc, "status", None)
            if status is None and exc.response is not None:
                status = getattr(exc.response, "status", None)
            reason = getattr(exc, "reason", None) or "error"
            raise WriteFailed(
                f"HTTP {status} {reason}",
                retryable=status not in _NOT_RETRYABLE,
                status=status,
            ) from exc
        except (HTTPError, OSError) as exc:
            raise WriteFailed(f"{type(exc).__name__}", retryable=True) from exc

    def close(self) -> None:
        self._client.close()  # type: ignore[no-untyped-call]


# -- the spool -------------------------------------------------------------------------------

_SCHEMA = """
CREATE TABLE IF NOT EXISTS pending (
    id INTEGER PRIMARY KEY AUTOINCREMENT, lines INTEGER NOT NULL, bytes INTEGER NOT NULL,
    body TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS dead (
    id INTEGER PRIMARY KEY, lines INTEGER NOT NULL, body TEXT NOT NULL, status INTEGER,
    reason TEXT NOT NULL, at_s REAL NOT NULL);
CREATE TABLE IF NOT EXISTS counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
"""


@dataclass(frozen=True, slots=True, kw_only=True)
class SpoolStats:
    pending_lines: int
    pending_batches: int
    pending_bytes: int
    sent_lines: int
    dead_lines: int
    dropped_lines: int
    #: the last write error (status and reason only), None after a success
    last_error: str | None


@dataclass(frozen=True, slots=True, kw_only=True)
class FlushResult:
    sent_lines: int
    pending_lines: int
    error: str | None = None
    #: True when flush did nothing because the backoff after a failure has not run out
    backing_off: bool = False


class InfluxExporter:
    """Spools points on disk and sends them in order (see the module docstring).

    Thread-safe: ``export_*`` may be called while another thread runs ``flush``."""

    def __init__(
        self,
        settings: InfluxSettings,
        *,
        writer: LineWriter | None = None,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.settings = settings
        self._writer = writer
        self._monotonic = monotonic
        self._db_lock = threading.Lock()
        self._flush_lock = threading.Lock()
        self._backoff_s = 0.0
        self._next_try = 0.0
        self._last_error: str | None = None
        path = settings.spool_dir / "influx-spool.sqlite3"
        try:
            settings.spool_dir.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.executescript(_SCHEMA)
        except (OSError, sqlite3.Error) as exc:
            raise StorageError(
                f"cannot open the InfluxDB spool {path}: {exc}", subject=str(path)
            ) from exc

    # -- enqueue -----------------------------------------------------------------------------
    def export_batch(self, batch: SampleBatch) -> None:
        self.enqueue(batch_lines(batch, self.settings.cluster))

    def export_events(self, events: Iterable[MigrationEvent]) -> None:
        self.enqueue([migration_line(e, self.settings.cluster) for e in events])

    def enqueue(self, lines: Sequence[str]) -> None:
        """Append lines to the spool (durable when this returns)."""
        if not lines:
            return
        size = self.settings.batch_size
        rows = []
        for i in range(0, len(lines), size):
            body = "\n".join(lines[i : i + size])
            rows.append((len(lines[i : i + size]), len(body), body))
        with self._db_lock, self._tx():
            self._db.executemany("INSERT INTO pending (lines, bytes, body) VALUES (?, ?, ?)", rows)
            self._enforce_limit()

    def _enforce_limit(self) -> None:
        limit = self.settings.spool_max_mib * 1024 * 1024
        (total,) = self._db.execute("SELECT COALESCE(SUM(bytes), 0) FROM pending").fetchone()
        dropped = 0
        while total > limit:
            row = self._db.execute("SELECT id, lines, bytes FROM pending ORDER BY id LIMIT 1")
            first = row.fetchone()
            if first is None:
                break
            self._db.execute("DELETE FROM pending WHERE id = ?", (first[0],))
            dropped += first[1]
            total -= first[2]
        if dropped:
            self._count("dropped_lines", dropped)
            log.warning(
                "influx spool over %d MiB: dropped the oldest %d points",
                self.settings.spool_max_mib,
                dropped,
            )

    # -- flush -------------------------------------------------------------------------------
    def flush(self, *, force: bool = False, max_batches: int | None = None) -> FlushResult:
        """Send pending rows oldest first until the spool is empty or a write fails.

        During the backoff after a failure nothing is tried unless ``force``."""
        with self._flush_lock:
            if not force and self._monotonic() < self._next_try:
                return FlushResult(
                    sent_lines=0,
                    pending_lines=self._pending_lines(),
                    error=self._last_error,
                    backing_off=True,
                )
            sent = 0
            batches = 0
            while max_batches is None or batches < max_batches:
                with self._db_lock:
                    row = self._db.execute(
                        "SELECT id, lines, body FROM pending ORDER BY id LIMIT 1"
                    ).fetchone()
                if row is None:
                    break
                row_id, n, body = row
                try:
                    self._get_writer().write(body.split("\n"))
                except WriteFailed as exc:
                    if not exc.retryable:
                        self._bury(row_id, n, body, exc)
                        continue
                    self._fail(str(exc))
                    return FlushResult(
                        sent_lines=sent, pending_lines=self._pending_lines(), error=self._last_error
                    )
                with self._db_lock, self._tx():
                    self._db.execute("DELETE FROM pending WHERE id = ?", (row_id,))
                    self._count("sent_lines", n)
                sent += n
                batches += 1
                self._backoff_s = 0.0
                self._next_try = 0.0
                self._last_error = None
            return FlushResult(sent_lines=sent, pending_lines=self._pending_lines())

    def _get_writer(self) -> LineWriter:
        if self._writer is None:
            try:
                self._writer = InfluxLineWriter(self.settings)
            except ValueError as exc:  # bad URL and the like
                raise WriteFailed(f"cannot make a client: {exc}", retryable=True) from exc
        return self._writer

    def _fail(self, message: str) -> None:
        s = self.settings
        self._backoff_s = min(s.retry_max_s, max(s.retry_min_s, self._backoff_s * 2))
        self._next_try = self._monotonic() + self._backoff_s
        if message != self._last_error:
            log.warning(
                "influx write to %s failed (%s); points stay spooled, retry in %.1f s",
                s.url,
                message,
                self._backoff_s,
            )
        self._last_error = message

    def _bury(self, row_id: int, n: int, body: str, exc: WriteFailed) -> None:
        log.error("influx refused %d points (%s); moved to the spool's dead table", n, exc)
        with self._db_lock, self._tx():
            self._db.execute(
                "INSERT INTO dead (id, lines, body, status, reason, at_s) VALUES (?,?,?,?,?,?)",
                (row_id, n, body, exc.status, str(exc), time.time()),
            )
            self._db.execute("DELETE FROM pending WHERE id = ?", (row_id,))
            self._count("dead_lines", n)

    # -- bookkeeping -------------------------------------------------------------------------
    def _tx(self) -> _Transaction:
        return _Transaction(self._db)

    def _count(self, name: str, n: int) -> None:
        self._db.execute(
            "INSERT INTO counters (name, value) VALUES (?, ?) "
            "ON CONFLICT(name) DO UPDATE SET value = value + excluded.value",
            (name, n),
        )

    def _pending_lines(self) -> int:
        with self._db_lock:
            (n,) = self._db.execute("SELECT COALESCE(SUM(lines), 0) FROM pending").fetchone()
        return int(n)

    def stats(self) -> SpoolStats:
        with self._db_lock:
            lines, batches, size = self._db.execute(
                "SELECT COALESCE(SUM(lines), 0), COUNT(*), COALESCE(SUM(bytes), 0) FROM pending"
            ).fetchone()
            counters = dict(self._db.execute("SELECT name, value FROM counters").fetchall())
        return SpoolStats(
            pending_lines=int(lines),
            pending_batches=int(batches),
            pending_bytes=int(size),
            sent_lines=int(counters.get("sent_lines", 0)),
            dead_lines=int(counters.get("dead_lines", 0)),
            dropped_lines=int(counters.get("dropped_lines", 0)),
            last_error=self._last_error,
        )

    def close(self) -> None:
        with self._flush_lock, self._db_lock:
            self._db.close()
            if self._writer is not None:
                self._writer.close()


class _Transaction:
    def __init__(self, db: sqlite3.Connection) -> None:
        self._db = db

    def __enter__(self) -> None:
        self._db.execute("BEGIN IMMEDIATE")

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        self._db.execute("COMMIT" if exc_type is None else "ROLLBACK")


class FlushLoop:
    """A daemon thread that flushes the exporter every ``flush_interval_s`` until stopped; the
    stop flushes once more within ``timeout_s``."""

    def __init__(self, exporter: InfluxExporter) -> None:
        self._exporter = exporter
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="influx-flush", daemon=True)

    def start(self) -> FlushLoop:
        self._thread.start()
        return self

    def _run(self) -> None:
        interval = self._exporter.settings.flush_interval_s
        while not self._stop.wait(interval):
            try:
                self._exporter.flush()
            except StorageError:
                log.exception("influx spool failed")
            except sqlite3.Error:
                log.exception("influx spool failed")

    def stop(self, timeout_s: float = 10.0) -> None:
        self._stop.set()
        self._thread.join(timeout_s)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            result = self._exporter.flush(force=True, max_batches=1)
            if result.error or result.pending_lines == 0:
                break


# -- Flux read path --------------------------------------------------------------------------

HOST_FIELDS = ("cpu_cores", "cpu_used_cores", "memory_mib", "memory_used_mib")
VM_FIELDS = ("cpu_used_cores", "memory_used_mib", "vcpus", "memory_mib")


def flux_string(s: str) -> str:
    """A Flux string literal."""
    return '"' + s.replace("\\", "\\\\").replace('"', '\\"').replace("${", "\\${") + '"'


def _flux_time(t: datetime) -> str:
    return t.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def history_query(settings: InfluxSettings, *, start: datetime, stop: datetime) -> str:
    """The Flux query returning host and VM samples of ``settings.cluster`` in
    ``[start, stop)``, one record per sample (fields pivoted into columns), oldest first."""

    def field_filter(fields: Sequence[str]) -> str:
        return " or ".join(f"r._field == {flux_string(f)}" for f in fields)

    return (
        f"from(bucket: {flux_string(settings.bucket)})\n"
        f"  |> range(start: {_flux_time(start)}, stop: {_flux_time(stop)})\n"
        f"  |> filter(fn: (r) => r.cluster == {flux_string(settings.cluster)})\n"
        f"  |> filter(fn: (r) =>\n"
        f'       (r._measurement == "{HOST_MEASUREMENT}" and ({field_filter(HOST_FIELDS)})) or\n'
        f'       (r._measurement == "{VM_MEASUREMENT}" and ({field_filter(VM_FIELDS)})))\n'
        f'  |> pivot(rowKey: ["_time"], columnKey: ["_field"], valueColumn: "_value")\n'
        f'  |> group(columns: ["_measurement"])\n'
        f'  |> sort(columns: ["_time"])\n'
    )


def _num(values: Mapping[str, Any], key: str) -> float | None:
    v = values.get(key)
    if v is None or v == "":
        return None
    return float(v)


def parse_history(records: Iterable[Mapping[str, Any]]) -> list[SampleBatch]:
    """Sample batches (one per timestamp, oldest first) from the records of
    :func:`history_query` (``FluxRecord.values``). Records missing a needed field are skipped."""
    hosts: dict[datetime, list[HostSample]] = {}
    vms: dict[datetime, list[VMSample]] = {}
    for r in records:
        t = r.get("_time")
        if not isinstance(t, datetime):
            continue
        t = t.astimezone(UTC)
        measurement = r.get("_measurement")
        cpu = _num(r, "cpu_used_cores")
        mem = _num(r, "memory_used_mib")
        if cpu is None or mem is None:
            continue
        if measurement == VM_MEASUREMENT and r.get("vm") and r.get("host"):
            vms.setdefault(t, []).append(
                VMSample(
                    vm=str(r["vm"]),
                    host=str(r["host"]),
                    time=t,
                    cpu_used_cores=cpu,
                    memory_used_mib=round(mem),
                    vcpus=round(_num(r, "vcpus") or 0),
                    memory_mib=round(_num(r, "memory_mib") or 0),
                )
            )
        elif measurement == HOST_MEASUREMENT and r.get("host"):
            hosts.setdefault(t, []).append(
                HostSample(
                    host=str(r["host"]),
                    time=t,
                    cpu_cores=round(_num(r, "cpu_cores") or 0),
                    cpu_used_cores=cpu,
                    memory_mib=round(_num(r, "memory_mib") or 0),
                    memory_used_mib=round(mem),
                )
            )
    return [
        SampleBatch(time=t, hosts=tuple(hosts.get(t, ())), vms=tuple(vms.get(t, ())))
        for t in sorted(hosts.keys() | vms.keys())
    ]


class QueryPort(Protocol):
    """The part of influxdb-client's ``QueryApi`` the read path uses."""

    def query_stream(self, query: str, org: Any = None, params: Any = None) -> Iterator[Any]: ...


def rebuild_window(
    window: Window, query_api: QueryPort, settings: InfluxSettings, now: datetime
) -> int:
    """Fill ``window`` with the last ``window_s`` of history; returns the samples ingested."""
    start = now - timedelta(seconds=window.settings.window_s)
    query = history_query(settings, start=start, stop=now + timedelta(milliseconds=1))
    try:
        batches = parse_history(r.values for r in query_api.query_stream(query, org=settings.org))
    except Exception as exc:  # the client raises many types; translate at the boundary
        raise StorageError(
            f"cannot read history from InfluxDB at {settings.url}: {type(exc).__name__}",
            subject=settings.url,
        ) from exc
    count = 0
    for b in batches:
        window.ingest(b)
        count += len(b.hosts) + len(b.vms)
    return count


def rebuild_window_from_influx(window: Window, settings: InfluxSettings, now: datetime) -> int:
    """:func:`rebuild_window` with a client made from ``settings`` (what the service calls at
    start); returns the samples ingested."""
    from influxdb_client.client.influxdb_client import InfluxDBClient

    client = InfluxDBClient(
        url=settings.url,
        token=settings.token().get_secret_value(),
        org=settings.org,
        timeout=int(settings.timeout_s * 1000),
    )
    try:
        return rebuild_window(window, client.query_api(), settings, now)
    finally:
        client.close()  # type: ignore[no-untyped-call]
