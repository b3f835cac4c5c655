"""The maintenance end-to-end test on real Linux guests: a host put into maintenance is
emptied by the service's live migrations while a TCP connection to each of its Linux guests
stays open; none is reset, no byte is lost, every disk record verifies, and the audit
records say how the stream and the disks moved."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from balancer.lab import Lab
from balancer.service.runtime import Runtime
from balancer.settings import load_settings
from balancer.storage.audit import AuditQuery
from tests.lab.netprobe import EchoStream
from tests.service.running import wait_for, write_settings

pytestmark = [pytest.mark.lab, pytest.mark.timeout(600)]

GUESTS = ("maint-1", "maint-2")


@pytest.fixture()
def linux_guests(lab: Lab) -> Iterator[tuple[str, list[str]]]:
    host = next(h for h in lab.host_names() if h != lab.poor_host)
    try:
        for name in GUESTS:
            lab.define_linux_vm(name, host, writer=True)
        for name in GUESTS:
            lab.wait_guest_ready(name, timeout_s=120)
        yield host, list(GUESTS)
    finally:
        for name in GUESTS:
            lab.remove_vm(name)


def test_maintenance_evacuates_linux_guests_without_resetting_connections(
    lab: Lab, tmp_path: Path, linux_guests: tuple[str, list[str]]
) -> None:
    host, guests = linux_guests
    cfg = write_settings(
        tmp_path,
        policy={
            "automation": "partial",
            "threshold": 1,
            "exclude": [],
            "migration": {"tls": "preferred"},
        },
        intervals={"collect_s": 1.0, "balance_s": 30, "policy_reload_s": 5},
        service={"plan_time_limit_s": 5, "executor_poll_s": 0.5},
    )
    (tmp_path / "policies" / "rules.yaml").write_text("rules: []\n")
    backend = lab.backend()
    rt = Runtime.build(load_settings(cfg), port=backend)
    streams = {vm: EchoStream(lab.vm(vm).address, 7).start() for vm in guests}
    try:
        rt.start()
        svc = rt.service
        leaving = [v.name for v in svc.snapshot().vms_on(host)]
        assert set(guests) <= set(leaving)
        for s in streams.values():
            s.wait_replies_after(time.monotonic(), 20, timeout_s=30)
        seq_before = {vm: lab.guest_status(vm)[1] for vm in guests}
        m = svc.enter_maintenance(host, who="lab-test")
        assert m.state == "evacuating"
        final = wait_for(
            f"{host} in maintenance",
            lambda: (s := svc.maintenance_status(host)).state == "maintenance" and s,
            timeout_s=400,
            every_s=1.0,
        )
        assert final.remaining_vms == 0
        done = time.monotonic()
        for s in streams.values():
            s.wait_replies_after(done, 30, timeout_s=30)
        for vm in leaving:
            where = lab.where(vm)
            assert where and host not in where, (vm, where)
        migs = [x for x in svc.migrations() if x.vm in guests]
        assert migs and all(x.state == "succeeded" for x in migs), migs
        outcomes = [r for r in rt.store.audit(AuditQuery(kind="outcome")) if r.vm in guests]
        assert len(outcomes) == len(guests)
        for rec in outcomes:
            assert rec.downtime_ms is not None and rec.duration_s is not None
            # preferred: TLS unless the target is the host without migration certificates
            stream = "unencrypted" if rec.target == lab.poor_host else "TLS"
            assert f"stream: {stream}" in (rec.detail or ""), rec.detail
            assert "storage: shared" in (rec.detail or ""), rec.detail
        svc.exit_maintenance(host, who="lab-test", move_back=False)
    finally:
        for s in streams.values():
            s.stop()
        rt.begin_stop("test")
        rt.drain()
        rt.close()
        backend.close()
    for vm, s in streams.items():
        assert s.error is None, f"{vm}: connection broken: {s.error!r}"
        assert bytes(s.received) == bytes(s.sent), f"{vm}: bytes lost or reordered"
    for vm in guests:
        _, seq = lab.guest_status(vm)
        assert seq > seq_before[vm]
        assert lab.verify_disk(vm).count >= seq
