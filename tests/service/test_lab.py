"""The service on the libvirt lab: a host put into maintenance is emptied by real live
migrations while the busy guest's counter keeps increasing; exit with move-back returns it.

Marked ``lab``: skipped without the prerequisites, failed instead with BALANCER_REQUIRE_LAB=1.
"""

from __future__ import annotations

import contextlib
import json
import subprocess
from pathlib import Path

import pytest

from balancer.lab import Lab
from balancer.lab.testing import lab_fixture
from balancer.service.runtime import Runtime
from balancer.settings import load_settings
from tests.service.running import TOKENS, wait_for, write_settings

lab = lab_fixture()

pytestmark = [pytest.mark.lab, pytest.mark.timeout(600)]


def test_maintenance_on_the_lab_empties_a_host_by_live_migration(lab: Lab, tmp_path: Path) -> None:
    busy = "busy-1"
    lab.wait_counter_running(busy, timeout_s=120)
    host = lab.where(busy)[0]
    cfg = write_settings(
        tmp_path,
        policy={"automation": "partial", "threshold": 1, "exclude": []},
        intervals={"collect_s": 1.0, "balance_s": 30, "policy_reload_s": 5},
        service={"plan_time_limit_s": 5, "executor_poll_s": 0.5},
    )
    (tmp_path / "policies" / "rules.yaml").write_text("rules: []\n")
    backend = lab.backend()
    rt = Runtime.build(load_settings(cfg), port=backend)
    try:
        rt.start()
        svc = rt.service
        leaving = [v.name for v in svc.snapshot().vms_on(host)]
        assert busy in leaving
        pre = svc.preflight(host)
        assert pre.can_enter, pre.reason

        before = lab.read_counter(busy)
        m = svc.enter_maintenance(host, who="lab-test")
        assert m.state == "evacuating"
        final = wait_for(
            f"{host} in maintenance",
            lambda: (s := svc.maintenance_status(host)).state == "maintenance" and s,
            timeout_s=300,
            every_s=1.0,
        )
        assert final.remaining_vms == 0
        for vm in leaving:
            where = lab.where(vm)
            assert where and host not in where, (vm, where)
        # the busy guest kept counting through its live migration, and still counts
        after = lab.read_counter(busy)
        assert after > before
        wait_for(
            f"{busy} counting on its new host",
            lambda: lab.read_counter(busy) > after,
            timeout_s=30,
            every_s=0.3,
        )
        migs = [x for x in svc.migrations() if x.vm in leaving]
        assert migs and all(x.state == "succeeded" for x in migs)
        assert all(x.priority == "evacuation" and x.who == "lab-test" for x in migs)
        # libvirt's copied figures taught the copy-cost model about each moved guest
        learned = svc.copy_cost.stats()
        assert learned.migrations >= len(leaving) and learned.copied_gib > 0, learned
        assert all(svc.copy_cost.factor(vm) != 1.0 for vm in leaving), svc.copy_cost.factors()

        # put the lab back as it was (other tests share it)
        svc.exit_maintenance(host, who="lab-test", move_back=True)
        wait_for(
            f"{busy} back on {host}",
            lambda: lab.where(busy) == [host],
            timeout_s=300,
            every_s=1.0,
        )
        assert lab.read_counter(busy) > after
    finally:
        rt.begin_stop("test")
        rt.drain()
        rt.close()
        backend.close()


def virsh_migrate(lab: Lab, vm: str, src: str, dst: str) -> None:
    """``virsh migrate --live``, as an operator would do it behind the balancer's back."""
    uri = {h.name: h.uri for h in lab.status().hosts}
    subprocess.run(
        ["virsh", "-q", "-c", uri[src], "migrate", "--live", vm, uri[dst],
         "--migrateuri", "tcp://127.0.0.1"],
        check=True, capture_output=True, text=True, timeout=120,
    )  # fmt: skip


def test_a_virsh_migrate_behind_the_services_back_is_audited_and_supersedes_the_plan_it_breaks(
    lab: Lab, tmp_path: Path
) -> None:
    """The service subscribes to libvirt's lifecycle events: a guest moved with ``virsh
    migrate`` shows on its new host long before the next collect (every 300 s here), is audited
    as an external migration with both hosts, and the plan whose recommendation it breaks is
    superseded and replaced at once (not at the next balance cycle, 300 s here). The time from
    the end of ``virsh migrate`` to the audit record is measured in benchmarks/lab_events.py."""
    from balancer.service.ports import AuditFilter

    backend = lab.backend()
    snap = backend.snapshot()
    vm = sorted(v.name for v in snap.vms if v.name != "busy-1")[0]
    src = snap.vm(vm).host
    dst = next(h for h in lab.host_names() if h != src and backend.can_run(vm, h))
    cfg = write_settings(
        tmp_path,
        policy={"automation": "manual", "threshold": 1, "exclude": []},
        intervals={"collect_s": 300, "balance_s": 300, "policy_reload_s": 300},
    )
    # a hard rule the guest breaks where it is: the first plan recommends moving it to dst
    rule = {"name": "pin", "kind": "vm_host", "mode": "must", "vms": [vm], "hosts": [dst]}
    (tmp_path / "policies" / "rules.yaml").write_text(json.dumps({"rules": [rule]}))
    rt = Runtime.build(load_settings(cfg), port=backend)
    try:
        rt.start()
        svc = rt.service
        assert svc.event_watch.active
        first = svc.balance()
        (rec,) = svc.recommendations()
        assert (rec.vm, rec.source, rec.target, rec.plan_id) == (vm, src, dst, first.id)
        virsh_migrate(lab, vm, src, dst)
        wait_for(
            f"the service to see {vm} on {dst}",
            lambda: svc.snapshot().vm(vm).host == dst,
            timeout_s=30,
            every_s=0.2,
        )
        records = wait_for(
            "the external migration in the audit",
            lambda: svc.audit.query(AuditFilter(vm=vm, kind="external_migration")),
            timeout_s=10,
            every_s=0.2,
        )
        assert [(r.source, r.target, r.who) for r in records] == [(src, dst, "external")]
        assert svc.event_watch.events >= 1 and svc.event_watch.collects >= 1
        # the plan it broke is superseded, its recommendation expired, a new plan made at once
        superseded = [
            r for r in svc.audit.query(AuditFilter(kind="plan")) if r.result == "superseded"
        ]
        assert [r.plan_id for r in superseded] == [first.id]
        (gone,) = [r for r in svc.recommendations(state="expired") if r.id == rec.id]
        assert gone.note.startswith(f"superseded: {vm} moved {src} -> {dst}")
        replan = wait_for(
            "a new plan", lambda: next((p for p in svc.plans() if p.id != first.id), None)
        )
        assert not [r for r in svc.recommendations() if r.plan_id == replan.id]
        # and through the CLI, filtered by its kind
        from click.testing import CliRunner

        from balancer.cli import cli

        db = f"sqlite:///{tmp_path / 'balancer.db'}"
        listed = CliRunner().invoke(
            cli, ["audit", "list", "--db", db, "--kind", "external_migration", "--json"]
        )
        assert listed.exit_code == 0, listed.output
        assert [(r["vm"], r["source"], r["target"]) for r in json.loads(listed.stdout)] == [
            (vm, src, dst)
        ]
        virsh_migrate(lab, vm, dst, src)  # put the lab back as it was
        wait_for(f"{vm} back", lambda: svc.snapshot().vm(vm).host == src, timeout_s=30)
    finally:
        rt.close()
        backend.close()


def test_a_new_vm_is_placed_defined_and_started_on_the_best_lab_host(
    lab: Lab, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``balancer place --define FILE.xml --start`` through a running service on the lab: the
    domain is defined and started on the host the ranking put first, audited as a placement,
    and the service's view has it at once."""
    import uuid

    import libvirt
    from click.testing import CliRunner

    from balancer.cli import cli
    from balancer.lab.bootsector import GuestKind
    from balancer.lab.config import domain_xml
    from balancer.service.ports import AuditFilter
    from tests.service.test_predictive import serving

    for u, t in TOKENS.items():
        monkeypatch.setenv(f"TEST_TOKEN_{u.upper()}", t)
    name = "placed-1"
    xml = domain_xml(
        name=name,
        uuid=str(uuid.uuid4()),
        kind=GuestKind.IDLE,
        disk_path=str(lab.state_dir / "disks" / "idle.img"),
        memory_mib=64,
        domain_type=lab.domain_type,
    )
    (tmp_path / "new.xml").write_text(xml)
    cfg = write_settings(
        tmp_path,
        policy={"automation": "manual", "threshold": 1, "exclude": []},
        intervals={"collect_s": 300, "balance_s": 300, "policy_reload_s": 300},
    )
    (tmp_path / "policies" / "rules.yaml").write_text("rules: []\n")
    backend = lab.backend()
    rt = Runtime.build(load_settings(cfg), port=backend)
    placed: str | None = None
    try:
        rt.start()
        svc = rt.service
        with serving(rt) as url:
            env = {"BALANCER_TOKEN": "t-operator"}
            size = ["--name", name, "--vcpus", "1", "--memory-mib", "64"]
            ranked = CliRunner().invoke(cli, ["place", *size, "--url", url, "--json"], env=env)
            assert ranked.exit_code == 0, ranked.output
            best = json.loads(ranked.stdout)["candidates"][0]["host"]
            define = ["--define", str(tmp_path / "new.xml"), "--start"]
            r = CliRunner().invoke(cli, ["place", *define, "--url", url, "--json"], env=env)
            assert r.exit_code == 0, r.output
            doc = json.loads(r.stdout)
            placed = doc["placed_on"]
            assert placed == best == doc["candidates"][0]["host"] and doc["started"]
        conn = libvirt.open(lab.uri_for(placed))
        try:
            assert conn.lookupByName(name).isActive()
        finally:
            conn.close()
        assert svc.snapshot().vm(name).host == placed
        [rec] = svc.audit.query(AuditFilter(vm=name, kind="placement"))
        assert (rec.target, rec.result, rec.who) == (placed, "started", "bob")
    finally:
        if placed is not None:
            conn = libvirt.open(lab.uri_for(placed))
            try:
                dom = conn.lookupByName(name)
                with contextlib.suppress(libvirt.libvirtError):
                    dom.destroy()
                dom.undefine()
            finally:
                conn.close()
        rt.close()
        backend.close()
