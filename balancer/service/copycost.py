"""The migration cost, learned: what each VM's migrations really copied against what the model
expected.

Words: the *expected GiB* of a move is :func:`balancer.optimizer.thresholds.copied_gib` (memory
raised by the dirty rate against the link, times the VM's ``copy_factor``): what the optimizer
weighs a move with. After each succeeded migration the *copied GiB* is libvirt's figure (its job
statistics' processed data). The VM's *copy factor* is the exponentially weighted mean
(``ALPHA``) of copied / expected-before-correction over its migrations, within the model's
bounds; the balance cycle plans with it, so a VM whose pages churn more than its measured dirty
rate says costs more, and one mostly made of zero pages costs less. The *prediction error* of
each migration is ``|copied - expected| / copied`` with the factor in force when it was planned;
its running mean and the totals are on ``/metrics`` (``balancer_migration_copy_*``). The *copy
time* expected is the expected GiB at the link's speed (the policy's bandwidth limit, else the
reference link); its error against libvirt's job time is kept the same way
(``balancer_migration_copy_time_error_ratio``). Measured on the lab: docs/benchmarks/lab.md.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from dataclasses import dataclass, replace

from balancer.model import MAX_COPY_FACTOR, MIN_COPY_FACTOR, VM, Snapshot
from balancer.optimizer.thresholds import REFERENCE_BANDWIDTH_MIB_S, copied_gib

#: weight of the newest migration in a VM's copy factor
ALPHA = 0.5
#: at most this many VMs keep a factor (the least recently migrated are forgotten first)
MAX_VMS = 100_000


@dataclass(frozen=True, slots=True, kw_only=True)
class CopyStats:
    migrations: int
    expected_gib: float
    copied_gib: float
    #: mean of |copied - expected| / copied over the migrations
    mean_abs_error: float
    #: mean of |job time - expected time| / job time over the migrations with a job time
    mean_abs_time_error: float = 0.0


class CopyCostModel:
    """Per VM copy factors learned from finished migrations (module docstring)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._factor: dict[str, float] = {}
        self._n = 0
        self._expected = 0.0
        self._copied = 0.0
        self._abs_err = 0.0
        self._timed = 0
        self._abs_time_err = 0.0

    def factor(self, vm: str) -> float:
        with self._lock:
            return self._factor.get(vm, 1.0)

    def factors(self) -> Mapping[str, float]:
        with self._lock:
            return dict(self._factor)

    def learn(
        self, vm: VM, copied_mib: float, bandwidth_mib_s: int, duration_s: float | None = None
    ) -> float | None:
        """One succeeded migration of ``vm`` (as it was when planned) that copied
        ``copied_mib`` in libvirt's ``duration_s``; the migration's prediction error, or None
        when there is nothing to learn from (no figure)."""
        if copied_mib <= 0:
            return None
        copied = copied_mib / 1024.0
        with self._lock:
            current = self._factor.get(vm.name, 1.0)
        expected = copied_gib(replace(vm, copy_factor=current), bandwidth_mib_s)
        base = copied_gib(replace(vm, copy_factor=1.0), bandwidth_mib_s)
        if base <= 0:
            return None
        ratio = min(MAX_COPY_FACTOR, max(MIN_COPY_FACTOR, copied / base))
        error = abs(copied - expected) / copied
        with self._lock:
            self._factor.pop(vm.name, None)
            self._factor[vm.name] = round((1 - ALPHA) * current + ALPHA * ratio, 4)
            while len(self._factor) > MAX_VMS:
                del self._factor[next(iter(self._factor))]
            self._n += 1
            self._expected += expected
            self._copied += copied
            self._abs_err += error
            if duration_s is not None and duration_s > 0:
                link = bandwidth_mib_s or REFERENCE_BANDWIDTH_MIB_S
                self._timed += 1
                self._abs_time_err += abs(expected * 1024 / link - duration_s) / duration_s
        return error

    def stats(self) -> CopyStats:
        with self._lock:
            return CopyStats(
                migrations=self._n,
                expected_gib=self._expected,
                copied_gib=self._copied,
                mean_abs_error=self._abs_err / self._n if self._n else 0.0,
                mean_abs_time_error=self._abs_time_err / self._timed if self._timed else 0.0,
            )

    def apply(self, snap: Snapshot) -> Snapshot:
        """``snap`` with each VM's learned copy factor (unchanged when none is learned)."""
        factors = self.factors()
        if not factors:
            return snap
        return snap.with_vms(
            replace(v, copy_factor=factors[v.name]) if v.name in factors else v for v in snap.vms
        )
