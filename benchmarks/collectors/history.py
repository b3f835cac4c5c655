"""The demand history at 8,000 VMs + 64 hosts with the default settings (5 min for 14 days, then
hourly to 90 days).

    .venv/bin/python -m benchmarks.collectors.history [--vms 8000] [--hosts 64] [--days 15]

The history is filled with ``--days`` of 5-minute records (values from a seeded daily pattern,
through ``record_values``), then measured: ``record`` of one full snapshot, ``series`` for all
VMs with steps=4032 (14 days), ``coarse_series`` for all VMs over 90 days, ``flush`` to an
SQLite file (the first, full flush, then the steady one after one more 5-minute bucket), the
file size, and the load on construction (a restart). Times are wall-clock medians of
``--repeat`` runs (``perf_counter``); memory is ``stats().bytes``.
"""

from __future__ import annotations

import argparse
import contextlib
import sqlite3
import statistics
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np

from balancer.model import VM, Host, Snapshot
from balancer.storage.db import make_engine
from collectors.history import DemandHistory, SqlHistoryBackend, grid_end
from collectors.settings import HistorySettings

START = datetime(2026, 1, 5, tzinfo=UTC)
STEP = timedelta(minutes=5)


def timed(fn: Callable[[], object], repeat: int) -> float:
    runs = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        runs.append(time.perf_counter() - t)
    return statistics.median(runs)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--vms", type=int, default=8000)
    ap.add_argument("--hosts", type=int, default=64)
    ap.add_argument("--days", type=int, default=15)
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args()
    rng = np.random.default_rng(1)
    names = [f"vm{i:05d}" for i in range(args.vms)]
    hosts = [f"h{i:03d}" for i in range(args.hosts)]
    base = rng.uniform(0.2, 4.0, size=args.vms)
    phase = rng.uniform(0, 2 * np.pi, size=args.vms)
    settings = HistorySettings()
    h = DemandHistory(settings)
    t0 = time.perf_counter()
    t = START
    steps = args.days * 288
    for k in range(steps):
        day = 2 * np.pi * (k % 288) / 288
        cpu = base * (1 + 0.5 * np.sin(day + phase))
        pairs = zip(cpu.tolist(), [2048.0] * args.vms, strict=True)
        h.record_values("vm", dict(zip(names, pairs, strict=True)), t)
        t += STEP
    fill_s = time.perf_counter() - t0
    end = grid_end(t - STEP, 300)
    snap = Snapshot(
        hosts=tuple(Host(name=n, cpu_cores=64, memory_mib=524288) for n in hosts),
        vms=tuple(
            VM(name=n, host=hosts[i % args.hosts], vcpus=4, memory_mib=4096, cpu_used_cores=1.0)
            for i, n in enumerate(names)
        ),
    )
    record_s = timed(lambda: h.record(snap, t - STEP), args.repeat)
    series_s = timed(lambda: h.series("vm", names, end=end, steps=4032), args.repeat)
    full = h.series("vm", names, end=end, steps=4032)
    coarse_end = grid_end(t - STEP, 3600)
    coarse_s = timed(
        lambda: h.coarse_series("vm", names, end=coarse_end, steps=90 * 24), args.repeat
    )
    stats = h.stats()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "balancer.db"
        engine = make_engine(f"sqlite:///{path}")
        backend = SqlHistoryBackend(engine)
        h.backend = backend  # filled in memory, written by its first flush
        t1 = time.perf_counter()
        h.flush()
        first_flush_s = time.perf_counter() - t1
        steady = []
        for i in range(args.repeat):
            h.record(snap, t + i * STEP)
            t1 = time.perf_counter()
            h.flush()
            steady.append(time.perf_counter() - t1)
        t1 = time.perf_counter()
        h3 = DemandHistory(settings, SqlHistoryBackend(engine))
        load_s = time.perf_counter() - t1
        assert h3.stats().series == h.stats().series
        engine.dispose()
        with contextlib.closing(sqlite3.connect(path)) as db:  # the WAL folded into the file
            db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        size_mb = path.stat().st_size / 1e6
    print(f"fill: {args.days} days of 5-minute records for {args.vms} VMs in {fill_s:.1f} s")
    print("| measure | value |\n|---|---|")
    print(f"| series | {stats.series} |")
    print(f"| in-memory bytes (stats().bytes) | {stats.bytes:,} |")
    print(f"| bound at max_series={settings.max_series} | {stats.max_bytes:,} |")
    print(f"| record(snapshot of {args.vms} VMs, {args.hosts} hosts) | {record_s * 1e3:.1f} ms |")
    print(f"| series(vm, {args.vms} names, steps=4032) | {series_s * 1e3:.1f} ms |")
    print(f"|   its values | {full.values.nbytes / 1e6:.0f} MB |")
    print(f"| coarse_series(vm, {args.vms} names, steps=2160) | {coarse_s * 1e3:.1f} ms |")
    print(f"| first flush (everything, SQLite) | {first_flush_s:.2f} s |")
    print(f"| steady flush (one bucket later, SQLite) | {statistics.median(steady):.2f} s |")
    print(f"| SQLite file (after a WAL checkpoint) | {size_mb:.0f} MB |")
    print(f"| load on construction (restart) | {load_s:.2f} s |")


if __name__ == "__main__":
    main()
