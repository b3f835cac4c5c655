"""A move made outside the balancer (another libvirt client, an operator's ``virsh migrate``)
breaks the premises of the plan made before it: the service supersedes that plan at once and
plans again, instead of leaving its recommendations standing until the next balance cycle.
On the libvirt lab the same path runs from libvirt's lifecycle events
(``tests/service/test_lab.py``)."""

from __future__ import annotations

from pathlib import Path

import pytest

from balancer.port import MigrationOptions
from balancer.service.ports import AuditFilter
from balancer.service.runtime import Runtime
from balancer.settings import load_settings
from tests.service.running import wait_for, write_settings
from tests.service.test_breakers import _cluster

pytestmark = pytest.mark.timeout(120)


def test_a_move_outside_the_balancer_supersedes_the_plan_it_breaks_and_a_new_plan_follows(
    tmp_path: Path,
) -> None:
    cfg = write_settings(
        tmp_path,
        policy={"automation": "manual", "exclude": []},
        # no cycle of its own would run during the test: a new plan can only be the replan
        intervals={"collect_s": 3600, "balance_s": 3600, "policy_reload_s": 3600},
    )
    (tmp_path / "policies" / "rules.yaml").write_text("rules: []\n")
    sim = _cluster()
    rt = Runtime.build(load_settings(cfg), port=sim)
    try:
        rt.start()
        svc = rt.service
        svc.collect()
        first = svc.balance()
        recs = svc.recommendations()
        assert recs, "the skewed cluster gives recommendations"
        rec = recs[0]
        # someone else moves another VM onto the recommendation's target
        snap = svc.snapshot()
        vm = next(v for v in snap.vms if v.host not in (rec.target, rec.source))
        job = sim.start_migration(vm.name, vm.host, rec.target, MigrationOptions())
        wait_for("the outside move", lambda: sim.progress(job).state.final, timeout_s=30)
        assert sim.locate(vm.name) == rec.target
        svc.collect()
        expired = {r.id: r for r in svc.recommendations(state="expired")}
        assert rec.id in expired
        assert expired[rec.id].note.startswith(f"superseded: {vm.name} moved {vm.host} ->")
        records = svc.audit.query(AuditFilter(kind="plan"))
        (record,) = [r for r in records if r.result == "superseded"]
        assert record.plan_id == first.id and vm.name in record.detail
        # planned again at once, on the cluster as it is now
        replan = wait_for(
            "a new plan", lambda: next((p for p in svc.plans() if p.id != first.id), None)
        )
        assert svc.snapshot().vm(vm.name).host == rec.target
        assert all(r.plan_id == replan.id for r in svc.recommendations())
    finally:
        rt.close()
