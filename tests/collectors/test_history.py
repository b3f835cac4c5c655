"""The demand history: bucket means, downsampling, bounds, migration, restarts, crashes."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import sqlalchemy as sa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from balancer.errors import InputError, SettingsError, StorageError
from balancer.settings import load_settings
from balancer.storage.db import make_engine
from collectors.history import (
    CHUNK_BUCKETS,
    DemandHistory,
    MemoryHistoryBackend,
    SqlHistoryBackend,
    bytes_per_series,
    grid_end,
    hist_chunk,
    hist_series,
)
from collectors.settings import CollectorSettings, HistorySettings
from tests.factories import make_host, make_snapshot, make_vm
from tests.storage.fixtures import db_url  # noqa: F401 (the fixture: SQLite and PostgreSQL)

#: a UTC midnight (a multiple of every step and of a fine chunk)
T0 = datetime(2026, 3, 2, tzinfo=UTC)
MIN = timedelta(minutes=1)
HOUR = timedelta(hours=1)
DAY = timedelta(days=1)


def small(**kw: Any) -> HistorySettings:
    base: dict[str, Any] = {"fine_keep_days": 1, "coarse_keep_days": 3, "max_series": 50}
    return HistorySettings(**(base | kw))


def vms(values: dict[str, float], host: str = "h1", memory: int = 1024) -> Any:
    hosts = {host} | {"h1"}
    return make_snapshot(
        [make_host(h) for h in sorted(hosts)],
        [make_vm(n, host, cpu_used_cores=v, memory_used_mib=memory) for n, v in values.items()],
    )


def row(h: DemandHistory, name: str, *, end: datetime, steps: int, kind: Any = "vm") -> Any:
    return h.series(kind, [name], end=end, steps=steps).values[0]


def same(a: Any, b: Any) -> bool:
    return bool(np.array_equal(a, b, equal_nan=True))


# -- buckets --------------------------------------------------------------------------------
def test_records_in_one_bucket_give_their_mean_and_missing_buckets_are_nan() -> None:
    h = DemandHistory(small())
    for i, v in enumerate([1.0, 2.0, 6.0]):  # three records in the first 5-minute bucket
        h.record(vms({"a": v}, memory=1000 * (i + 1)), T0 + i * MIN)
    h.record(vms({"a": 5.0}), T0 + 10 * MIN)  # the third bucket; the second has nothing
    h.record(vms({"a": float("nan")}), T0 + 11 * MIN)  # not a measurement: skipped
    s = h.series("vm", ["a", "never"], end=T0 + 15 * MIN, steps=4)
    assert s.end == T0 + 15 * MIN and s.step_s == 300.0 and s.names == ("a", "never")
    assert s.values.dtype == np.float32 and s.values.shape == (2, 4)
    assert same(s.values[0], [np.nan, 3.0, np.nan, 5.0])
    assert np.isnan(s.values[1]).all()
    mem = h.series("vm", ["a"], end=T0 + 5 * MIN, steps=1, metric="memory").values[0]
    assert same(mem, [2000.0])


def test_host_demand_is_the_sum_of_its_vms_plus_its_overhead() -> None:
    snap = make_snapshot(
        [
            make_host("h1", overhead_cpu_cores=0.5, overhead_memory_mib=100),
            make_host("h2"),
        ],
        [
            make_vm("a", "h1", cpu_used_cores=1.0, memory_used_mib=1000),
            make_vm("b", "h1", cpu_used_cores=2.0, memory_mib=2048),  # memory used = configured
            make_vm("c", "h2", cpu_used_cores=4.0, memory_used_mib=10),
        ],
    )
    h = DemandHistory(small())
    h.record(snap, T0)
    end = T0 + 5 * MIN
    cpu = h.series("host", ["h1", "h2"], end=end, steps=1).values[:, 0]
    mem = h.series("host", ["h1", "h2"], end=end, steps=1, metric="memory").values[:, 0]
    assert cpu.tolist() == [3.5, 4.0]
    assert mem.tolist() == [1000 + 2048 + 100, 10]
    assert h.names("host") == ("h1", "h2") and h.names("vm") == ("a", "b", "c")


def test_a_vm_that_migrates_keeps_one_continuous_series() -> None:
    h = DemandHistory(small())
    for i in range(6):
        host = "h1" if i < 3 else "h2"
        h.record(vms({"a": float(i + 1)}, host=host), T0 + i * 5 * MIN)
    assert h.names("vm") == ("a",)
    assert h.series("vm", ["a"], end=T0 + 30 * MIN, steps=6).values[0].tolist() == [
        1,
        2,
        3,
        4,
        5,
        6,
    ]
    hosts = h.series("host", ["h1", "h2"], end=T0 + 30 * MIN, steps=6).values
    assert hosts[0].tolist() == [1, 2, 3, 0, 0, 0]  # h1 is in every snapshot, empty after
    assert same(hosts[1], [np.nan, np.nan, np.nan, 4, 5, 6])


def test_reads_refuse_an_end_off_the_grid_or_naive() -> None:
    h = DemandHistory(small())
    h.record(vms({"a": 1.0}), T0)
    with pytest.raises(InputError, match="multiple of 300"):
        h.series("vm", ["a"], end=T0 + MIN, steps=3)
    with pytest.raises(InputError, match="multiple of 3600"):
        h.coarse_series("vm", ["a"], end=T0 + 5 * MIN, steps=3)
    with pytest.raises(InputError, match="UTC-aware"):
        h.series("vm", ["a"], end=datetime(2026, 3, 2), steps=3)
    assert grid_end(T0 + MIN, 300) == T0 + 5 * MIN
    assert grid_end(T0, 300) == T0 + 5 * MIN
    assert h.series("vm", ["a"], end=grid_end(T0 + MIN, 300), steps=1).values[0, 0] == 1.0


def test_disabled_history_records_nothing() -> None:
    h = DemandHistory(small(enabled=False))
    h.record(vms({"a": 1.0}), T0)
    assert h.stats().series == 0 and h.names("vm") == ()


# -- downsampling ---------------------------------------------------------------------------
def _value(t: datetime) -> float:
    """A distinct, known value per 5-minute bucket: hour of the run + minute / 100."""
    k = int((t - T0) / (5 * MIN))
    return float(k // 12) + (k % 12) / 100


def test_fine_points_become_hourly_means_and_max_then_are_dropped() -> None:
    h = DemandHistory(small())  # fine 1 day, coarse to 3 days
    t = T0
    while t < T0 + 2 * DAY:  # two days of 5-minute records
        h.record(vms({"a": _value(t)}), t)
        t += 5 * MIN
    last = T0 + 2 * DAY  # the newest record is at last - 5 min, in hour 47
    # day 1 (hours 0..22) left the fine grid: NaN there, hourly mean and max in the coarse grid
    fine = row(h, "a", end=last, steps=2 * 288)
    assert np.isnan(fine[: 23 * 12]).all()
    assert not np.isnan(fine[23 * 12 :]).any()  # hour 23 and day 2 are still fine
    mean = h.coarse_series("vm", ["a"], end=last, steps=48).values[0]
    mx = h.coarse_series("vm", ["a"], end=last, steps=48, stat="max").values[0]
    hours = np.arange(48)
    assert np.allclose(mean, hours + 0.055, atol=1e-5)  # mean of hour + 0.00..0.11
    assert np.allclose(mx, hours + 0.11, atol=1e-5)
    # the folded hours are the same values as the on-the-fly fold of those still fine
    fold_before = DemandHistory(small())
    for k in range(12):
        fold_before.record(vms({"a": _value(T0 + k * 5 * MIN)}), T0 + k * 5 * MIN)
    assert same(fold_before.coarse_series("vm", ["a"], end=T0 + HOUR, steps=1).values[0], mean[:1])
    # two more days: day 1 is now older than coarse_keep_days (3) and dropped
    while t < T0 + 4 * DAY:
        h.record(vms({"a": _value(t)}), t)
        t += 5 * MIN
    end = T0 + 4 * DAY
    mean = h.coarse_series("vm", ["a"], end=end, steps=96).values[0]
    assert np.isnan(mean[:23]).all()  # hours 0..22: before hour 95 - 72
    assert np.allclose(mean[23:], np.arange(23, 96) + 0.055, atol=1e-5)
    st_ = h.stats()
    assert st_.oldest == T0 + 23 * HOUR and st_.newest == end
    # fine: hours 71..95; coarse: hours 23..70
    assert st_.fine_points == 2 * 25 * 12 and st_.coarse_points == 2 * 48  # a and host h1


def test_records_older_than_the_fine_window_are_ignored_and_counted() -> None:
    h = DemandHistory(small())
    h.record(vms({"a": 1.0}), T0 + 3 * DAY)
    h.record(vms({"a": 9.0, "b": 9.0}), T0)  # two days before: beyond the fine window
    assert h.stats().late_dropped == 3 and h.names("vm") == ("a",)  # a, b and host h1
    h.record(vms({"a": 3.0}), T0 + 3 * DAY - 5 * MIN)  # late but in the window: kept
    assert row(h, "a", end=T0 + 3 * DAY + 5 * MIN, steps=2).tolist() == [3.0, 1.0]


# -- bounds ---------------------------------------------------------------------------------
def test_max_series_evicts_the_least_recently_seen() -> None:
    h = DemandHistory(small(max_series=3))
    snap = make_snapshot(  # no host: vm series only
        [], [make_vm(n, "gone", cpu_used_cores=1.0) for n in "abc"]
    )
    h.record(snap, T0)
    h.record(make_snapshot([], [make_vm("a", "gone"), make_vm("c", "gone")]), T0 + HOUR)
    h.record(make_snapshot([], [make_vm("d", "gone")]), T0 + 2 * HOUR)  # b: seen longest ago
    assert h.names("vm") == ("a", "c", "d") and h.stats().evicted == 1
    h.record(make_snapshot([], [make_vm(n, "gone") for n in "efghi"]), T0 + 3 * HOUR)
    stats = h.stats()  # five new series, room for three: the record's own are never evicted
    assert stats.series == 3 and stats.refused == 2 and h.names("vm") == ("e", "f", "g")
    assert np.isnan(row(h, "b", end=T0 + HOUR, steps=12)).all()  # evicted: nothing left


def test_a_series_not_seen_for_coarse_keep_days_is_removed() -> None:
    h = DemandHistory(small())
    h.record(vms({"old": 1.0, "new": 1.0}), T0)
    h.record(vms({"new": 2.0}), T0 + 2 * DAY)
    h.record(vms({"new": 3.0}), T0 + 3 * DAY + HOUR)  # hour 0 is now past the retention
    assert h.names("vm") == ("new",) and h.stats().evicted == 1


def test_the_bound_in_bytes_is_what_the_module_doc_states() -> None:
    default = HistorySettings()
    assert bytes_per_series(default) == 61_600
    assert bytes_per_series(default) * default.max_series == 1_232_000_000
    h = DemandHistory(small(max_series=10))
    for i in range(30):
        h.record(make_snapshot([], [make_vm(f"v{i}", "x")]), T0 + i * MIN)
    assert h.stats().bytes <= h.stats().max_bytes * 2 + 64 * 8 * 1000  # allocated >= bound


@st.composite
def _runs(draw: st.DrawFn) -> list[tuple[int, list[str]]]:
    """Records: (minutes since T0, any order, up to ~6 days; the VM names recorded)."""
    n = draw(st.integers(1, 40))
    minutes = st.integers(0, 6 * 24 * 60)
    names = st.lists(st.sampled_from([f"v{i}" for i in range(12)]), max_size=8)
    return [(draw(minutes), draw(names)) for _ in range(n)]


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(runs=_runs(), max_series=st.integers(1, 6))
def test_whatever_the_records_the_history_stays_within_its_bounds(
    runs: list[tuple[int, list[str]]], max_series: int
) -> None:
    cfg = small(max_series=max_series)
    backend = MemoryHistoryBackend()
    h = DemandHistory(cfg, backend)
    newest: int | None = None
    for i, (minute, names) in enumerate(runs):
        at = T0 + minute * MIN
        if newest is not None and at < T0 + newest * MIN - DAY:
            pass  # beyond the fine window: ignored
        elif names:
            newest = minute if newest is None else max(newest, minute)
        h.record(make_snapshot([], [make_vm(n, "x", cpu_used_cores=1.0) for n in names]), at)
        if i % 7 == 0:
            h.flush()
        assert h.stats().series <= max_series
    h.flush()
    stats = h.stats()
    assert stats.series <= max_series and len(backend.series) == stats.series
    if newest is None:
        assert stats.oldest is None
        return
    head_hour = T0 + (newest // 60) * HOUR
    # nothing older than the keep limits, in memory and in the backend
    assert stats.oldest is not None and stats.oldest >= head_hour - 3 * DAY
    everything = T0 + (newest // 60 + 1) * HOUR
    names = sorted({n for _, ns in runs for n in ns})
    steps = int((everything - T0) / (5 * MIN)) + 1
    fine = h.series("vm", names, end=everything, steps=steps)
    first = everything - steps * 5 * MIN  # the start of column 0
    too_old = max(0, int((head_hour - DAY - first) / (5 * MIN)))  # columns before the window
    assert np.isnan(fine.values[:, :too_old]).all()
    coarse = h.coarse_series("vm", names, end=everything, steps=steps // 12 + 1).values
    assert np.isnan(coarse[:, : max(0, coarse.shape[1] - 1 - 72)]).all()
    for key, ch in backend.chunks.items():
        span = timedelta(seconds=CHUNK_BUCKETS * ch.step_s)
        start = T0 + timedelta(seconds=ch.start_s - T0.timestamp())
        limit = head_hour - (DAY if ch.step_s == 300 else 3 * DAY)
        assert start + span > limit, key
        assert (ch.kind, ch.name) in backend.series
    per_series = (1 * 288 + 12) // CHUNK_BUCKETS + 2 + (2 * 24) // CHUNK_BUCKETS + 2
    assert len(backend.chunks) <= per_series * max_series


# -- settings -------------------------------------------------------------------------------
def test_history_settings_default_and_validation_names_the_field(tmp_path: Path) -> None:
    assert CollectorSettings().history == HistorySettings()
    for kw, field, msg in [
        ({"coarse_step_s": 1000}, "coarse_step_s", "multiple of fine_step_s"),
        ({"coarse_keep_days": 14}, "coarse_keep_days", "must exceed fine_keep_days"),
        ({"fine_step_s": 7}, "fine_step_s", "divide a day"),
        ({"max_series": 0}, "max_series", "greater than or equal to 1"),
    ]:
        with pytest.raises(ValidationError) as info:
            CollectorSettings(history=kw)  # type: ignore[arg-type]
        err = info.value.errors()[0]
        assert err["loc"] == ("history", field) and msg in err["msg"]
    cfg = tmp_path / "balancer.yaml"
    cfg.write_text("backend: {kind: simulated}\ncollectors:\n  history:\n    coarse_step_s: 1000\n")
    with pytest.raises(SettingsError, match=r"balancer.yaml:4: collectors.history.coarse_step_s"):
        load_settings(cfg)


# -- persistence ----------------------------------------------------------------------------
def _fill(h: DemandHistory, start: datetime, hours: int, names: str = "ab") -> datetime:
    t = start
    while t < start + hours * HOUR:
        h.record(vms({n: _value(t) + i for i, n in enumerate(names)}), t)
        t += 5 * MIN
    return t


def _views(h: DemandHistory, end: datetime) -> list[Any]:
    names = ["a", "b", "h1", "c"]
    hour_end = grid_end(end - timedelta(seconds=1), 3600)
    return [
        h.series("vm", names, end=end, steps=2 * 288).values,
        h.series("host", names, end=end, steps=2 * 288).values,
        h.series("vm", names, end=end, steps=2 * 288, metric="memory").values,
        h.coarse_series("vm", names, end=hour_end, steps=72).values,
        h.coarse_series("vm", names, end=hour_end, steps=72, stat="max").values,
        h.names("vm"),
        h.names("host"),
    ]


def _equal_views(a: list[Any], b: list[Any]) -> bool:
    return all(
        same(x, y) if isinstance(x, np.ndarray) else x == y for x, y in zip(a, b, strict=True)
    )


@pytest.mark.parametrize("backend", ["sqlite", "memory"])
def test_survives_a_restart_with_the_same_series(backend: str, tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'balancer.db'}"
    memory = MemoryHistoryBackend()

    def open_history() -> tuple[DemandHistory, sa.Engine | None]:
        if backend == "memory":
            return DemandHistory(small(), memory), None
        engine = make_engine(url)
        return DemandHistory(small(), SqlHistoryBackend(engine)), engine

    h, engine = open_history()
    end = _fill(h, T0, 36)  # a day and a half: coarse and fine
    h.record(vms({"a": 100.0}), end)  # two records in the open bucket...
    h.record(vms({"a": 200.0}), end + MIN)
    h.close()
    before = _views(h, end + 5 * MIN)
    if engine is not None:
        engine.dispose()
    h2, engine2 = open_history()
    assert _equal_views(_views(h2, end + 5 * MIN), before)
    assert h2.stats().series == h.stats().series and h2.stats().skipped_chunks == 0
    h2.record(vms({"a": 600.0}), end + 2 * MIN)  # ...and a third after the restart: exact mean
    assert row(h2, "a", end=end + 5 * MIN, steps=1).tolist() == [300.0]
    if engine2 is not None:
        engine2.dispose()


@pytest.mark.postgres
def test_survives_a_restart_on_postgresql(postgres_url: str) -> None:
    url = postgres_url
    engine = make_engine(url)
    h = DemandHistory(small(), SqlHistoryBackend(engine))
    end = _fill(h, T0, 36)
    h.record(vms({"a": 1.5}), end)
    h.flush()
    before = _views(h, end + 5 * MIN)
    engine.dispose()
    engine = make_engine(url)
    h2 = DemandHistory(small(), SqlHistoryBackend(engine))
    assert _equal_views(_views(h2, end + 5 * MIN), before)
    h2.record(vms({"a": 2.5}), end + MIN)  # upserts over the stored rows
    h2.flush()
    h3 = DemandHistory(small(), SqlHistoryBackend(engine))
    assert row(h3, "a", end=end + 5 * MIN, steps=1).tolist() == [2.0]
    engine.dispose()


def _counts(engine: sa.Engine) -> tuple[int, int]:
    with engine.connect() as c:
        n_series = c.execute(sa.select(sa.func.count()).select_from(hist_series)).scalar_one()
        n_chunks = c.execute(sa.select(sa.func.count()).select_from(hist_chunk)).scalar_one()
    return int(n_series), int(n_chunks)


def test_the_database_stays_bounded_and_evictions_are_not_resurrected(db_url: str) -> None:  # noqa: F811
    engine = make_engine(db_url)
    h = DemandHistory(small(max_series=4), SqlHistoryBackend(engine))
    t = T0
    for day in range(8):  # a new VM every day, each recorded for a day; flushed hourly
        while t < T0 + (day + 1) * DAY:
            h.record(make_snapshot([], [make_vm(f"v{day}", "x"), make_vm("keep", "x")]), t)
            t += 5 * MIN
            if t.minute == 0:
                h.flush()
    n_series, n_chunks = _counts(engine)
    assert n_series == h.stats().series <= 4
    # per series: fine chunks over 25 hours (at most 2) + coarse over 2 days (at most 2)
    assert n_chunks <= n_series * 4
    h2 = DemandHistory(small(max_series=4), SqlHistoryBackend(engine))
    assert h2.names("vm") == h.names("vm") and "v0" not in h2.names("vm")
    engine.dispose()


def test_a_crash_loses_only_the_unflushed_part_and_never_corrupts(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'balancer.db'}"
    engine = make_engine(url)
    h = DemandHistory(small(), SqlHistoryBackend(engine))
    end = _fill(h, T0, 30)
    h.flush()
    flushed = _views(h, end + 5 * MIN)
    _fill(h, end, 3)  # recorded, never flushed: the process dies
    engine.dispose()

    engine = make_engine(url)
    after_crash = DemandHistory(small(), SqlHistoryBackend(engine))
    assert _equal_views(_views(after_crash, end + 5 * MIN), flushed)
    assert np.isnan(row(after_crash, "a", end=end + 3 * HOUR, steps=36)).all()

    # a flush that dies half-way (the database fails on its 3rd statement) writes nothing...
    _fill(after_crash, end, 5)
    statements = 0

    def fail(*_args: Any) -> None:
        nonlocal statements
        statements += 1
        if statements == 3:
            raise sa.exc.OperationalError("flush", {}, Exception("the database went away"))

    sa.event.listen(engine, "before_cursor_execute", fail)
    with pytest.raises(StorageError, match="went away"):
        after_crash.flush()
    sa.event.remove(engine, "before_cursor_execute", fail)
    reader = DemandHistory(small(), SqlHistoryBackend(make_engine(url)))
    assert _equal_views(_views(reader, end + 5 * MIN), flushed)
    # ...and the next flush writes everything
    after_crash.flush()
    full = _views(after_crash, end + 5 * HOUR)
    assert _equal_views(
        _views(DemandHistory(small(), SqlHistoryBackend(engine)), end + 5 * HOUR), full
    )
    engine.dispose()


def test_stored_chunks_are_little_endian_float32_with_nan(tmp_path: Path) -> None:
    engine = make_engine(f"sqlite:///{tmp_path / 'balancer.db'}")
    h = DemandHistory(small(), SqlHistoryBackend(engine))
    h.record(vms({"a": 1.25}), T0 + 10 * MIN)
    h.flush()
    with engine.connect() as c:
        r = c.execute(
            sa.select(hist_chunk).where(hist_chunk.c.kind == "vm", hist_chunk.c.name == "a")
        ).one()
    assert (r.step_s, r.start_s) == (300, int(T0.timestamp()))
    values = np.frombuffer(r.cpu, dtype="<f4")
    assert len(values) == CHUNK_BUCKETS and values[2] == 1.25
    assert np.isnan(np.delete(values, 2)).all()
    engine.dispose()
