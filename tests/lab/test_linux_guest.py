"""Real Linux guests in the lab: a held-open TCP connection, the guest's MAC, QEMU's announce
frames, its uptime and its disk records all survive a live migration on shared iSCSI storage."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from balancer.lab import Lab
from balancer.libvirt import LibvirtBackend
from balancer.port import JobState, MigrationOptions
from tests.lab.netprobe import ETH_P_RARP, AnnounceCapture, EchoStream

pytestmark = [pytest.mark.lab, pytest.mark.timeout(300)]

#: a reply gap may exceed the measured downtime by this much: the echo goes through a TCG
#: guest on a loaded 2-core machine, and a frame sent during the switch-over is resent by TCP
GAP_MARGIN_S = 3.0


@pytest.fixture(scope="module")
def linux_vm(lab: Lab) -> Iterator[str]:
    host = lab.host_names()[0]
    lab.define_linux_vm("web-1", host, writer=True)
    try:
        lab.wait_guest_ready("web-1", timeout_s=120)
        yield "web-1"
    finally:
        lab.remove_vm("web-1")


def _mac_on(backend: LibvirtBackend, vm: str, host: str) -> str:
    import xml.etree.ElementTree as ET

    def xml(conn: object) -> str:
        return conn.lookupByName(vm).XMLDesc(0)  # type: ignore[attr-defined]

    root = ET.fromstring(backend._call(host, xml, "dumpxml"))
    mac = root.find("devices/interface/mac")
    assert mac is not None
    return str(mac.get("address"))


def test_linux_guest_keeps_its_connection_mac_uptime_and_every_write(
    lab: Lab, backend: LibvirtBackend, linux_vm: str
) -> None:
    guest = lab.vm(linux_vm)
    (source,) = lab.where(linux_vm)
    target = next(h for h in lab.host_names() if h not in (source, lab.poor_host))
    assert lab.state.bridge is not None
    stream = EchoStream(guest.address, guest.echo_port or 7).start()
    capture = AnnounceCapture(lab.state.bridge, guest.mac).start()
    try:
        stream.wait_replies_after(time.monotonic(), 20, timeout_s=30)
        up_before, seq_before = lab.guest_status(linux_vm)
        backend.snapshot()
        started = time.monotonic()
        record = backend.migrate(linux_vm, source, target, MigrationOptions(), timeout_s=180)
        finished = time.monotonic()
        assert record.progress.state is JobState.SUCCEEDED, record.progress.error
        assert lab.where(linux_vm) == [target]
        # the stream runs on through the new host
        stream.wait_replies_after(finished, 50, timeout_s=30)
    finally:
        stream.stop()
        capture.stop()
    assert stream.error is None, f"connection broken: {stream.error!r}"
    assert bytes(stream.received) == bytes(stream.sent), "bytes lost or reordered"
    downtime_s = (record.progress.downtime_ms or 0) / 1000
    assert stream.longest_gap_s() <= downtime_s + GAP_MARGIN_S, (
        stream.longest_gap_s(),
        downtime_s,
    )
    assert _mac_on(backend, linux_vm, target) == guest.mac
    rarp = capture.after(started, ETH_P_RARP)
    assert rarp, f"no RARP announce for {guest.mac} on {lab.state.bridge}: {capture.frames}"
    assert rarp[0] <= finished + 5.0
    up_after, seq_after = lab.guest_status(linux_vm)
    assert up_after > up_before and seq_after > seq_before, "the guest restarted or stopped"
    check = lab.verify_disk(linux_vm)  # read back from the iSCSI target
    assert check.count >= seq_after, (check, seq_after)
    assert check.first_centis <= up_before * 100 <= check.last_centis


def test_status_lists_mac_address_and_echo_port(lab: Lab, linux_vm: str) -> None:
    doc = lab.status().to_json()
    (entry,) = [g for g in doc["guests"] if g["name"] == linux_vm]  # type: ignore[union-attr, index]
    guest = lab.vm(linux_vm)
    assert entry["mac"] == guest.mac and entry["address"] == guest.address
    assert entry["echo_port"] == 7 and entry["on"] == lab.where(linux_vm)
    assert entry["disk"]["kind"] == "iscsi"
