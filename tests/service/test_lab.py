"""The service on the libvirt lab: a host put into maintenance is emptied by real live
migrations while the busy guest's counter keeps increasing; exit with move-back returns it.

Marked ``lab``: skipped without the prerequisites, failed instead with BALANCER_REQUIRE_LAB=1.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from balancer.lab import Lab
from balancer.lab.testing import lab_fixture
from balancer.service.runtime import Runtime
from balancer.settings import load_settings
from tests.service.running import wait_for, write_settings

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
