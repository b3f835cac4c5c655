"""The demand history: per-VM and per-host demand beyond the decision window, downsampled,
bounded, persistent, and keyed by name (a VM that migrates keeps one series).

Grid
    Time is cut into *fine* buckets of ``fine_step_s`` (5 min) and *coarse* buckets of
    ``coarse_step_s`` (1 h, a multiple of the fine step that divides a day), both aligned on
    multiples of their step since the Unix epoch. A bucket holds the **mean of the records** that
    fell into it: :meth:`DemandHistory.record` may be called every few seconds or every five
    minutes. Records normally arrive in time order; a late record, for a bucket that is no longer
    the series' open (newest) bucket, is averaged with that bucket's value as if the bucket held
    one record. Missing buckets are NaN.

Metrics
    ``cpu``: the CPU demand in cores (a VM's ``cpu_used_cores``; a host's is the sum of its VMs
    plus ``Host.overhead_cpu_cores``, as in :meth:`balancer.model.Snapshot.loads`). ``memory``:
    the memory use in MiB (a VM's ``VM.memory_used``; a host's is the sum of its VMs'
    plus ``Host.overhead_memory_mib``).

Downsampling and retention (``H`` = the coarse bucket of the newest record seen, ``Kf`` =
``fine_keep_days`` and ``Kc`` = ``coarse_keep_days`` in coarse buckets)
    * fine points are kept while their coarse bucket ``B >= H - Kf``: at least ``fine_keep_days``,
      at most one coarse step more (a whole hour is folded at once);
    * then they are folded into their coarse bucket: the mean of the fine buckets present and
      their max (the max of the 5-minute means, not of the raw records);
    * coarse buckets are kept while ``B >= H - Kc``, then dropped; a series with nothing left
      (not seen for ``coarse_keep_days``) is removed;
    * records older than the fine window are ignored (counted in :attr:`HistoryStats.late_dropped`).

Bounds
    At most ``max_series`` series (VMs + hosts). When a record brings a new series and the bound
    is reached, the series seen least recently (by the time of their newest record) are evicted;
    series of the record in hand are never evicted for each other: when one snapshot alone
    holds more than ``max_series`` new series, the surplus is not recorded (counted in
    :attr:`HistoryStats.refused`).

    Memory: one row per series in numpy arrays (float32) grown on demand: ``2 x Tf`` fine values
    (cpu, memory) and ``4 x Tc`` coarse values (cpu, memory, cpu_max, memory_max), with
    ``Tf = (Kf + 1) x coarse_step_s / fine_step_s`` and ``Tc = Kc - Kf``, plus 64 bytes of
    bookkeeping, see :func:`bytes_per_series`. With the defaults (5 min for 14 days, 1 h to
    90 days): ``Tf = 4044``, ``Tc = 1824``, **61,600 bytes per series, 1,232,000,000 bytes
    (1.23 GB) at max_series = 20,000**; 8,000 VMs and 200 hosts take 505 MB. The database holds
    the same values (``4 x (2 Tf + 4 Tc)`` bytes of blobs per series, in at most
    ``ceil(Tf / 288) + 1`` fine and ``ceil(Tc / 288) + 1`` coarse rows) plus its row overhead.

Persistence (:class:`SqlHistoryBackend`, tables ``hist_series`` and ``hist_chunk``)
    One ``hist_chunk`` row per (kind, name, step_s, start_s): a chunk of :data:`CHUNK_BUCKETS`
    (288) consecutive buckets starting at ``start_s`` (seconds since the epoch, a multiple of
    ``288 x step_s``: one UTC day at 5 minutes, 12 days at 1 hour). Each metric column is a
    ``LargeBinary`` of 288 little-endian float32 (``'<f4'``), NaN for missing; coarse rows also
    carry ``cpu_max`` and ``memory_max``. One ``hist_series`` row per series keeps its last
    record time and its open bucket (bucket, record count, sums), so that the mean of a bucket
    stays exact across a restart. :meth:`DemandHistory.flush` upserts the dirty chunks and
    series, deletes evicted series and chunks past the retention in **one transaction**: a crash
    loses what was recorded since the last flush, never more, and never leaves a half-written
    state. **The caller calls flush()** (record never does I/O): e.g. once per collect cycle or
    every few minutes; on construction the history loads what the backend holds. Rows of a grid
    other than the configured steps are ignored on load and removed at the next flush.

:class:`MemoryHistoryBackend` keeps the same rows in a dict (the simulation, tests).

Thread safety: every public method of :class:`DemandHistory` holds one lock (flush included).
Time is always an argument: no clock is read here.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal, Protocol

import numpy as np
import numpy.typing as npt
import sqlalchemy as sa
from sqlalchemy.exc import SQLAlchemyError

from balancer.errors import InputError, StorageError
from balancer.forecast import Series
from balancer.model import Snapshot
from collectors.samples import epoch_s, from_epoch_s
from collectors.settings import DAY_S, HistorySettings

Kind = Literal["vm", "host"]
Metric = Literal["cpu", "memory"]
Stat = Literal["mean", "max"]
KINDS: tuple[Kind, ...] = ("vm", "host")
METRICS: tuple[Metric, ...] = ("cpu", "memory")
#: the blob columns of a fine chunk and of a coarse chunk
FINE_COLUMNS: tuple[str, ...] = METRICS
COARSE_COLUMNS: tuple[str, ...] = (*METRICS, *(f"{m}_max" for m in METRICS))
#: buckets per stored chunk (one day at 5 minutes)
CHUNK_BUCKETS = 288
_BLOB_DTYPE = np.dtype("<f4")
_NO_BUCKET = np.iinfo(np.int64).min
_MIN_CAPACITY = 64
#: per-series bookkeeping bytes: last seen, open bucket, open count, 2 sums (8 each), dirty flag
#: and dirty-chunk flags (a few bytes), rounded up
_BOOKKEEPING_BYTES = 64


@dataclass(frozen=True, slots=True, kw_only=True)
class HistoryStats:
    series: int
    vm_series: int
    host_series: int
    #: buckets holding a value (cpu), fine and coarse
    fine_points: int
    coarse_points: int
    #: start of the oldest bucket and end of the newest bucket holding a value (None: empty)
    oldest: datetime | None
    newest: datetime | None
    #: bytes of the in-memory arrays now, and the bound at max_series
    bytes: int
    max_bytes: int
    #: records ignored because older than the fine window
    late_dropped: int
    #: new series not recorded because one snapshot alone exceeded max_series
    refused: int
    #: series evicted for max_series or removed after coarse_keep_days
    evicted: int
    #: stored chunks skipped on load (wrong size or another grid)
    skipped_chunks: int


# -- stored rows ----------------------------------------------------------------------------
@dataclass(frozen=True, slots=True, kw_only=True)
class SeriesState:
    """A series' row: the time of its newest record and its open bucket (for an exact mean)."""

    kind: str
    name: str
    last_seen_s: float
    open_bucket: int | None
    open_count: int
    #: per metric, in :data:`METRICS` order: the sum of the open bucket's records
    open_sums: tuple[float, ...]


@dataclass(frozen=True, slots=True, kw_only=True)
class Chunk:
    """:data:`CHUNK_BUCKETS` buckets of one series on one grid; blobs are little-endian float32,
    keyed by column (:data:`FINE_COLUMNS` or :data:`COARSE_COLUMNS`)."""

    kind: str
    name: str
    step_s: int
    start_s: int
    blobs: Mapping[str, bytes]


@dataclass(frozen=True, slots=True, kw_only=True)
class HistoryBatch:
    """What one flush writes, atomically: deletions first, then upserts, then the age cut."""

    deleted: tuple[tuple[str, str], ...]
    series: tuple[SeriesState, ...]
    chunks: tuple[Chunk, ...]
    #: per step_s: chunks starting before this (seconds since the epoch) are deleted
    keep_since_s: Mapping[int, int]
    #: chunks of any other step are deleted
    steps: tuple[int, ...]


class HistoryBackend(Protocol):
    def load_series(self) -> list[SeriesState]: ...

    def iter_chunks(self) -> Iterator[Chunk]: ...

    def write(self, batch: HistoryBatch) -> None: ...


def encode(values: npt.NDArray[np.floating[Any]]) -> bytes:
    """The stored form of a chunk column: little-endian float32, NaN for missing."""
    return np.asarray(values, dtype=_BLOB_DTYPE).tobytes()


def decode(blob: bytes) -> npt.NDArray[np.float32]:
    return np.frombuffer(blob, dtype=_BLOB_DTYPE).astype(np.float32)


class MemoryHistoryBackend:
    """The rows of :class:`SqlHistoryBackend` in dicts (the simulation; tests)."""

    def __init__(self) -> None:
        self.series: dict[tuple[str, str], SeriesState] = {}
        self.chunks: dict[tuple[str, str, int, int], Chunk] = {}

    def load_series(self) -> list[SeriesState]:
        return list(self.series.values())

    def iter_chunks(self) -> Iterator[Chunk]:
        return iter(list(self.chunks.values()))

    def write(self, batch: HistoryBatch) -> None:
        gone = set(batch.deleted)
        for key in gone:
            self.series.pop(key, None)
        self.chunks = {
            k: c
            for k, c in self.chunks.items()
            if (k[0], k[1]) not in gone
            and k[2] in batch.steps
            and k[3] >= batch.keep_since_s.get(k[2], k[3])
        }
        for s in batch.series:
            self.series[(s.kind, s.name)] = s
        for c in batch.chunks:
            if c.start_s >= batch.keep_since_s.get(c.step_s, c.start_s):
                self.chunks[(c.kind, c.name, c.step_s, c.start_s)] = c


# -- SQL ------------------------------------------------------------------------------------
_md = sa.MetaData()
hist_series = sa.Table(
    "hist_series",
    _md,
    sa.Column("kind", sa.String(8), primary_key=True),
    sa.Column("name", sa.String(255), primary_key=True),
    #: seconds since the epoch of the newest record
    sa.Column("last_seen_s", sa.Float(precision=53), nullable=False),
    #: the open fine bucket (index since the epoch), its record count and per-metric sums
    sa.Column("open_bucket", sa.BigInteger, nullable=True),
    sa.Column("open_count", sa.Integer, nullable=False),
    *(sa.Column(f"open_{m}_sum", sa.Float(precision=53), nullable=False) for m in METRICS),
)
hist_chunk = sa.Table(
    "hist_chunk",
    _md,
    sa.Column("kind", sa.String(8), primary_key=True),
    sa.Column("name", sa.String(255), primary_key=True),
    sa.Column("step_s", sa.Integer, primary_key=True),
    #: seconds since the epoch; a multiple of CHUNK_BUCKETS * step_s
    sa.Column("start_s", sa.BigInteger, primary_key=True),
    *(sa.Column(c, sa.LargeBinary, nullable=False) for c in FINE_COLUMNS),
    *(sa.Column(c, sa.LargeBinary, nullable=True) for c in COARSE_COLUMNS if c not in METRICS),
)


class SqlHistoryBackend:
    """The history's tables on the service's engine (SQLite or PostgreSQL); created on open."""

    def __init__(self, engine: sa.Engine) -> None:
        self.engine = engine
        try:
            _md.create_all(engine, checkfirst=True)
        except SQLAlchemyError as exc:
            raise StorageError(f"cannot create the history tables: {_first(exc)}") from exc

    def load_series(self) -> list[SeriesState]:
        try:
            with self.engine.connect() as c:
                rows = c.execute(sa.select(hist_series)).all()
        except SQLAlchemyError as exc:
            raise StorageError(f"history: cannot load: {_first(exc)}") from exc
        return [
            SeriesState(
                kind=r.kind,
                name=r.name,
                last_seen_s=float(r.last_seen_s),
                open_bucket=None if r.open_bucket is None else int(r.open_bucket),
                open_count=int(r.open_count),
                open_sums=tuple(float(r._mapping[f"open_{m}_sum"]) for m in METRICS),
            )
            for r in rows
        ]

    def iter_chunks(self) -> Iterator[Chunk]:
        cols = [c for c in hist_chunk.c if c.name in COARSE_COLUMNS]
        try:
            with self.engine.connect() as c:
                result = c.execution_options(yield_per=2000).execute(sa.select(hist_chunk))
                for r in result:
                    m = r._mapping
                    yield Chunk(
                        kind=r.kind,
                        name=r.name,
                        step_s=int(r.step_s),
                        start_s=int(r.start_s),
                        blobs={col.name: bytes(m[col.name]) for col in cols if m[col.name]},
                    )
        except SQLAlchemyError as exc:
            raise StorageError(f"history: cannot load: {_first(exc)}") from exc

    def write(self, batch: HistoryBatch) -> None:
        try:
            with self.engine.begin() as c:
                self._write(c, batch)
        except SQLAlchemyError as exc:
            raise StorageError(f"history: flush failed: {_first(exc)}") from exc

    def _write(self, c: sa.Connection, batch: HistoryBatch) -> None:
        if batch.deleted:
            keys = [{"k": k, "n": n} for k, n in batch.deleted]
            for t in (hist_chunk, hist_series):
                c.execute(
                    sa.delete(t).where(
                        t.c.kind == sa.bindparam("k"), t.c.name == sa.bindparam("n")
                    ),
                    keys,
                )
        if batch.series:
            rows: list[dict[str, Any]] = [
                {
                    "kind": s.kind,
                    "name": s.name,
                    "last_seen_s": s.last_seen_s,
                    "open_bucket": s.open_bucket,
                    "open_count": s.open_count,
                    **{f"open_{m}_sum": v for m, v in zip(METRICS, s.open_sums, strict=True)},
                }
                for s in batch.series
            ]
            self._upsert(c, hist_series, rows, ("kind", "name"))
        if batch.chunks:
            rows = [
                {
                    "kind": ch.kind,
                    "name": ch.name,
                    "step_s": ch.step_s,
                    "start_s": ch.start_s,
                    **{col: ch.blobs.get(col) for col in COARSE_COLUMNS},
                }
                for ch in batch.chunks
            ]
            self._upsert(c, hist_chunk, rows, ("kind", "name", "step_s", "start_s"))
        for step, since in batch.keep_since_s.items():
            c.execute(
                sa.delete(hist_chunk).where(
                    hist_chunk.c.step_s == step, hist_chunk.c.start_s < since
                )
            )
        c.execute(sa.delete(hist_chunk).where(hist_chunk.c.step_s.not_in(batch.steps)))

    def _upsert(
        self, c: sa.Connection, table: sa.Table, rows: list[dict[str, Any]], key: tuple[str, ...]
    ) -> None:
        dialect = c.dialect.name
        if dialect in ("sqlite", "postgresql"):
            from sqlalchemy.dialects import postgresql, sqlite

            ins: Any = sqlite.insert(table) if dialect == "sqlite" else postgresql.insert(table)
            stmt = ins.on_conflict_do_update(
                index_elements=list(key),
                set_={col.name: ins.excluded[col.name] for col in table.c if col.name not in key},
            )
            c.execute(stmt, rows)
            return
        # any other database: delete then insert, in the same transaction
        c.execute(
            sa.delete(table).where(*(table.c[k] == sa.bindparam(f"k_{k}") for k in key)),
            [{f"k_{k}": r[k] for k in key} for r in rows],
        )
        c.execute(sa.insert(table), rows)


def _first(exc: Exception) -> str:
    return str(exc).splitlines()[0] if str(exc) else type(exc).__name__


# -- grid helpers ---------------------------------------------------------------------------
def grid_end(now: datetime, step_s: float) -> datetime:
    """The end of the bucket of ``step_s`` that contains ``now`` (a valid ``end`` for reads that
    include the current, partial bucket)."""
    t = epoch_s(now)
    return from_epoch_s((math.floor(t / step_s) + 1) * step_s)


@dataclass(frozen=True, slots=True)
class _Grid:
    fine_s: int
    coarse_s: int
    ratio: int  # fine buckets per coarse bucket
    keep_fine_c: int  # fine retention in coarse buckets (Kf)
    keep_coarse_c: int  # total retention in coarse buckets (Kc)

    @classmethod
    def of(cls, s: HistorySettings) -> _Grid:
        return cls(
            fine_s=s.fine_step_s,
            coarse_s=s.coarse_step_s,
            ratio=s.coarse_step_s // s.fine_step_s,
            keep_fine_c=s.fine_keep_days * DAY_S // s.coarse_step_s,
            keep_coarse_c=s.coarse_keep_days * DAY_S // s.coarse_step_s,
        )

    @property
    def fine_len(self) -> int:
        return (self.keep_fine_c + 1) * self.ratio

    @property
    def coarse_len(self) -> int:
        return self.keep_coarse_c - self.keep_fine_c


def bytes_per_series(settings: HistorySettings) -> int:
    """In-memory bytes one series takes (the bound is this times ``max_series``)."""
    g = _Grid.of(settings)
    values = len(FINE_COLUMNS) * g.fine_len + len(COARSE_COLUMNS) * g.coarse_len
    return 4 * values + _BOOKKEEPING_BYTES


def max_bytes(settings: HistorySettings) -> int:
    return bytes_per_series(settings) * settings.max_series


def _fold(x: npt.NDArray[np.float32]) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.float32]]:
    """Mean and max over the last axis, ignoring NaN (NaN where all are NaN)."""
    present = ~np.isnan(x)
    count = present.sum(axis=-1)
    total = np.where(present, x, np.float32(0)).sum(axis=-1, dtype=np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = np.where(count > 0, total / np.maximum(count, 1), np.nan).astype(np.float32)
    mx = np.fmax.reduce(x, axis=-1).astype(np.float32)
    return mean, mx


def _gather(
    src: npt.NDArray[np.float32],
    rows: npt.NDArray[np.int64],
    first: int,
    last: int,
    out: npt.NDArray[np.float32],
    out_first: int,
) -> None:
    """Copy buckets ``first..last`` (inclusive, absolute indices) of ``rows`` from the ring
    ``src`` (column = bucket mod its length) into ``out`` from the column of ``out_first``."""
    if last < first:
        return
    length = src.shape[1]
    n = last - first + 1
    c0 = first % length
    seg = min(n, length - c0)
    j0 = first - out_first
    out[:, j0 : j0 + seg] = src[rows, c0 : c0 + seg]
    if n > seg:
        out[:, j0 + seg : j0 + n] = src[rows, 0 : n - seg]


# -- the history ----------------------------------------------------------------------------
class DemandHistory:
    """Per-VM and per-host demand history (see the module doc for grid, bounds and storage)."""

    def __init__(self, settings: HistorySettings, backend: HistoryBackend | None = None) -> None:
        self.settings = settings
        self.backend: HistoryBackend = backend if backend is not None else MemoryHistoryBackend()
        self._g = _Grid.of(settings)
        self._lock = threading.RLock()
        self._head_c: int | None = None  # coarse bucket of the newest record
        self._rows: dict[tuple[str, str], int] = {}
        self._keys: list[tuple[str, str] | None] = []
        self._free: list[int] = []
        self._capacity = 0
        self._fine: dict[str, npt.NDArray[np.float32]] = {}
        self._coarse: dict[str, npt.NDArray[np.float32]] = {}
        self._last_seen = np.empty(0, dtype=np.float64)
        self._open_bucket = np.empty(0, dtype=np.int64)
        self._open_count = np.empty(0, dtype=np.int64)
        self._open_sum: dict[str, npt.NDArray[np.float64]] = {}
        self._dirty_series = np.empty(0, dtype=bool)
        self._dirty_fine: dict[int, npt.NDArray[np.bool_]] = {}
        self._dirty_coarse: dict[int, npt.NDArray[np.bool_]] = {}
        self._pending_delete: set[tuple[str, str]] = set()
        self._late_dropped = 0
        self._refused = 0
        self._evicted = 0
        self._skipped_chunks = 0
        self._grow(0)
        self._load()

    # -- storage of rows -------------------------------------------------------------------
    def _grow(self, need: int) -> None:
        """Make room for ``need`` rows (capacity doubles, capped at max_series)."""
        if need <= self._capacity and self._fine:
            return
        cap = max(_MIN_CAPACITY, self._capacity)
        while cap < need:
            cap *= 2
        cap = min(cap, max(self.settings.max_series, need))
        old = self._capacity
        g = self._g

        def grown(a: npt.NDArray[Any], fill: Any, cols: int | None = None) -> npt.NDArray[Any]:
            shape = (cap,) if cols is None else (cap, cols)
            b = np.full(shape, fill, dtype=a.dtype)
            if old:
                b[:old] = a[:old]
            return b

        empty32 = np.empty((0, 0), dtype=np.float32)
        self._fine = {
            m: grown(self._fine.get(m, empty32), np.nan, g.fine_len) for m in FINE_COLUMNS
        }
        self._coarse = {
            m: grown(self._coarse.get(m, empty32), np.nan, g.coarse_len) for m in COARSE_COLUMNS
        }
        self._last_seen = grown(self._last_seen, -np.inf)
        self._open_bucket = grown(self._open_bucket, _NO_BUCKET)
        self._open_count = grown(self._open_count, 0)
        self._open_sum = {
            m: grown(self._open_sum.get(m, np.empty(0, dtype=np.float64)), 0.0) for m in METRICS
        }
        self._dirty_series = grown(self._dirty_series, False)
        for d in (self._dirty_fine, self._dirty_coarse):
            for k in d:
                d[k] = grown(d[k], False)
        self._keys.extend([None] * (cap - old))
        self._free.extend(range(cap - 1, old - 1, -1))
        self._capacity = cap

    def _add(self, key: tuple[str, str]) -> int:
        if not self._free:
            self._grow(self._capacity + 1)
        row = self._free.pop()
        self._keys[row] = key
        self._rows[key] = row
        return row

    def _remove(self, row: int) -> None:
        key = self._keys[row]
        assert key is not None
        del self._rows[key]
        self._keys[row] = None
        for a in (*self._fine.values(), *self._coarse.values()):
            a[row] = np.nan
        self._last_seen[row] = -np.inf
        self._open_bucket[row] = _NO_BUCKET
        self._open_count[row] = 0
        for s in self._open_sum.values():
            s[row] = 0.0
        self._dirty_series[row] = False
        for d in (self._dirty_fine, self._dirty_coarse):
            for mask in d.values():
                mask[row] = False
        self._pending_delete.add(key)
        self._free.append(row)
        self._evicted += 1

    def _mark(self, d: dict[int, npt.NDArray[np.bool_]], chunk: int, rows: Any) -> None:
        mask = d.get(chunk)
        if mask is None:
            mask = d[chunk] = np.zeros(self._capacity, dtype=bool)
        mask[rows] = True

    # -- windows ---------------------------------------------------------------------------
    def _fine_window(self) -> tuple[int, int]:
        """First and last fine bucket the fine ring holds (inclusive)."""
        assert self._head_c is not None
        g = self._g
        return (self._head_c - g.keep_fine_c) * g.ratio, (self._head_c + 1) * g.ratio - 1

    def _coarse_window(self) -> tuple[int, int]:
        """First and last coarse bucket the coarse ring holds (inclusive)."""
        assert self._head_c is not None
        g = self._g
        return self._head_c - g.keep_coarse_c, self._head_c - g.keep_fine_c - 1

    def _advance(self, new_c: int) -> None:
        """Move the head to coarse bucket ``new_c``: fold hours leaving the fine ring into the
        coarse ring, drop coarse buckets past the retention, remove series with nothing left."""
        old = self._head_c
        if old is not None and new_c <= old:
            return
        self._head_c = new_c
        if old is None:
            return
        g = self._g
        # coarse buckets leaving the coarse window (cleared before anything is folded in)
        for b in range(
            old - g.keep_coarse_c, min(old - g.keep_fine_c - 1, new_c - g.keep_coarse_c - 1) + 1
        ):
            for a in self._coarse.values():
                a[:, b % g.coarse_len] = np.nan
        # hours leaving the fine window: folded when still within the total retention
        live = np.asarray([k is not None for k in self._keys], dtype=bool)
        for b in range(old - g.keep_fine_c, min(old, new_c - g.keep_fine_c - 1) + 1):
            c0 = (b * g.ratio) % g.fine_len
            cols = slice(c0, c0 + g.ratio)
            if b >= new_c - g.keep_coarse_c:
                with_data = np.zeros(self._capacity, dtype=bool)
                for m in METRICS:
                    mean, mx = _fold(self._fine[m][:, cols])
                    self._coarse[m][:, b % g.coarse_len] = mean
                    self._coarse[f"{m}_max"][:, b % g.coarse_len] = mx
                    with_data |= ~np.isnan(mean)
                self._mark(self._dirty_coarse, b // CHUNK_BUCKETS, with_data & live)
            for a in self._fine.values():
                a[:, cols] = np.nan
        # dirty markers of chunks wholly out of the windows are moot (the age cut deletes them)
        lo_f, _ = self._fine_window()
        lo_c, _ = self._coarse_window()
        for k in [k for k in self._dirty_fine if (k + 1) * CHUNK_BUCKETS <= lo_f]:
            del self._dirty_fine[k]
        for k in [k for k in self._dirty_coarse if (k + 1) * CHUNK_BUCKETS <= lo_c]:
            del self._dirty_coarse[k]
        # series with nothing left
        cutoff_s = lo_c * g.coarse_s
        for row in np.nonzero(live & (self._last_seen < cutoff_s))[0]:
            self._remove(int(row))

    # -- recording -------------------------------------------------------------------------
    def record(self, snapshot: Snapshot, now: datetime) -> None:
        """Add each VM's and each host's demand (cpu, memory) at ``now`` to its fine bucket."""
        if not self.settings.enabled:
            return
        t = epoch_s(now)
        vms = snapshot.vms
        keys: dict[tuple[str, str], int] = {("vm", v.name): i for i, v in enumerate(vms)}
        cpu = [v.cpu_used_cores for v in vms]
        mem = [float(v.memory_used) for v in vms]
        host_sum = {
            h.name: [h.overhead_cpu_cores, float(h.overhead_memory_mib)] for h in snapshot.hosts
        }
        for v, c, m in zip(vms, cpu, mem, strict=True):
            acc = host_sum.get(v.host)
            if acc is not None:
                acc[0] += c
                acc[1] += m
        for name, (c, m) in host_sum.items():
            keys[("host", name)] = len(cpu)
            cpu.append(c)
            mem.append(m)
        vals = np.asarray([cpu, mem], dtype=np.float64).T
        with self._lock:  # a VM named twice: its last entry counts
            self._record(list(keys), vals[list(keys.values())] if len(keys) < len(cpu) else vals, t)

    def record_values(
        self, kind: Kind, values: Mapping[str, tuple[float, float]], now: datetime
    ) -> None:
        """Add (cpu cores, memory MiB) per name of ``kind`` at ``now`` (traces, tests)."""
        if not self.settings.enabled:
            return
        t = epoch_s(now)
        vals = np.asarray(list(values.values()), dtype=np.float64).reshape(len(values), 2)
        with self._lock:
            self._record([(kind, n) for n in values], vals, t)

    def _record(self, keys: list[tuple[str, str]], vals: npt.NDArray[np.float64], t: float) -> None:
        """Record ``vals[i] = (cpu, memory)`` of ``keys[i]`` (unique keys) at ``t``; entries
        with a non-finite value are skipped."""
        g = self._g
        b = math.floor(t / g.fine_s)
        bc = b // g.ratio
        finite = np.isfinite(vals).all(axis=1)
        if not finite.all():
            keys = [keys[i] for i in np.nonzero(finite)[0]]
            vals = vals[finite]
        if not keys:  # nothing to record: time does not move either
            return
        if self._head_c is None or bc > self._head_c:
            self._advance(bc)
        assert self._head_c is not None
        if bc < self._head_c - g.keep_fine_c:
            self._late_dropped += len(keys)
            return
        rows = self._rows_for(keys)
        kept = rows >= 0
        if not kept.all():
            rows = rows[kept]
            vals = vals[kept]
        col = b % g.fine_len
        ob = self._open_bucket[rows]
        same = ob == b
        newer = ob < b
        late = ob > b
        rs, rn, rl = rows[same], rows[newer], rows[late]
        self._open_count[rs] += 1
        self._open_bucket[rn] = b
        self._open_count[rn] = 1
        for i, m in enumerate(METRICS):
            x = vals[:, i]
            s = self._open_sum[m]
            s[rs] += x[same]
            s[rn] = x[newer]
            cells = self._fine[m]
            cells[rs, col] = s[rs] / self._open_count[rs]
            cells[rn, col] = x[newer]
            prev = cells[rl, col]
            cells[rl, col] = np.where(np.isnan(prev), x[late], (prev + x[late]) / 2)
        self._last_seen[rows] = np.maximum(self._last_seen[rows], t)
        self._dirty_series[rows] = True
        self._mark(self._dirty_fine, b // CHUNK_BUCKETS, rows)

    def _rows_for(self, keys: Sequence[tuple[str, str]]) -> npt.NDArray[np.int64]:
        """Rows of ``keys`` (new series added, evicting the least recently seen); -1 = refused."""
        new = [k for k in keys if k not in self._rows]
        room = self.settings.max_series - len(self._rows)
        if len(new) > room:
            current = {self._rows[k] for k in keys if k in self._rows}
            candidates = np.asarray(
                [r for r in self._rows.values() if r not in current], dtype=np.int64
            )
            evict = candidates[np.argsort(self._last_seen[candidates], kind="stable")]
            for row in evict[: len(new) - room]:
                self._remove(int(row))
            room = self.settings.max_series - len(self._rows)
            if len(new) > room:
                self._refused += len(new) - room
                new = new[:room]
        for k in new:
            self._add(k)
        rows = self._rows
        return np.fromiter((rows.get(k, -1) for k in keys), dtype=np.int64, count=len(keys))

    # -- reads -----------------------------------------------------------------------------
    def _lookup(self, kind: str, names: Sequence[str]) -> npt.NDArray[np.int64]:
        rows = self._rows
        return np.fromiter(
            (rows.get((kind, n), -1) for n in names), dtype=np.int64, count=len(names)
        )

    @staticmethod
    def _end_bucket(end: datetime, step_s: int, steps: int) -> int:
        if end.tzinfo is None:
            raise InputError(
                f"naive datetime {end.isoformat()}: end must be UTC-aware", subject="end"
            )
        if steps < 0:
            raise InputError(f"steps must be >= 0, not {steps}", subject="steps")
        t = epoch_s(end)
        e = round(t / step_s)
        if abs(e * step_s - t) > 1e-6:
            raise InputError(
                f"end {end.isoformat()} is not a multiple of {step_s} s since the epoch",
                subject="end",
            )
        return e

    def series(
        self,
        kind: Kind,
        names: Sequence[str],
        *,
        end: datetime,
        steps: int,
        metric: Metric = "cpu",
    ) -> Series:
        """The fine-grid history of ``names`` over the ``steps`` buckets ending at ``end``
        (NaN where nothing, also for names never seen). ``values`` is a fresh array."""
        g = self._g
        e = self._end_bucket(end, g.fine_s, steps)
        names = tuple(names)
        out = np.full((len(names), steps), np.nan, dtype=np.float32)
        with self._lock:
            if self._head_c is not None and names and steps:
                first = e - steps
                lo, hi = self._fine_window()
                self._copy(
                    self._fine[metric], kind, names, max(first, lo), min(e - 1, hi), out, first
                )
        return Series(names=names, values=out, end=end, step_s=float(g.fine_s))

    def _copy(
        self,
        src: npt.NDArray[np.float32],
        kind: str,
        names: tuple[str, ...],
        a: int,
        z: int,
        out: npt.NDArray[np.float32],
        first: int,
    ) -> None:
        if z < a:
            return
        rows = self._lookup(kind, names)
        known = rows >= 0
        if known.all():
            _gather(src, rows, a, z, out, first)
        elif known.any():
            idx = np.nonzero(known)[0]
            part = np.full((len(idx), out.shape[1]), np.nan, dtype=np.float32)
            _gather(src, rows[idx], a, z, part, first)
            out[idx] = part

    def coarse_series(
        self,
        kind: Kind,
        names: Sequence[str],
        *,
        end: datetime,
        steps: int,
        metric: Metric = "cpu",
        stat: Stat = "mean",
    ) -> Series:
        """The coarse-grid history (``stat``: the mean or the max of the fine buckets of each
        coarse bucket). Hours still held at the fine grid are folded on the fly, so that the
        coarse view covers the whole retention, the current (partial) hour included."""
        g = self._g
        e = self._end_bucket(end, g.coarse_s, steps)
        names = tuple(names)
        out = np.full((len(names), steps), np.nan, dtype=np.float32)
        with self._lock:
            if self._head_c is not None and names and steps:
                first = e - steps
                col = metric if stat == "mean" else f"{metric}_max"
                lo, hi = self._coarse_window()
                self._copy(
                    self._coarse[col], kind, names, max(first, lo), min(e - 1, hi), out, first
                )
                a, z = max(first, hi + 1), min(e - 1, self._head_c)
                if a <= z:
                    fine = np.full((len(names), (z - a + 1) * g.ratio), np.nan, dtype=np.float32)
                    self._copy(
                        self._fine[metric],
                        kind,
                        names,
                        a * g.ratio,
                        (z + 1) * g.ratio - 1,
                        fine,
                        a * g.ratio,
                    )
                    mean, mx = _fold(fine.reshape(len(names), z - a + 1, g.ratio))
                    out[:, a - first : z - first + 1] = mean if stat == "mean" else mx
        return Series(names=names, values=out, end=end, step_s=float(g.coarse_s))

    def names(self, kind: Kind) -> tuple[str, ...]:
        with self._lock:
            return tuple(sorted(n for k, n in self._rows if k == kind))

    def stats(self) -> HistoryStats:
        with self._lock:
            live = np.asarray([k is not None for k in self._keys], dtype=bool)
            fine_has = ~np.isnan(self._fine["cpu"][live])
            coarse_has = ~np.isnan(self._coarse["cpu"][live])
            oldest = newest = None
            if self._head_c is not None:
                g = self._g
                lo_c, hi_c = self._coarse_window()
                lo_f, hi_f = self._fine_window()
                cb = [b for b in range(lo_c, hi_c + 1) if coarse_has[:, b % g.coarse_len].any()]
                fb = [b for b in range(lo_f, hi_f + 1) if fine_has[:, b % g.fine_len].any()]
                if cb:
                    oldest = from_epoch_s(cb[0] * g.coarse_s)
                elif fb:
                    oldest = from_epoch_s(fb[0] * g.fine_s)
                if fb:
                    newest = from_epoch_s((fb[-1] + 1) * g.fine_s)
                elif cb:
                    newest = from_epoch_s((cb[-1] + 1) * g.coarse_s)
            arrays: list[npt.NDArray[Any]] = [
                *self._fine.values(),
                *self._coarse.values(),
                *self._open_sum.values(),
                self._last_seen,
                self._open_bucket,
                self._open_count,
                self._dirty_series,
                *self._dirty_fine.values(),
                *self._dirty_coarse.values(),
            ]
            return HistoryStats(
                series=len(self._rows),
                vm_series=sum(1 for k, _ in self._rows if k == "vm"),
                host_series=sum(1 for k, _ in self._rows if k == "host"),
                fine_points=int(fine_has.sum()),
                coarse_points=int(coarse_has.sum()),
                oldest=oldest,
                newest=newest,
                bytes=sum(a.nbytes for a in arrays),
                max_bytes=max_bytes(self.settings),
                late_dropped=self._late_dropped,
                refused=self._refused,
                evicted=self._evicted,
                skipped_chunks=self._skipped_chunks,
            )

    # -- persistence -----------------------------------------------------------------------
    def flush(self) -> None:
        """Write what changed since the last flush, in one transaction (StorageError on failure;
        nothing is marked clean then, so the next flush writes it again)."""
        with self._lock:
            batch = self._batch()
            if not (batch.deleted or batch.series or batch.chunks) and self._head_c is None:
                return
            self.backend.write(batch)
            self._pending_delete.clear()
            self._dirty_series[:] = False
            self._dirty_fine.clear()
            self._dirty_coarse.clear()

    def close(self) -> None:
        """Flush (the backend's engine belongs to the caller)."""
        self.flush()

    def _batch(self) -> HistoryBatch:
        g = self._g
        keys = self._keys
        series = tuple(
            SeriesState(
                kind=key[0],
                name=key[1],
                last_seen_s=float(self._last_seen[r]),
                open_bucket=None
                if self._open_bucket[r] == _NO_BUCKET
                else int(self._open_bucket[r]),
                open_count=int(self._open_count[r]),
                open_sums=tuple(float(self._open_sum[m][r]) for m in METRICS),
            )
            for r in np.nonzero(self._dirty_series)[0]
            if (key := keys[r]) is not None
        )
        chunks: list[Chunk] = []
        keep: dict[int, int] = {}
        if self._head_c is not None:
            lo_f, hi_f = self._fine_window()
            lo_c, hi_c = self._coarse_window()
            chunks += self._chunks(self._dirty_fine, self._fine, g.fine_s, lo_f, hi_f)
            chunks += self._chunks(self._dirty_coarse, self._coarse, g.coarse_s, lo_c, hi_c)
            keep = {
                g.fine_s: (lo_f // CHUNK_BUCKETS) * CHUNK_BUCKETS * g.fine_s,
                g.coarse_s: (lo_c // CHUNK_BUCKETS) * CHUNK_BUCKETS * g.coarse_s,
            }
            if g.fine_s == g.coarse_s:  # one grid for both: keep the older cut
                keep = {g.fine_s: min(keep.values())}
        return HistoryBatch(
            deleted=tuple(sorted(self._pending_delete)),
            series=series,
            chunks=tuple(chunks),
            keep_since_s=keep,
            steps=tuple(sorted({g.fine_s, g.coarse_s})),
        )

    def _chunks(
        self,
        dirty: Mapping[int, npt.NDArray[np.bool_]],
        arrays: Mapping[str, npt.NDArray[np.float32]],
        step_s: int,
        lo: int,
        hi: int,
    ) -> Iterable[Chunk]:
        for k, mask in sorted(dirty.items()):
            rows = np.nonzero(mask)[0].astype(np.int64)
            if not len(rows):
                continue
            first = k * CHUNK_BUCKETS
            a, z = max(first, lo), min(first + CHUNK_BUCKETS - 1, hi)
            blocks: dict[str, npt.NDArray[np.float32]] = {}
            for col, src in arrays.items():
                block = np.full((len(rows), CHUNK_BUCKETS), np.nan, dtype=np.float32)
                _gather(src, rows, a, z, block, first)
                blocks[col] = block.astype(_BLOB_DTYPE)
            for i, r in enumerate(rows):
                key = self._keys[r]
                if key is None:
                    continue
                yield Chunk(
                    kind=key[0],
                    name=key[1],
                    step_s=step_s,
                    start_s=first * step_s,
                    blobs={col: b[i].tobytes() for col, b in blocks.items()},
                )

    def _load(self) -> None:
        g = self._g
        states = sorted(self.backend.load_series(), key=lambda s: (-s.last_seen_s, s.kind, s.name))
        if not states:
            return
        self._head_c = math.floor(states[0].last_seen_s / g.fine_s) // g.ratio
        lo_c, _ = self._coarse_window()
        alive = [s for s in states if s.last_seen_s >= lo_c * g.coarse_s]
        keep = alive[: self.settings.max_series]
        kept = {(s.kind, s.name) for s in keep}
        self._pending_delete.update(
            (s.kind, s.name) for s in states if (s.kind, s.name) not in kept
        )
        self._grow(len(keep))
        for s in keep:
            r = self._add((s.kind, s.name))
            self._last_seen[r] = s.last_seen_s
            self._open_bucket[r] = _NO_BUCKET if s.open_bucket is None else s.open_bucket
            self._open_count[r] = s.open_count
            for m, v in zip(METRICS, s.open_sums, strict=True):
                self._open_sum[m][r] = v
        lo_f, hi_f = self._fine_window()
        lo_c, hi_c = self._coarse_window()
        offsets = np.arange(CHUNK_BUCKETS, dtype=np.int64)
        for ch in self.backend.iter_chunks():
            row = self._rows.get((ch.kind, ch.name))
            if ch.step_s == g.fine_s:
                arrays, lo, hi, length, cols = self._fine, lo_f, hi_f, g.fine_len, FINE_COLUMNS
            elif ch.step_s == g.coarse_s:
                arrays, lo, hi, length, cols = (
                    self._coarse,
                    lo_c,
                    hi_c,
                    g.coarse_len,
                    COARSE_COLUMNS,
                )
            else:
                self._skipped_chunks += 1
                continue
            if row is None:
                continue
            if ch.start_s % (CHUNK_BUCKETS * ch.step_s) or any(
                len(ch.blobs.get(c, b"")) != CHUNK_BUCKETS * 4 for c in cols
            ):
                self._skipped_chunks += 1
                continue
            buckets = ch.start_s // ch.step_s + offsets
            inside = (buckets >= lo) & (buckets <= hi)
            if not inside.any():
                continue
            where = buckets[inside] % length
            for c in cols:
                arrays[c][row, where] = decode(ch.blobs[c])[inside]
