"""``balancer serve`` with ``collectors.influx`` configured writes its samples to the server
(victoria-metrics' InfluxDB write API): the service's window and its export are one piece."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest
import yaml

from tests.collectors.vmserver import VictoriaMetrics
from tests.service.running import running, write_settings

pytestmark = [pytest.mark.influx, pytest.mark.timeout(180)]


def test_serve_exports_every_collect_to_influx(
    victoria_metrics: VictoriaMetrics, tmp_path: Path
) -> None:
    cluster = f"s{uuid.uuid4().hex[:8]}"
    cfg = write_settings(tmp_path, policy={"automation": "manual"}, hosts=3, vms=12)
    token = tmp_path / "influx.token"
    token.write_text("test-token\n")
    doc = yaml.safe_load(cfg.read_text())
    doc["collectors"] = {
        "sample_interval_s": 0.5,
        "window_s": 600,
        "stale_after_s": 120,
        "influx": {
            "url": victoria_metrics.url,
            "org": "test-org",
            "bucket": "test-bucket",
            "cluster": cluster,
            "token_file": str(token),
            "spool_dir": str(tmp_path / "spool"),
            "flush_interval_s": 0.2,
            "timeout_s": 5,
        },
    }
    cfg.write_text(yaml.safe_dump(doc, sort_keys=False))
    with running(cfg) as svc:
        vms = {v["name"] for v in svc.get("/status")["vms"]}
        hosts = {h["name"] for h in svc.get("/status")["hosts"]}
        # three collects of every VM (and host) reach the server
        series = victoria_metrics.wait_for_points(
            f'{{__name__="vm_cpu_used_cores",cluster="{cluster}"}}', 3 * len(vms), timeout_s=60
        )
        assert {s["metric"]["vm"] for s in series} == vms
        assert all(len(s["values"]) >= 3 for s in series), [len(s["values"]) for s in series]
        hosts_seen = victoria_metrics.wait_for_points(
            f'{{__name__="host_cpu_used_cores",cluster="{cluster}"}}', len(hosts), timeout_s=30
        )
        assert {s["metric"]["host"] for s in hosts_seen} == hosts
