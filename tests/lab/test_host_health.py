"""Host health on the libvirt lab: a host whose libvirtd hangs again and again (SIGSTOP for
longer than the collect's timeout, then SIGCONT) is quarantined on its connection failures, and
its guests leave it by live migration while it answers; the audit names the signal.

A frozen libvirtd cannot migrate anything out, so the freeze is intermittent: each one costs
the service's collect a timeout (a failed collect of that host) and each thaw lets the
evacuation run. The host is always thawed, and the lab is put back as it was.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

import pytest

from balancer.lab import Lab
from balancer.model import HostState
from balancer.service.core import SYSTEM
from balancer.service.ports import AuditFilter
from balancer.service.runtime import Runtime
from balancer.settings import load_settings
from tests.service.running import wait_for, write_settings

pytestmark = [pytest.mark.lab, pytest.mark.timeout(600)]

#: the management connection's timeout of each host call
TIMEOUT_S = 2.0


def test_an_intermittently_hung_libvirtd_gets_its_host_quarantined_and_emptied(
    lab: Lab, tmp_path: Path
) -> None:
    host = lab.host_names()[1]
    cfg = write_settings(
        tmp_path,
        policy={
            "automation": "partial",
            "threshold": 1,
            "exclude": [],
            "health": {
                "connection_failures": 3,
                "window_minutes": 10,
                "release_after_healthy_minutes": None,
            },
        },
        intervals={"collect_s": 1.0, "balance_s": 2.0, "policy_reload_s": 5},
        service={"plan_time_limit_s": 5, "executor_poll_s": 0.5},
    )
    (tmp_path / "policies" / "rules.yaml").write_text("rules: []\n")
    backend = lab.backend(timeout_s=TIMEOUT_S, warmup_s=0)
    rt = Runtime.build(load_settings(cfg), port=backend)
    svc = rt.service
    homes: dict[str, str] = {}
    try:
        rt.start()
        leaving = [v.name for v in svc.snapshot().vms_on(host)]
        assert leaving, f"no guest on {host}"
        homes = dict.fromkeys(leaving, host)

        def state() -> HostState:
            return svc.snapshot().host(host).state

        def quarantined() -> bool:
            return svc.store.host_states().get(host) == HostState.QUARANTINED.value

        freezes = 0
        while not quarantined():
            assert freezes < 6, "not quarantined after 6 hangs of its libvirtd"
            freezes += 1
            lab.freeze_host(host)
            try:
                wait_for(
                    f"a collect to find {host} unreachable",
                    lambda: state() is HostState.UNREACHABLE,
                    timeout_s=60,
                    every_s=0.2,
                )
            finally:
                lab.thaw_host(host)
            wait_for(
                f"{host} to answer again",
                lambda: state() is not HostState.UNREACHABLE,
                timeout_s=60,
                every_s=0.2,
            )
        assert freezes >= 1

        records = svc.audit_records(AuditFilter(host=host, kind="quarantine", limit=50))
        (q,) = [r for r in records if r.result == "quarantined"]
        assert q.who == SYSTEM
        assert q.detail and "health signal connection_failures:" in q.detail
        assert "failed collects in 10 min (limit 3)" in q.detail
        raised = svc.audit_records(AuditFilter(host=host, kind="host_health", limit=50))
        assert any(r.result == "raised" and r.reason == "connection_failures" for r in raised)

        # thawed, the host sends its guests away by live migration
        wait_for(
            f"{host} emptied",
            lambda: all(lab.where(vm) and host not in lab.where(vm) for vm in leaving),
            timeout_s=300,
            every_s=1.0,
        )
        # the guest runs on its target a moment before the executor records the outcome
        moved = wait_for(
            "the evacuations recorded as succeeded",
            lambda: (
                (ok := [m for m in svc.migrations() if m.vm in leaving and m.state == "succeeded"])
                and {m.vm for m in ok} == set(leaving)
                and ok
            ),
            timeout_s=60,
            every_s=0.5,
        )
        assert all(m.source == host and m.reason == "quarantine" for m in moved)
        # quarantined by the service, released by an operator only (the policy says null)
        assert quarantined()
        svc.release_quarantine(host, who="lab-test")
        assert not quarantined()
    finally:
        lab.thaw_host(host)  # never leave a frozen libvirtd behind
        with contextlib.suppress(Exception):
            if svc.store.host_states().get(host) == HostState.QUARANTINED.value:
                svc.release_quarantine(host, who="lab-test")
        # put the guests back where they were (other tests share the lab)
        with contextlib.suppress(Exception):
            for vm, home in homes.items():
                if home not in lab.where(vm):
                    svc.request_migration(vm, home, who="lab-test")
            wait_for(
                "the guests back home",
                lambda: all(home in lab.where(vm) for vm, home in homes.items()),
                timeout_s=240,
                every_s=1.0,
            )
        rt.begin_stop("test")
        rt.drain()
        rt.close()
    for vm, home in homes.items():
        assert lab.where(vm) == [home], (vm, lab.where(vm))
