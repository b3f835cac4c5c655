"""On the libvirt lab, through the collectors: a busy guest shows as about one core used, an idle
guest near zero, and the host's load is their sum plus the host's own use."""

from __future__ import annotations

import time
from datetime import UTC, datetime

import psutil
import pytest

from balancer.lab import Lab
from collectors.sampler import PortSampler
from collectors.samples import EntityKind
from collectors.window import Window, demand_view
from tests.collectors.helpers import settings

pytestmark = pytest.mark.lab


def qemu_of(lab: Lab, vm: str) -> psutil.Process:
    """The qemu process of ``vm`` in *this* lab (other labs on the machine use the same names;
    the lab's state directory is in the disk path on the command line)."""
    for p in psutil.process_iter(["name", "cmdline"]):
        args = p.info["cmdline"] or []
        if (
            (p.info["name"] or "").startswith("qemu")
            and any(a.startswith(f"guest={vm},") for a in args)
            and any(str(lab.state_dir) in a for a in args)
        ):
            return p
    raise AssertionError(f"no qemu process for {vm} under {lab.state_dir}")


def cpu_s(p: psutil.Process) -> float:
    t = p.cpu_times()
    return float(t.user + t.system)


def test_busy_idle_and_host_load_through_the_window(lab: Lab) -> None:
    lab.wait_counter_running("busy-1", timeout_s=60)
    qemu = qemu_of(lab, "busy-1")
    backend = lab.backend()
    try:
        sampler = PortSampler(backend)
        w = Window(settings(window_s=60, sample_interval_s=1, stale_after_s=30, halflife_s=10))
        sampler.sample(datetime.now(UTC))  # the backend's first reading: rates start here
        ref_cpu, ref_wall = cpu_s(qemu), time.monotonic()
        for _ in range(5):
            time.sleep(1.2)
            snap, batch = sampler.sample_with_snapshot(datetime.now(UTC))
            w.ingest(batch)
        # an independent measure of what the guest got: its qemu process's CPU time
        reference = (cpu_s(qemu) - ref_cpu) / (time.monotonic() - ref_wall)
        now = datetime.now(UTC)
        view = demand_view(w, snap, now)
    finally:
        backend.close()

    demand = view.snapshot
    busy_host = demand.vm("busy-1").host
    busy = demand.vm("busy-1").cpu_used_cores
    measured = w.frame(EntityKind.VM, "cpu_used_cores", now)["busy-1"].mean()
    # the collectors report what the guest really got ...
    assert abs(measured - reference) <= 0.1 + 0.2 * reference, (measured, reference)
    # ... which is one core when the shared 2-core machine leaves it one (other jobs run here:
    # under a load of 8 the spinning guest was seen getting 0.2 core, and so did its qemu)
    if reference >= 0.8:
        assert 0.8 <= busy <= 1.3, f"busy guest: {busy:.2f} cores"
    idle = {v.name: v.cpu_used_cores for v in demand.vms if v.name.startswith("idle-")}
    assert idle and all(c < 0.1 for c in idle.values()), idle
    assert busy > 2 * max(idle.values()), (busy, idle)
    assert view.freshness.balancing_allowed, view.freshness.explain()

    # each host sample: total measured = its VMs + its own use (own use >= 0)
    total = w.frame(EntityKind.HOST, "cpu_used_cores", now)[busy_host].dropna()
    own = w.frame(EntityKind.HOST, "overhead_cpu_cores", now)[busy_host].dropna()
    vms = w.frame(EntityKind.VM, "cpu_used_cores", now)
    on_host = [v.name for v in snap.vms if v.host == busy_host]
    vm_sum = vms[on_host].sum(axis=1).loc[total.index]
    assert ((total - (vm_sum + own)).abs() < 0.05).all(), (total, vm_sum, own)
    assert (own >= 0).all()
    # the load the optimizer sees counts the host's own use against its capacity
    load = demand.loads()[busy_host].cpu_demand_cores
    expected = sum(v.cpu_used_cores for v in demand.vms_on(busy_host))
    assert load == pytest.approx(expected + demand.host(busy_host).overhead_cpu_cores)
    assert load >= busy
