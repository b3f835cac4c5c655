"""The learned migration cost (balancer.service.copycost): each VM's copy factor moves toward
what its migrations really copied, and the optimizer weighs its moves with it."""

from __future__ import annotations

import pytest

from balancer.errors import SnapshotError
from balancer.optimizer.thresholds import copied_gib
from balancer.service.copycost import CopyCostModel
from balancer.snapshot_io import snapshot_from_dict, snapshot_to_dict
from tests.factories import make_host, make_snapshot, make_vm


def test_the_factor_learns_from_what_was_copied_and_the_error_shrinks() -> None:
    vm = make_vm("a", "h1", memory_mib=1024, dirty_rate_mib_s=0.0)
    model = CopyCostModel()
    assert model.factor("a") == 1.0 and copied_gib(vm, 0) == pytest.approx(1.0)
    first = model.learn(vm, 2048.0, 0)  # it copied twice its memory
    assert first == pytest.approx(0.5) and model.factor("a") == pytest.approx(1.5)
    second = model.learn(vm, 2048.0, 0)
    assert second == pytest.approx(0.25) and model.factor("a") == pytest.approx(1.75)
    stats = model.stats()
    assert stats.migrations == 2 and stats.copied_gib == pytest.approx(4.0)
    assert stats.expected_gib == pytest.approx(1.0 + 1.5)
    assert stats.mean_abs_error == pytest.approx(0.375)
    assert model.learn(vm, 0.0, 0) is None and model.stats().migrations == 2
    # the balance cycle plans with it: the VM's moves cost what it really copies
    snap = model.apply(make_snapshot([make_host("h1")], [vm, make_vm("b", "h1")]))
    assert snap.vm("a").copy_factor == 1.75 and snap.vm("b").copy_factor == 1.0
    assert copied_gib(snap.vm("a"), 0) == pytest.approx(1.75)


def test_a_factor_stays_within_the_models_bounds() -> None:
    vm = make_vm("a", "h1", memory_mib=1024)
    model = CopyCostModel()
    for _ in range(20):
        model.learn(vm, 1024.0 * 1000, 0)
    assert model.factor("a") <= 8.0


def test_the_snapshot_carries_the_factor_only_when_learned() -> None:
    snap = make_snapshot([make_host("h1")], [make_vm("a", "h1"), make_vm("b", "h1")])
    doc = snapshot_to_dict(CopyCostModel().apply(snap))
    assert all("copy_factor" not in v for v in doc["vms"])
    doc["vms"][0]["copy_factor"] = 1.5
    assert snapshot_from_dict(doc).vm("a").copy_factor == 1.5
    assert snapshot_to_dict(snapshot_from_dict(doc))["vms"][0]["copy_factor"] == 1.5
    doc["vms"][0]["copy_factor"] = 50
    with pytest.raises(SnapshotError, match="copy_factor"):
        snapshot_from_dict(doc)


def test_the_copy_time_error_is_kept_against_libvirts_job_time() -> None:
    vm = make_vm("a", "h1", memory_mib=1024, dirty_rate_mib_s=0.0)
    model = CopyCostModel()
    # 1 GiB expected at 100 MiB/s: 10.24 s; the job took 20.48 s, then exactly 15.36 s
    model.learn(vm, 1024.0, 100, 20.48)
    model.learn(vm, 1024.0, 100, None)  # no job time: the GiB are learned, not the time
    stats = model.stats()
    assert stats.migrations == 2 and stats.mean_abs_time_error == pytest.approx(0.5)
