"""The deployment as the lease tables show it: instances, their clusters, each cluster's
leader and epoch (``balancer ha status``, ``GET /api/v1/ha``)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from balancer.ha.lease import LeaseStore


def _iso(t: datetime | None) -> str | None:
    return t.isoformat() if t else None


def deployment_status(leases: LeaseStore, *, alive_s: float) -> dict[str, Any]:
    """``{"instances": [...], "leases": [...]}`` read in one go from the database (its clock)."""
    rows = leases.leases()
    inst = leases.instances()
    out_leases = [
        {
            "cluster": r.cluster,
            "leader": r.holder if r.valid else None,
            "epoch": r.epoch,
            "since": _iso(r.acquired_at) if r.valid else None,
            "expires_at": _iso(r.expires_at),
            "valid": r.valid,
        }
        for r in rows
    ]
    out_instances = []
    for i in inst:
        age = (i.now - i.seen_at).total_seconds()
        out_instances.append(
            {
                "instance": i.instance,
                "alive": age <= alive_s,
                "seen_s_ago": round(age, 3),
                "started_at": _iso(i.started_at),
                "pid": i.pid,
                "api": i.api,
                "clusters": sorted(r.cluster for r in rows if r.valid and r.holder == i.instance),
            }
        )
    return {"instances": out_instances, "leases": out_leases}
