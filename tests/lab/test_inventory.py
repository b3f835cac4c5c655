"""Inventory and stats of the lab hosts against what libvirt itself reports."""

from __future__ import annotations

import time

import libvirt
import pytest

from balancer.lab import Lab
from balancer.libvirt import LibvirtBackend

pytestmark = pytest.mark.lab


def test_inventory_matches_libvirt(lab: Lab, backend: LibvirtBackend) -> None:
    snap = backend.snapshot()
    assert [h.name for h in snap.hosts] == lab.host_names()
    for plan in lab.hosts:
        conn = libvirt.open(plan.uri)
        try:
            info = conn.getInfo()
            host = snap.host(plan.name)
            assert host.cpu_cores == info[2]
            assert host.memory_mib == info[1]
            assert host.cpu_features, "host CPU features come from domain capabilities"
            doms = conn.listAllDomains(libvirt.VIR_CONNECT_LIST_DOMAINS_ACTIVE)
            assert {v.name for v in snap.vms_on(plan.name)} == {d.name() for d in doms}
            for dom in doms:
                _state, max_kib, _mem, vcpus, _cpu = dom.info()
                vm = snap.vm(dom.name())
                assert vm.vcpus == vcpus
                assert vm.memory_mib == max_kib // 1024
                assert vm.memory_used_mib is not None and vm.memory_used_mib > 0
        finally:
            conn.close()


def test_busy_guest_uses_about_one_core(lab: Lab, backend: LibvirtBackend, busy_vm: str) -> None:
    backend.snapshot()
    time.sleep(2.0)  # measure over two seconds
    snap = backend.snapshot()
    busy = snap.vm(busy_vm).cpu_used_cores
    # one vCPU spinning is one core; the machine is shared, so allow for some steal
    assert 0.5 <= busy <= 1.3, f"busy guest used {busy:.2f} cores"
    idle = [v.cpu_used_cores for v in snap.vms if v.name.startswith("idle-")]
    assert idle and all(c < 0.25 for c in idle), f"idle guests used {idle} cores"
