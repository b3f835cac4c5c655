"""Migration job bookkeeping without libvirt hosts: final figures are never overwritten."""

from __future__ import annotations

import time
from dataclasses import replace
from typing import Any

import libvirt
import pytest

from balancer.libvirt import HostConfig, LibvirtBackend
from balancer.libvirt.backend import _Job
from balancer.port import JobState, MigrationOptions, MigrationProgress


class _FinishingDomain:
    """A domain whose job ends (the worker publishes final figures) while it is queried.

    ``answer`` is what the query then gives: live statistics of a still-running job, a job
    of type NONE (libvirt has just cleared it), or an error (the source domain is gone, as
    it is the moment a migration completes)."""

    def __init__(self, answer: str) -> None:
        self.on_query: Any = None
        self.answer = answer

    def jobStats(self, flags: int = 0) -> dict[str, int]:  # libvirt's name
        self.on_query()
        if self.answer == "error":
            raise libvirt.libvirtError("Domain not found: no domain with matching uuid")
        if self.answer == "none":
            return {"type": libvirt.VIR_DOMAIN_JOB_NONE}
        return {"type": 2, "time_elapsed": 500, "data_total": 1 << 27, "data_processed": 1 << 20}


@pytest.mark.parametrize("answer", ["live", "none", "error"])
def test_progress_never_overwrites_the_final_figures(answer: str) -> None:
    backend = LibvirtBackend([HostConfig(name="a", uri="qemu+tcp://127.0.0.1:1/system")])
    dom = _FinishingDomain(answer)
    start = MigrationProgress(job_id="j1", vm="v", source="a", target="b", state=JobState.RUNNING)
    job = _Job(
        id="j1",
        vm="v",
        source="a",
        target="b",
        options=MigrationOptions(),
        started=time.monotonic() - 5,
        dom=dom,
        progress=start,
    )
    final = replace(start, state=JobState.SUCCEEDED, elapsed_s=0.865, downtime_ms=31.0)
    dom.on_query = lambda: backend._finish(job, final)
    backend._jobs["j1"] = job
    try:
        assert backend.progress("j1") == final
        assert backend.progress("j1") == final
        assert backend.wait("j1", timeout_s=1) == final
    finally:
        backend.close()
