"""The load figures the service decides on: the collectors' sample window (issue 7).

Each collect cycle feeds the port's snapshot into the window as samples; the snapshot the
service plans on carries the window's *demand* (max of the EWM and the p95 of the window, see
docs/collectors.md), so a short spike moves nothing while a sustained rise does. Stale hosts or
VMs (no sample for ``stale_after_s``) pause balancing through the stale-metrics breaker;
evacuations go on.
"""

from __future__ import annotations

from datetime import datetime

from balancer.model import Snapshot
from balancer.service.core import DemandSource
from collectors.sampler import batch_from_snapshot
from collectors.samples import HostSample, SampleBatch
from collectors.settings import CollectorSettings
from collectors.window import Window, demand_view


class WindowDemand(DemandSource):
    def __init__(self, settings: CollectorSettings) -> None:
        self.window = Window(settings)

    def observe(self, snapshot: Snapshot, now: datetime) -> tuple[Snapshot, str | None]:
        self.window.ingest(batch_from_snapshot(snapshot, now))
        view = demand_view(self.window, snapshot, now)
        fresh = view.freshness
        return view.snapshot, None if fresh.balancing_allowed else fresh.explain()

    def ingest_host(self, sample: HostSample) -> None:
        self.window.ingest(SampleBatch(time=sample.time, hosts=(sample,)))
