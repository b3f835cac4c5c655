"""One collection cycle at 64 hosts x 8,000 VMs over a full 1-hour window of 20 s samples.

    .venv/bin/python -m benchmarks.collectors.run [--hosts 64] [--vms 8000] [--cycles 5]

A cycle = ``PortSampler.sample_with_snapshot`` (one ``snapshot()`` of a port serving jittered
copies of ``generate(GeneratorSpec(hosts, vms))``), ``Window.ingest`` of the batch and
``demand_view`` (EWM + p95 over the window for every VM and host, staleness, the new snapshot).
The window is first filled with one hour of jittered samples. CPU time is ``process_time``;
window memory is what ``tracemalloc`` sees allocated for the window (arrays and names), and the
peak is the highest traced memory during a cycle.
"""

from __future__ import annotations

import argparse
import gc
import statistics
import time
import tracemalloc
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import numpy as np

from balancer.model import Snapshot
from balancer.sim.generator import GeneratorSpec, generate
from collectors.sampler import PortSampler
from collectors.settings import CollectorSettings
from collectors.window import Window, demand_view

START = datetime(2026, 11, 27, 12, 0, tzinfo=UTC)


def jittered(base: Snapshot, rng: np.random.Generator) -> Snapshot:
    factors = rng.uniform(0.8, 1.2, size=len(base.vms))
    return base.with_vms(
        replace(v, cpu_used_cores=round(min(v.vcpus, v.cpu_used_cores * f), 3))
        for v, f in zip(base.vms, factors, strict=True)
    )


class JitterPort:
    """Serves pre-built jittered snapshots (the port's own cost is not the collectors')."""

    def __init__(self, snapshots: list[Snapshot]) -> None:
        self._snapshots = snapshots
        self._i = 0

    def snapshot(self) -> Snapshot:
        self._i += 1
        return self._snapshots[self._i % len(self._snapshots)]


def prefill(
    window: Window, base: Snapshot, rng: np.random.Generator, slots: int, interval_s: float
) -> None:
    names = [v.name for v in base.vms]
    hosts = [v.host for v in base.vms]
    cpu = np.array([v.cpu_used_cores for v in base.vms], dtype=np.float32)
    mem = np.array([v.memory_used for v in base.vms], dtype=np.float32)
    host_cpu: dict[str, float] = {h.name: 0.5 for h in base.hosts}
    for v in base.vms:
        host_cpu[v.host] += v.cpu_used_cores
    for k in range(slots):
        t = START.timestamp() + k * interval_s
        window.ingest_vm_columns(t, names, hosts, cpu * rng.uniform(0.8, 1.2, len(cpu)), mem)
        for h, c in host_cpu.items():
            window.ingest_host(t, h, c, 0.0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--hosts", type=int, default=64)
    ap.add_argument("--vms", type=int, default=8000)
    ap.add_argument("--cycles", type=int, default=5)
    args = ap.parse_args()

    settings = CollectorSettings()  # 1 h window, 20 s samples, p95, 10 min half-life
    base = generate(GeneratorSpec(hosts=args.hosts, vms=args.vms))
    rng = np.random.default_rng(7)
    port = JitterPort([jittered(base, rng) for _ in range(3)])
    sampler = PortSampler(port)

    gc.collect()
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    window = Window(settings)
    prefill(window, base, rng, settings.window_slots, settings.sample_interval_s)
    gc.collect()
    window_traced = tracemalloc.get_traced_memory()[0] - before
    tracemalloc.stop()

    now = START + timedelta(seconds=settings.window_slots * settings.sample_interval_s)
    phases: dict[str, list[float]] = {"sample": [], "ingest": [], "demand": [], "total": []}
    for _ in range(args.cycles):
        t0 = time.process_time()
        snap, batch = sampler.sample_with_snapshot(now)
        t1 = time.process_time()
        window.ingest(batch)
        t2 = time.process_time()
        view = demand_view(window, snap, now)
        t3 = time.process_time()
        phases["sample"].append(t1 - t0)
        phases["ingest"].append(t2 - t1)
        phases["demand"].append(t3 - t2)
        phases["total"].append(t3 - t0)
        now += timedelta(seconds=settings.sample_interval_s)
    assert view.measured_vms == len(base.vms), view.measured_vms

    # peak memory of one cycle (traced separately: tracing slows the code down)
    gc.collect()
    tracemalloc.start()
    snap, batch = sampler.sample_with_snapshot(now)
    window.ingest(batch)
    demand_view(window, snap, now)
    cycle_peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()

    mib = 1024 * 1024
    vms = len(base.vms)
    print(
        f"hosts={len(base.hosts)} vms={vms} window={settings.window_s:g}s/"
        f"{settings.sample_interval_s:g}s ({settings.window_slots} slots) cycles={args.cycles}"
    )
    print("| measure | value |")
    print("|---|---|")
    for name in ("sample", "ingest", "demand", "total"):
        xs = phases[name]
        print(
            f"| CPU s per cycle: {name} (median / max) | "
            f"{statistics.median(xs):.3f} / {max(xs):.3f} |"
        )
    print(f"| window arrays (Window.nbytes) | {window.nbytes / mib:.1f} MiB |")
    print(f"| window traced memory (arrays + names) | {window_traced / mib:.1f} MiB |")
    print(f"| window bytes per 1000 VMs | {window.nbytes / vms * 1000 / mib:.2f} MiB |")
    print(f"| peak traced memory during one cycle (transient) | {cycle_peak / mib:.1f} MiB |")


if __name__ == "__main__":
    main()
