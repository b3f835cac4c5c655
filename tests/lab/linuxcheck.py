"""Migrate a real Linux guest with a held-open TCP connection and check everything the ops
engineer cares about: the connection, the MAC, the announce, the uptime, every disk record."""

from __future__ import annotations

import time
import xml.etree.ElementTree as ET
from typing import Any

from balancer.lab import Lab
from balancer.libvirt import LibvirtBackend
from balancer.libvirt.backend import MigrationRecord
from balancer.port import JobState, MigrationOptions
from tests.lab.netprobe import ETH_P_RARP, AnnounceCapture, EchoStream, StreamSniffer

#: a reply gap may exceed the measured downtime by this much: the echo goes through a TCG
#: guest on a loaded 2-core machine, and a frame sent during the switch-over is resent by TCP
GAP_MARGIN_S = 3.0
QEMU_MAGIC = b"QEVM"
TLS_HANDSHAKE = b"\x16\x03"


def mac_on(backend: LibvirtBackend, vm: str, host: str) -> str:
    def xml(conn: Any) -> str:
        return str(conn.lookupByName(vm).XMLDesc(0))

    root = ET.fromstring(backend._call(host, xml, "dumpxml"))
    mac = root.find("devices/interface/mac")
    assert mac is not None
    return str(mac.get("address"))


def migrate_with_open_connection(
    lab: Lab, backend: LibvirtBackend, vm: str, target: str, options: MigrationOptions
) -> tuple[MigrationRecord, dict[tuple[int, int], bytes]]:
    """Migrate ``vm`` to ``target`` while an echo stream runs; assert every promise; return
    the job record and the first payload of each TCP connection to the target's migration
    ports."""
    guest = lab.vm(vm)
    (source,) = lab.where(vm)
    bridge = lab.state.bridge
    assert bridge is not None
    plan = lab.host(target)
    stream = EchoStream(guest.address, guest.echo_port or 7).start()
    capture = AnnounceCapture(bridge, guest.mac).start()
    sniffer = StreamSniffer(range(plan.migration_port_min, plan.migration_port_max + 1)).start()
    try:
        stream.wait_replies_after(time.monotonic(), 20, timeout_s=30)
        up_before, seq_before = lab.guest_status(vm)
        backend.snapshot()
        started = time.monotonic()
        record = backend.migrate(vm, source, target, options, timeout_s=180)
        finished = time.monotonic()
        assert record.progress.state is JobState.SUCCEEDED, record.progress.error
        assert lab.where(vm) == [target]
        stream.wait_replies_after(finished, 50, timeout_s=30)  # it runs on through the new host
    finally:
        stream.stop()
        capture.stop()
        sniffer.stop()
    assert stream.error is None, f"connection broken: {stream.error!r}"
    assert bytes(stream.received) == bytes(stream.sent), "bytes lost or reordered"
    downtime_s = (record.progress.downtime_ms or 0) / 1000
    assert stream.longest_gap_s() <= downtime_s + GAP_MARGIN_S, (
        stream.longest_gap_s(),
        downtime_s,
    )
    assert mac_on(backend, vm, target) == guest.mac
    rarp = capture.after(started, ETH_P_RARP)
    assert rarp, f"no RARP announce for {guest.mac} on {bridge}: {capture.frames}"
    assert rarp[0] <= finished + 5.0
    up_after, seq_after = lab.guest_status(vm)
    assert up_after > up_before and seq_after > seq_before, "the guest restarted or stopped"
    check = lab.verify_disk(vm)  # read back from the storage
    assert check.count >= seq_after, (check, seq_after)
    assert check.first_centis <= up_before * 100 <= check.last_centis
    return record, dict(sniffer.first_payloads)
