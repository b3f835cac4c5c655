"""What must hold after any failover: read from the database and the simulated hypervisors."""

from __future__ import annotations

from collections import Counter
from typing import Any

import sqlalchemy as sa

from balancer.storage import FINAL_STATES, Store
from tests.ha.harness import Deployment, Instance


def check_outcomes(d: Deployment, cluster: str = "default") -> dict[str, Any]:
    """Every migration is final with exactly one outcome in the audit trail, which verifies;
    no migration was started twice; every VM is on exactly one host. Returns figures."""
    store = Store.open(d.url_of(cluster))
    try:
        records = store.verify()
        reqs = store.requests()
        with store.engine.connect() as conn:
            outcomes = Counter(
                int(r.request_id)
                for r in conn.execute(
                    sa.text("SELECT request_id FROM audit_records WHERE kind = 'outcome'")
                )
            )
            epochs = sorted(
                {
                    int(r.epoch)
                    for r in conn.execute(sa.text("SELECT DISTINCT epoch FROM journal"))
                    if r.epoch is not None
                }
            )
        events = store.events()
    finally:
        store.close()
    not_final = [r.id for r in reqs if r.state not in FINAL_STATES]
    assert not not_final, f"migrations without a final state: {not_final}"
    wrong = {r.id: outcomes.get(r.id, 0) for r in reqs if outcomes.get(r.id, 0) != 1}
    assert not wrong, f"migrations without exactly one outcome record: {wrong}"
    state = d.sim_state(cluster)
    jobs = state["jobs"]
    assert all(j["state"] != "running" for j in jobs), "a migration still runs on the hypervisors"
    # no migration started twice: every hypervisor job belongs to exactly one request
    job_ids = Counter(r.job_id for r in reqs if r.job_id)
    assert all(n == 1 for n in job_ids.values()), f"a job followed by two requests: {job_ids}"
    orphans = [j["job_id"] for j in jobs if j["job_id"] not in job_ids]
    assert not orphans, f"migrations started on the hypervisors that no request owns: {orphans}"
    per_request = Counter(e.request_id for e in events if e.event == "starting")
    vms = [v["name"] for v in state["snapshot"]["vms"]]
    assert len(vms) == len(set(vms)), "a VM is listed twice"
    hosts = {h["name"] for h in state["snapshot"]["hosts"]}
    assert all(v["host"] in hosts for v in state["snapshot"]["vms"])
    return {
        "requests": len(reqs),
        "succeeded": sum(r.state == "succeeded" for r in reqs),
        "audit_records": records,
        "jobs": len(jobs),
        "epochs": epochs,
        "starts": sum(per_request.values()),
    }


def placement(d: Deployment, cluster: str = "default") -> dict[str, str]:
    return {v["name"]: v["host"] for v in d.sim_state(cluster)["snapshot"]["vms"]}


def evacuate(
    d: Deployment, via: Instance, *, cluster: str | None = None, min_vms: int = 4
) -> tuple[str, list[str]]:
    """Put the host with the fewest VMs, at least ``min_vms``, that can all leave (preflight)
    into maintenance, through ``via`` (leader or standby); returns the host and its VMs."""
    where = placement(d, cluster or "default")
    counts = Counter(where.values())
    for host, n in sorted(counts.items(), key=lambda hn: (hn[1], hn[0])):
        if n < min_vms:
            continue
        if via.get(f"/maintenance/{host}/preflight", cluster=cluster)["can_enter"]:
            via.post(f"/maintenance/{host}/enter", {"force": False}, cluster=cluster)
            return host, sorted(v for v, h in where.items() if h == host)
    raise AssertionError(f"no host with {min_vms}+ VMs that can all leave: {dict(counts)}")
