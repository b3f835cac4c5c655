"""Prometheus metrics of the service (``GET /metrics``), in a registry of its own.

Gauges are read from the service when scraped (host loads, imbalance, queue, paused); counters
and histograms are fed as things happen (migration outcomes, cycle and solve durations).
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from balancer.executor import MigrationResult
from balancer.service.core import Service
from balancer.storage import Store


class _StateCollector(Collector):
    def __init__(self, svc: Service) -> None:
        self.svc = svc

    def collect(self) -> Iterator[Metric]:
        st = self.svc.status()
        cpu = GaugeMetricFamily(
            "balancer_host_cpu_load",
            "Measured CPU demand / cores of a host",
            labels=["host", "state"],
        )
        mem = GaugeMetricFamily(
            "balancer_host_memory_load",
            "Configured VM memory / memory of a host",
            labels=["host", "state"],
        )
        vms = GaugeMetricFamily("balancer_host_vms", "VMs running on a host", labels=["host"])
        for h in st.hosts:
            cpu.add_metric([h.name, h.state], h.cpu_load)
            mem.add_metric([h.name, h.state], h.memory_load)
            vms.add_metric([h.name], h.vm_count)
        yield cpu
        yield mem
        yield vms
        yield GaugeMetricFamily(
            "balancer_imbalance",
            "Weighted standard deviation of the active hosts' loads",
            value=st.imbalance or 0.0,
        )
        cc = self.svc.copy_cost.stats()
        yield CounterMetricFamily(
            "balancer_migration_copy_expected_gib",
            "GiB the cost model expected the succeeded migrations to copy",
            value=cc.expected_gib,
        )
        yield CounterMetricFamily(
            "balancer_migration_copy_copied_gib",
            "GiB libvirt reports the succeeded migrations copied",
            value=cc.copied_gib,
        )
        yield GaugeMetricFamily(
            "balancer_migration_copy_error_ratio",
            "Mean |copied - expected| / copied over the succeeded migrations",
            value=cc.mean_abs_error,
        )
        yield GaugeMetricFamily(
            "balancer_migration_copy_time_error_ratio",
            "Mean |job time - expected time| / job time over the succeeded migrations "
            "(expected: the expected GiB at the link's speed)",
            value=cc.mean_abs_time_error,
        )
        yield GaugeMetricFamily(
            "balancer_paused", "1 when automation is paused (any breaker)", value=int(st.paused)
        )
        brk = GaugeMetricFamily(
            "balancer_breaker_open", "1 per open circuit breaker", labels=["reason"]
        )
        for b in st.pause_reasons:
            brk.add_metric([b.reason], 1)
        yield brk
        health = GaugeMetricFamily(
            "balancer_host_health_signal",
            "1 per health signal raised on a host (balancer.service.hostwatch)",
            labels=["host", "signal"],
        )
        for h in st.hosts:
            for sig in h.health:
                health.add_metric([h.name, sig.signal], 1)
        yield health
        yield GaugeMetricFamily(
            "balancer_recommendations_pending",
            "Recommendations waiting for approval",
            value=st.pending_recommendations,
        )
        ex = self.svc.executor
        status = getattr(getattr(ex, "executor", None), "status", None)
        queued = running = 0
        if status is not None:
            s = status()
            queued, running = len(s.queued), len(s.running)
        yield GaugeMetricFamily("balancer_queue_length", "Migrations queued", value=queued)
        yield GaugeMetricFamily(
            "balancer_migrations_in_flight", "Migrations running now", value=running
        )
        yield GaugeMetricFamily("balancer_vms_held", "VMs held from balancing", value=len(st.holds))


class _AuditCollector(Collector):
    """The last periodic verification of the audit chain (``audit.verify_interval_s``)."""

    def __init__(self, store: Store) -> None:
        self.store = store

    def collect(self) -> Iterator[Metric]:
        v = self.store.audit_verdict
        if v is None:  # not verified yet
            return
        yield GaugeMetricFamily(
            "balancer_audit_chain_ok",
            "1 when the audit chain (and its anchor) verified at the last check, else 0",
            value=int(v.ok),
        )
        yield GaugeMetricFamily(
            "balancer_audit_verified_records",
            "Records the last successful audit verification walked",
            value=v.records,
        )
        yield GaugeMetricFamily(
            "balancer_audit_verify_timestamp_seconds",
            "Unix time of the last audit verification",
            value=v.at.timestamp(),
        )


class ServiceMetrics:
    def __init__(self, svc: Service, store: Store | None) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.store = store
        self.migrations = Counter(
            "balancer_migrations",
            "Finished migrations by outcome and reason",
            ["outcome", "reason"],
            registry=self.registry,
        )
        self.cycle = Histogram(
            "balancer_cycle_seconds",
            "Duration of the service's cycles",
            ["job"],
            buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
            registry=self.registry,
        )
        self.solve = Histogram(
            "balancer_solve_seconds",
            "Optimizer solve time per plan",
            buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
            registry=self.registry,
        )
        self.internal_errors = Counter(
            "balancer_api_internal_errors",
            "API requests answered 500 by the last-resort handler (each one is a bug)",
            registry=self.registry,
        )
        self.registry.register(_StateCollector(svc))
        if store is not None:
            self.registry.register(_AuditCollector(store))
        svc.timings.append(self.observe)

    def observe(self, name: str, seconds: float) -> None:
        if name == "solve":
            self.solve.observe(seconds)
        else:
            self.cycle.labels(job=name).observe(seconds)

    def on_result(self, r: MigrationResult) -> None:
        reason = "unknown"
        if self.store is not None:
            reason = self.store.request(r.request_id).reason.split(":")[0]
        self.migrations.labels(outcome=r.result.value, reason=reason).inc()
