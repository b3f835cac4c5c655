"""CPU compatibility ("EVC for libvirt") between lab hosts whose CPU models differ."""

from __future__ import annotations

import pytest

from balancer.lab import Lab
from balancer.libvirt import LibvirtBackend

pytestmark = [pytest.mark.lab, pytest.mark.timeout(180)]


def test_vm_needing_a_feature_a_host_lacks_is_incompatible_with_it(
    lab: Lab, backend: LibvirtBackend
) -> None:
    poor = lab.poor_host
    assert poor is not None
    rich = [h for h in lab.host_names() if h != poor]
    feature = lab.lacking_feature
    lab.define_vm("needs-feature", rich[0], cpu_features=[feature])
    try:
        assert backend.can_run("needs-feature", poor) is False
        assert backend.can_run("needs-feature", rich[1]) is True
        assert backend.can_run("idle-2", poor) is True  # plain guests run anywhere

        snap = backend.snapshot()
        assert feature in snap.vm("needs-feature").cpu_features
        assert feature not in snap.host(poor).cpu_features
        assert not snap.vm("needs-feature").runs_on(snap.host(poor))

        report = backend.cpu_report()
        assert report.hosts_below == (poor,)
        assert feature not in report.baseline_features
        assert {h.name: h.lacks for h in report.hosts}[poor] == frozenset({feature})
        fits = {f.vm: f for f in report.vms_not_everywhere}
        assert fits["needs-feature"].incompatible_hosts == (poor,)
        assert "idle-2" not in fits
    finally:
        lab.remove_vm("needs-feature")
