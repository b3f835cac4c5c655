"""The lab's generated files and plans (no libvirt needed)."""

from __future__ import annotations

import xml.etree.ElementTree as ET

import pytest

from balancer.errors import LabError
from balancer.lab import lab as lab_module
from balancer.lab.bootsector import GuestKind
from balancer.lab.config import (
    domain_xml,
    libvirtd_conf,
    port_plan,
    qemu_conf,
    strip_cpu_feature,
)
from balancer.lab.testing import REQUIRE_ENV, require_lab


def test_port_plans_do_not_overlap() -> None:
    seen: set[int] = set()
    for slot in range(3):
        for index in range(1, 10):
            tcp, lo, hi = port_plan(slot, index)
            ports = {tcp, *range(lo, hi + 1)}
            assert not ports & seen
            seen |= ports
    with pytest.raises(ValueError):
        port_plan(0, 10)


def test_libvirtd_conf_is_loopback_only_without_auth() -> None:
    conf = libvirtd_conf(tcp_port=16601, host_uuid="u-1", log_path="/var/log/x.log")
    assert 'listen_addr = "127.0.0.1"' in conf
    assert "listen_tcp = 1" in conf and "listen_tls = 0" in conf
    assert 'auth_tcp = "none"' in conf and 'tcp_port = "16601"' in conf
    assert 'host_uuid = "u-1"' in conf


def test_qemu_conf_runs_guests_as_root_without_virtlogd_or_security_driver() -> None:
    conf = qemu_conf(migration_port_min=50000, migration_port_max=50019)
    for line in (
        'user = "root"',
        'group = "root"',
        "dynamic_ownership = 0",
        'stdio_handler = "file"',
        'security_driver = "none"',
        "migration_port_min = 50000",
        "migration_port_max = 50019",
    ):
        assert line in conf


def _attr(el: ET.Element, path: str, name: str) -> str | None:
    found = el.find(path)
    assert found is not None, path
    return found.get(name)


def test_domain_xml_boots_from_the_shared_read_only_disk() -> None:
    xml = domain_xml(
        name="busy-1",
        uuid="00000000-0000-0000-0000-000000000001",
        kind=GuestKind.BUSY,
        disk_path="/lab/disks/busy.img",
        memory_mib=64,
        domain_type="qemu",
    )
    root = ET.fromstring(xml)
    assert root.get("type") == "qemu"
    assert root.findtext("name") == "busy-1"
    assert root.findtext("memory") == "64" and _attr(root, "memory", "unit") == "MiB"
    disk = root.find("devices/disk")
    assert disk is not None and disk.find("readonly") is not None
    assert _attr(disk, "source", "file") == "/lab/disks/busy.img"
    assert _attr(disk, "target", "bus") == "virtio"
    assert root.find("cpu") is None


def test_domain_xml_requires_cpu_features_and_adds_writable_disks() -> None:
    xml = domain_xml(
        name="v",
        uuid="00000000-0000-0000-0000-000000000002",
        kind=GuestKind.IDLE,
        disk_path="/d/idle.img",
        cpu_features=("clwb",),
        extra_disks=("/img/v.qcow2",),
    )
    root = ET.fromstring(xml)
    cpu = root.find("cpu")
    assert cpu is not None and cpu.findtext("model") == "qemu64"
    assert [(f.get("policy"), f.get("name")) for f in cpu.findall("feature")] == [
        ("require", "clwb")
    ]
    disks = root.findall("devices/disk")
    assert _attr(disks[1], "target", "dev") == "vdb"
    assert disks[1].find("readonly") is None
    assert _attr(disks[1], "driver", "type") == "qcow2"
    with pytest.raises(ValueError):
        domain_xml(name="v", uuid="u", kind=GuestKind.IDLE, disk_path="/d", domain_type="xen")


CAPS = """<qemuCaps>
  <hostCPU type='kvm' model='base' migratability='yes'>
    <property name='clwb' type='boolean' value='true' migratable='yes'/>
    <property name='avx' type='boolean' value='true' migratable='yes'/>
  </hostCPU>
  <cpu type='kvm' name='X' usable='yes'>
    <property name='clwb' type='boolean' value='true'/>
  </cpu>
  <hostCPU type='tcg' model='base' migratability='yes'>
    <property name='clwb' type='boolean' value='true'/>
  </hostCPU>
</qemuCaps>
"""


def test_strip_cpu_feature_only_touches_host_cpu_sections() -> None:
    out = strip_cpu_feature(CAPS, "clwb")
    assert out.count("name='clwb' type='boolean' value='false'") == 2
    assert "<property name='clwb' type='boolean' value='true'/>" in out  # the model entry
    assert "name='avx' type='boolean' value='true'" in out


def test_missing_prerequisites_name_the_package(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("os.geteuid", lambda: 1000)
    monkeypatch.setattr("shutil.which", lambda tool, path=None: None)
    missing = lab_module.missing_prerequisites()
    assert missing[0].startswith("root (running as uid 1000")
    assert "libvirtd (apt-get install libvirt-daemon-system)" in missing
    assert "qemu-system-x86_64 (apt-get install qemu-system-x86)" in missing
    with pytest.raises(LabError, match="missing: root"):
        lab_module.Lab.up(1, 0, state_dir="/nonexistent/lab")


def test_require_lab_skips_or_fails(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(
        "balancer.lab.testing.missing_prerequisites", lambda: ["libvirtd (apt-get install x)"]
    )
    monkeypatch.delenv(REQUIRE_ENV, raising=False)
    with pytest.raises(pytest.skip.Exception, match="missing: libvirtd"):
        require_lab()
    monkeypatch.setenv(REQUIRE_ENV, "1")
    with pytest.raises(pytest.fail.Exception, match="must run"):
        require_lab()


def test_choose_accel_honours_the_override(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(lab_module.ACCEL_ENV, "tcg")
    assert lab_module.choose_accel() == "qemu"
    monkeypatch.setenv(lab_module.ACCEL_ENV, "kvm")
    assert lab_module.choose_accel() == "kvm"
    monkeypatch.setenv(lab_module.ACCEL_ENV, "bogus")
    with pytest.raises(LabError):
        lab_module.choose_accel()
