"""Inventory and stats of the lab hosts against what libvirt (and the kernel) report."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import libvirt
import pytest

from balancer.lab import Lab
from balancer.libvirt import LibvirtBackend

pytestmark = [pytest.mark.lab, pytest.mark.timeout(180)]


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


def _sched(pid: int) -> tuple[dict[str, int], dict[str, int]]:
    """Per thread name: nanoseconds run on a CPU, nanoseconds waited for one (schedstat)."""
    run: dict[str, int] = {}
    wait: dict[str, int] = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            name = (task / "comm").read_text().strip()
            r, w, _ = (int(x) for x in (task / "schedstat").read_text().split())
        except (OSError, ValueError):
            continue
        run[name] = run.get(name, 0) + r
        wait[name] = wait.get(name, 0) + w
    return run, wait


def test_busy_guest_uses_about_one_core(lab: Lab, busy_vm: str) -> None:
    """The spinning vCPU wants one whole core, and the backend reports what it really got.

    The machine may be shared (other jobs, other labs): a vCPU that wants a core but waits for
    it is still "one core of demand", so the check is run + run-queue wait = one core, and the
    backend's figure = the CPU time the kernel accounted to the QEMU process."""
    pid = lab.qemu_pid(busy_vm)
    backend = lab.backend(measure_dirty_rate=True, dirty_rate_per_host=100)
    try:
        run0, wait0 = _sched(pid)
        t0 = time.monotonic()
        backend.snapshot()
        time.sleep(2.0)
        snap = backend.snapshot()
        run1, wait1 = _sched(pid)
        wall_ns = (time.monotonic() - t0) * 1e9
    finally:
        backend.close()
    # a dirty-rate measurement (1 s, page sampling) was started by the first snapshot
    dirty = snap.vm(busy_vm).dirty_rate_mib_s
    assert dirty is not None and 0 <= dirty < 5, dirty

    reported = snap.vm(busy_vm).cpu_used_cores
    used = (sum(run1.values()) - sum(run0.values())) / wall_ns
    vcpu = next(n for n in run1 if n.startswith("CPU 0/"))
    demand = (run1[vcpu] - run0.get(vcpu, 0) + wait1[vcpu] - wait0.get(vcpu, 0)) / wall_ns
    waited = (wait1[vcpu] - wait0.get(vcpu, 0)) / wall_ns

    assert 0.85 <= demand <= 1.15, f"the busy vCPU wanted {demand:.2f} cores"
    assert abs(reported - used) <= 0.1 + 0.15 * used, (
        f"backend says {reported:.2f} cores, the kernel accounted {used:.2f}"
    )
    assert reported + waited >= 0.8, f"{reported:.2f} cores used + {waited:.2f} waited"
    if waited < 0.1:  # an uncontended machine: the guest really got its core
        assert reported >= 0.8, f"busy guest used {reported:.2f} cores"
    idle = [v.cpu_used_cores for v in snap.vms if v.name.startswith("idle-")]
    assert idle and all(c < 0.25 for c in idle), f"idle guests used {idle} cores"


def test_snapshot_config_writes_the_live_lab_with_measured_demand(
    lab: Lab, busy_vm: str, tmp_path: Path
) -> None:
    """``balancer snapshot --config`` on a lab backend: the lab's hosts and guests as libvirt
    has them, the busy guest's demand measured over the sampling (about one core)."""
    import json

    import yaml
    from click.testing import CliRunner

    from balancer.cli import cli
    from balancer.snapshot_io import load_snapshot

    cfg = tmp_path / "balancer.yaml"
    cfg.write_text(
        yaml.safe_dump(
            {
                "backend": {"kind": "lab", "state_dir": str(lab.state_dir)},
                "policy": str(Path(__file__).resolve().parents[2] / "config" / "policies"),
                "database": f"sqlite:///{tmp_path / 'none.db'}",
                "state_dir": str(tmp_path / "state"),
                "collectors": {"window_s": 60, "sample_interval_s": 1, "stale_after_s": 30},
            }
        )
    )
    out = tmp_path / "live.json"
    args = ["snapshot", "--config", str(cfg), "--sample-s", "3", "-o", str(out), "--json"]
    r = CliRunner().invoke(cli, args)
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["hosts"] == len(lab.hosts)
    snap = load_snapshot(out)
    assert [h.name for h in snap.hosts] == lab.host_names()
    assert 0.6 <= snap.vm(busy_vm).cpu_used_cores <= 1.2, snap.vm(busy_vm)
    assert not (tmp_path / "none.db").exists(), "a one-shot snapshot never creates the database"


def test_label_rules_work_on_libvirt_hosts_and_guests(lab: Lab, tmp_path: Path) -> None:
    """A libvirt backend (the lab's hosts, as ops would configure theirs): host labels from the
    settings (cluster-wide defaults merged with each host's), a guest's labels from its domain
    metadata; ``policy check --config`` finds every label selector matched and ``plan --config``
    repairs a ``must_not`` rule written only with labels."""
    import json

    from click.testing import CliRunner

    from balancer.cli import cli
    from balancer.libvirt.domxml import LABELS_NS

    be = lab.backend()
    try:
        snap = be.snapshot()
    finally:
        be.close()
    first = lab.host_names()[0]
    guest = sorted(v.name for v in snap.vms if v.host == first)[0]
    rule = {
        "name": "cache-not-on-r1",
        "kind": "vm_host",
        "mode": "must_not",
        "vms": {"labels": {"app": "cache"}},
        "hosts": {"labels": {"rack": "r1"}},
    }
    cfg, policies = _libvirt_settings(
        lab,
        tmp_path,
        defaults={"labels": {"rack": "r2", "site": "lab"}},
        own={first: {"labels": {"rack": "r1"}}},
        rules=[rule],
    )
    conn = libvirt.open(lab.uri_for(first))
    dom = conn.lookupByName(guest)
    xml = '<labels><label key="app">cache</label></labels>'
    dom.setMetadata(
        libvirt.VIR_DOMAIN_METADATA_ELEMENT, xml, "balancer", LABELS_NS,
        libvirt.VIR_DOMAIN_AFFECT_LIVE,
    )  # fmt: skip
    try:
        runner = CliRunner()
        args = ["policy", "check", str(policies), "--config", str(cfg), "--sample-s", "1"]
        checked = runner.invoke(cli, [*args, "--json"])
        assert checked.exit_code == 0, checked.output
        codes = [f["code"] for f in json.loads(checked.stdout)["findings"]]
        assert "selector_matches_nothing" not in codes, checked.stdout
        planned = runner.invoke(cli, ["plan", "--config", str(cfg), "--sample-s", "1", "--json"])
        assert planned.exit_code == 0, planned.output
        moves = json.loads(planned.stdout)["moves"]
        assert [(m["vm"], m["source"]) for m in moves] == [(guest, first)], moves
        assert moves[0]["reason"].startswith("rule:cache-not-on-r1"), moves
        assert moves[0]["target"] != first
    finally:
        dom.setMetadata(
            libvirt.VIR_DOMAIN_METADATA_ELEMENT, None, None, LABELS_NS,
            libvirt.VIR_DOMAIN_AFFECT_LIVE,
        )  # fmt: skip
        conn.close()
    # cpu report --config: the settings' hosts, h3 below the baseline as the lab makes it
    rep = CliRunner().invoke(cli, ["cpu", "report", "--config", str(cfg), "--json"])
    assert rep.exit_code == 0, rep.output
    report = json.loads(rep.stdout)
    assert [h["name"] for h in report["hosts"]] == lab.host_names()
    # libvirt's dirty-rate measurement is on by default for a libvirt backend (two VMs per
    # host and collect): measured over a few readings, the guests have a dirty rate
    live = tmp_path / "live.json"
    shot = CliRunner().invoke(
        cli, ["snapshot", "--config", str(cfg), "--sample-s", "3", "-o", str(live)]
    )
    assert shot.exit_code == 0, shot.output
    from balancer.snapshot_io import load_snapshot

    rates = [v.dirty_rate_mib_s for v in load_snapshot(live).vms]
    assert any(r is not None for r in rates), rates
    # without the guest's label the rule selects no VM any more, and lint says so
    again = CliRunner().invoke(cli, [*args, "--json"])
    codes = [f["code"] for f in json.loads(again.stdout)["findings"]]
    assert codes == ["selector_matches_nothing"], again.stdout


def _libvirt_settings(
    lab: Lab,
    tmp_path: Path,
    *,
    defaults: dict[str, Any],
    own: dict[str, dict[str, Any]] | None = None,
    rules: list[dict[str, Any]],
) -> tuple[Path, Path]:
    """A settings file with a libvirt backend on the lab's hosts, as ops would write theirs,
    and its policy directory (manual automation, mandatory moves only, the given rules)."""
    import yaml

    hosts = [
        {
            "name": h,
            "uri": lab.uri_for(h),
            "migration_address": "127.0.0.1",
            **(own or {}).get(h, {}),
        }
        for h in lab.host_names()
    ]
    backend = {
        "kind": "libvirt",
        "defaults": {
            "virt_type": lab.domain_type,
            "shared_storage": [str(lab.state_dir / "disks")],
            "measure_host_overhead": False,
            **defaults,
        },
        "hosts": hosts,
    }
    policies = tmp_path / "policies"
    policies.mkdir()
    (policies / "policy.yaml").write_text(
        yaml.safe_dump({"automation": "manual", "threshold": 1, "exclude": [], "rules": rules})
    )
    cfg = tmp_path / "balancer.yaml"
    cfg.write_text(
        yaml.safe_dump(
            {
                "backend": backend,
                "policy": str(policies),
                "database": f"sqlite:///{tmp_path / 'none.db'}",
                "state_dir": str(tmp_path / "state"),
                "collectors": {"window_s": 60, "sample_interval_s": 1, "stale_after_s": 30},
            }
        )
    )
    return cfg, policies


def test_labels_the_hosts_carry_themselves_drive_a_rack_rule(lab: Lab, tmp_path: Path) -> None:
    """Labels that live with the host: each lab host's SMBIOS data (``virsh sysinfo``) has an
    OEM string ``kvm-balancer:rack=rN`` and a chassis asset tag. With no label in the settings,
    ``snapshot --config`` shows both as labels (the tag through ``labels_from_sysinfo``), and
    ``plan --config`` repairs a rack rule written against them."""
    import json

    from click.testing import CliRunner

    from balancer.cli import cli
    from balancer.lab.config import lab_asset_tag, lab_oem_labels
    from balancer.snapshot_io import load_snapshot

    racks = {p.name: lab_oem_labels(p.index)["rack"] for p in lab.hosts}
    be = lab.backend()
    try:
        # a guest, and another rack with a host it can run on (wherever the guests are now)
        guest, want = next(
            (v.name, racks[h])
            for v in sorted(be.snapshot().vms, key=lambda v: v.name)
            if v.name != "busy-1"
            for h in lab.host_names()
            if racks[h] != racks[v.host] and be.can_run(v.name, h)
        )
    finally:
        be.close()
    rule = {
        "name": "in-rack",
        "kind": "vm_host",
        "mode": "must",
        "vms": [guest],
        "hosts": {"labels": {"rack": want}},
    }
    cfg, _ = _libvirt_settings(
        lab, tmp_path, defaults={"labels_from_sysinfo": {"asset": "chassis.asset"}}, rules=[rule]
    )
    runner = CliRunner()
    live = tmp_path / "live.json"
    shot = runner.invoke(
        cli, ["snapshot", "--config", str(cfg), "--sample-s", "1", "-o", str(live)]
    )
    assert shot.exit_code == 0, shot.output
    labels = {h.name: dict(h.labels) for h in load_snapshot(live).hosts}
    assert labels == {
        p.name: {"rack": racks[p.name], "asset": lab_asset_tag(lab.state.slot, p.index)}
        for p in lab.hosts
    }
    planned = runner.invoke(cli, ["plan", "--config", str(cfg), "--sample-s", "1", "--json"])
    assert planned.exit_code == 0, planned.output
    moves = json.loads(planned.stdout)["moves"]
    assert [(m["vm"], m["reason"].split(":")[:2]) for m in moves] == [(guest, ["rule", "in-rack"])]
    assert racks[moves[0]["target"]] == want
