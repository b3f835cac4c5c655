"""The service's forecast source: the model is refitted in the background and serves
meanwhile; a VM the model does not know yet plans on its present demand until the refit."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from balancer.model import Snapshot
from balancer.service.forecasting import ForecastSource
from collectors.history import DemandHistory, MemoryHistoryBackend
from collectors.settings import HistorySettings
from policies.model import Predictive
from tests.factories import make_host, make_snapshot, make_vm
from tests.service.running import wait_for

DAY0 = datetime(2026, 3, 2, tzinfo=UTC)
STEP = timedelta(minutes=5)
ON = Predictive(horizon_minutes=60, quantile=0.9, weight=1.0)


def snap(at: datetime, vms: tuple[str, ...]) -> Snapshot:
    hot = 1.9 if 8 <= at.hour < 9 else 0.1
    return make_snapshot(
        [make_host("h1", cpu_cores=4), make_host("h2", cpu_cores=4)],
        [make_vm(n, "h1", vcpus=2, cpu_used_cores=hot) for n in vms],
    )


def test_a_new_vm_waits_for_the_background_refit_which_never_blocks_the_cycle() -> None:
    source = ForecastSource(
        DemandHistory(HistorySettings(), MemoryHistoryBackend()), background=True
    )
    try:
        t = DAY0
        old = ("a", "b")
        while t < DAY0 + timedelta(days=2, hours=7, minutes=30):
            source.record(snap(t, old), t)
            t += STEP
        first = source.outlook(snap(t, old), ON, t)
        assert first is not None and first.fallback == () and first.demand["a"] > 1.5
        # a VM appears: this cycle is served by the current model, the new VM on its present
        now = snap(t, (*old, "c"))
        second = source.outlook(now, ON, t)
        assert second is not None and second.fallback == ("c",)
        assert second.demand["a"] == first.demand["a"]
        # once the background refit is in, the next cycle knows c (too new for a forecast:
        # the forecaster's own fallback)
        wait_for("the refit", lambda: source._refit is None or source._refit.done(), 30)
        third = source.outlook(now, ON, t)
        assert third is not None and source._model is not None and "c" in source._model.names
    finally:
        source.close()
