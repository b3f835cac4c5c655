"""The Linux lab guest's pure parts: initramfs, module order, domain XML, disk records."""

from __future__ import annotations

import gzip
import xml.etree.ElementTree as ET

import pytest

from balancer.errors import LabError
from balancer.lab.config import (
    DiskSource,
    data_disk_xml,
    guest_address,
    guest_mac,
    linux_domain_xml,
    net_plan,
)
from balancer.lab.linuxguest import (
    RECORD_SIZE,
    Kernel,
    build_initramfs,
    find_kernel,
    kernel_cmdline,
    module_order,
    record_checksum,
    verify_records,
)

_V = "kernel/drivers/virtio/"
DEP = "\n".join(
    [
        f"kernel/drivers/net/virtio_net.ko: kernel/drivers/net/net_failover.ko "
        f"kernel/net/core/failover.ko {_V}virtio.ko {_V}virtio_ring.ko",
        "kernel/drivers/net/net_failover.ko: kernel/net/core/failover.ko",
        "kernel/net/core/failover.ko:",
        f"{_V}virtio.ko: {_V}virtio_ring.ko",
        f"{_V}virtio_ring.ko:",
        f"kernel/drivers/block/virtio_blk.ko: {_V}virtio.ko {_V}virtio_ring.ko",
    ]
)


def test_modules_load_after_their_dependencies_and_built_ins_are_left_out() -> None:
    order = module_order(DEP)  # virtio_pci is not in modules.dep: built in
    names = [p.rsplit("/", 1)[1] for p in order]
    assert names == [
        "virtio_ring.ko",
        "virtio.ko",
        "failover.ko",
        "net_failover.ko",
        "virtio_net.ko",
        "virtio_blk.ko",
    ]
    assert len(set(order)) == len(order)


def _record(seq: int, boot: str = "0badcafe", centis: int = 500) -> bytes:
    line = f"LABREC {seq:010d} {boot} {centis:012d} {record_checksum(seq, boot, centis):08x}\n"
    return line.encode().ljust(RECORD_SIZE, b"\0")


def test_records_verify_in_order_up_to_the_first_empty_sector() -> None:
    disk = b"".join(_record(i, centis=500 + i) for i in range(5)) + b"\0" * RECORD_SIZE * 3
    check = verify_records(disk)
    assert (check.count, check.boot, check.first_centis, check.last_centis) == (
        5,
        "0badcafe",
        500,
        504,
    )
    assert verify_records(b"\0" * RECORD_SIZE * 2).count == 0


@pytest.mark.parametrize(
    ("disk", "message"),
    [
        (_record(0) + b"\0" * RECORD_SIZE + _record(2), "after the empty sector 1"),
        (_record(0) + _record(2), "holds record 2"),
        (_record(0) + _record(0), "holds record 0"),
        (_record(0) + _record(1).replace(b"LABREC 0", b"LABREC 9", 1), "bad checksum"),
        (_record(0) + _record(1, boot="00000001"), "of boot 00000001"),
        (_record(0, centis=600) + _record(1, centis=599), "uptime went back"),
        (_record(0) + b"garbage".ljust(RECORD_SIZE, b"\0"), "not a lab record"),
    ],
)
def test_a_lost_duplicated_reordered_or_corrupt_record_is_named(disk: bytes, message: str) -> None:
    with pytest.raises(LabError, match=message):
        verify_records(disk)


def test_initramfs_holds_busybox_init_and_modules(tmp_path: pytest.TempPathFactory) -> None:
    kernel = find_kernel()
    data = gzip.decompress(build_initramfs(kernel))
    assert data.startswith(b"070701")
    for name in (b"bin/busybox", b"init", b"dev/console", b"etc/modules.order", b"virtio_net.ko"):
        assert name in data
    assert b"TRAILER!!!" in data and len(data) % 512 == 0


def test_no_kernel_is_reported_with_the_package(tmp_path: pytest.TempPathFactory) -> None:
    with pytest.raises(LabError, match="linux-image-cloud-amd64"):
        find_kernel(boot=tmp_path, modules_root=tmp_path)  # type: ignore[arg-type]
    assert isinstance(find_kernel(), Kernel)


def test_linux_domain_xml_has_fixed_mac_bridge_and_network_disk() -> None:
    disk = DiskSource(kind="iscsi", path="iqn.x:s0.a/1", host="127.0.0.1", port=13260)
    xml = linux_domain_xml(
        name="linux-1",
        uuid="00000000-0000-0000-0000-000000000001",
        kernel="/boot/vmlinuz",
        initrd="/s/initrd.gz",
        cmdline=kernel_cmdline(address="10.213.0.11", prefix=24, writer=True),
        mac=guest_mac(0, 1),
        bridge=net_plan(0).bridge,
        disk=disk,
        domain_type="qemu",
    )
    root = ET.fromstring(xml)
    assert root.get("type") == "qemu"
    assert root.find("devices/interface/mac").get("address") == "52:54:00:6c:00:01"  # type: ignore[union-attr]
    assert root.find("devices/interface/source").get("bridge") == "blab0"  # type: ignore[union-attr]
    src = root.find("devices/disk/source")
    assert src is not None and src.get("protocol") == "iscsi" and src.get("name") == disk.path
    assert root.find("devices/disk/driver").get("cache") == "none"  # type: ignore[union-attr]
    assert "lab.ip=10.213.0.11/24" in (root.findtext("os/cmdline") or "")
    assert disk.url == "iscsi://127.0.0.1:13260/iqn.x:s0.a/1"


def test_addresses_and_macs_are_unique_per_slot_and_guest() -> None:
    seen = {(guest_address(s, n), guest_mac(s, n)) for s in (0, 1, 39) for n in (1, 2, 200)}
    assert len({a for a, _ in seen}) == 9 and len({m for _, m in seen}) == 9
    assert net_plan(3).subnet == "10.213.3.0/24" and net_plan(3).host_address == "10.213.3.1"
    with pytest.raises(ValueError):
        guest_mac(0, 0)
    with pytest.raises(ValueError):
        data_disk_xml(DiskSource(kind="ceph", path="x"))


def test_only_network_pools_with_the_same_source_are_shared() -> None:
    from balancer.libvirt.domxml import pool_source_identity

    nfs = (
        "<pool type='netfs'><name>a</name><source><host name='10.0.0.5'/>"
        "<dir path='/export/vms'/><format type='nfs'/></source></pool>"
    )
    nfs_other_name = nfs.replace("<name>a</name>", "<name>b</name>")
    nfs_other_export = nfs.replace("/export/vms", "/export/other")
    assert pool_source_identity(nfs) == pool_source_identity(nfs_other_name) is not None
    assert pool_source_identity(nfs) != pool_source_identity(nfs_other_export)
    for local in ("zfs", "scsi", "logical", "dir", "mpath"):
        xml = f"<pool type='{local}'><name>p</name><source><name>tank</name></source></pool>"
        assert pool_source_identity(xml) is None, local
