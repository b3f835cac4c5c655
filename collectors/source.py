"""The service's demand source backed by the collectors.

The service calls ``observe(raw_snapshot, now)`` once per collect cycle (its ``DemandSource``
interface, :mod:`balancer.service.core`); this samples the port's snapshot into the window and
returns the demand snapshot to decide on, plus why balancing must pause when samples are stale
(``None`` when they are fresh). The host agents' samples come in through :meth:`ingest_host`
(the ``POST /api/v1/ingest/host`` endpoint) and migration events through
:meth:`record_migration`. With InfluxDB configured, :meth:`open` rebuilds the window from
history first and every sample and event is exported through the spool.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from datetime import datetime
from typing import Any

from balancer.errors import StorageError
from balancer.model import Snapshot
from balancer.port import MigrationProgress
from collectors.agent import host_sample_from_doc
from collectors.influx import FlushLoop, InfluxExporter, rebuild_window_from_influx
from collectors.sampler import batch_from_snapshot
from collectors.samples import HostSample, MigrationEvent, SampleBatch
from collectors.settings import CollectorSettings
from collectors.window import DemandView, Window, demand_view

log = logging.getLogger("balancer.collectors")


class WindowDemandSource:
    """``Service(demand=WindowDemandSource.open(settings.collectors, clock.now()))``."""

    def __init__(
        self, settings: CollectorSettings, *, exporter: InfluxExporter | None = None
    ) -> None:
        self.settings = settings
        self.window = Window(settings)
        self.exporter = exporter
        self._flush: FlushLoop | None = None
        #: the latest demand view (for the API: staleness details, measured counts)
        self.last_view: DemandView | None = None

    @classmethod
    def open(cls, settings: CollectorSettings, now: datetime) -> WindowDemandSource:
        """Make the source; with InfluxDB: rebuild the window from history (a failure is logged
        and the window starts empty: it fills within ``window_s``) and start flushing."""
        if settings.influx is None:
            return cls(settings)
        exporter = InfluxExporter(settings.influx)
        source = cls(settings, exporter=exporter)
        try:
            n = rebuild_window_from_influx(source.window, settings.influx, now)
            log.info("collectors: window rebuilt from InfluxDB history (%d samples)", n)
        except StorageError as exc:
            log.warning("collectors: %s; starting with an empty window", exc)
        source._flush = FlushLoop(exporter).start()
        return source

    def observe(self, snapshot: Snapshot, now: datetime) -> tuple[Snapshot, str | None]:
        """Sample ``snapshot`` into the window; the demand snapshot and the stale reason."""
        taken = self.window.ingest(batch_from_snapshot(snapshot, now))
        if self.exporter is not None:
            self.exporter.export_batch(taken)
        view = demand_view(self.window, snapshot, now)
        self.last_view = view
        fresh = view.freshness.balancing_allowed
        return view.snapshot, None if fresh else view.freshness.explain()

    def ingest_host(self, doc: Mapping[str, Any]) -> HostSample:
        """One agent document (raises :class:`~balancer.errors.InputError` when malformed)."""
        sample = host_sample_from_doc(doc)
        self.ingest_sample(sample)
        return sample

    def ingest_sample(self, sample: HostSample) -> None:
        """One agent sample: into the window (the whole host's use while fresh) and InfluxDB."""
        batch = SampleBatch(time=sample.time, hosts=(sample,))
        self.window.ingest(batch)
        if self.exporter is not None:
            self.exporter.export_batch(batch)

    def record_migration(
        self, progress: MigrationProgress, now: datetime, reason: str | None = None
    ) -> None:
        if self.exporter is not None:
            self.exporter.export_events([MigrationEvent.from_progress(progress, now, reason)])

    def close(self) -> None:
        if self._flush is not None:
            self._flush.stop()
        if self.exporter is not None:
            self.exporter.close()
