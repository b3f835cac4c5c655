"""Predictive balancing through the service and its API: the collect cycle records the demand
history into the service's database, a predictive policy plans on the forecast (a daily peak
is moved for before it comes), the API and the status show the forecast per host, and the
history survives a restart.

The service runs on a manual clock advanced five minutes per collect (the history's step), on
a simulated cluster whose two peak VMs run from 08:00 to 09:00 every day."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import uvicorn
import yaml
from click.testing import CliRunner
from fastapi.testclient import TestClient

from balancer.api.app import create_app
from balancer.cli import cli as main_cli
from balancer.service.forecasting import bucket_end
from balancer.service.runtime import Runtime
from balancer.settings import load_settings
from balancer.sim.clock import ManualClock
from balancer.sim.cluster import SimulatedCluster
from tests.api.inprocess import VIEWER
from tests.factories import make_host, make_snapshot, make_vm
from tests.service.running import TOKENS, free_port, wait_for, write_settings

pytestmark = pytest.mark.timeout(300)

DAY0 = datetime(2026, 3, 2, tzinfo=UTC)
STEP = timedelta(minutes=5)


def _usage(at: datetime) -> dict[str, float]:
    hot = 1.9 if 8 <= at.hour < 9 else 0.1
    return {"p1": hot, "p2": hot, "q1": 0.3, "q2": 0.3}


def _cluster(clock: ManualClock) -> SimulatedCluster:
    hosts = [make_host("h1", cpu_cores=4), make_host("h2", cpu_cores=4)]
    vms = [
        make_vm(n, h, vcpus=2, memory_mib=1024, cpu_used_cores=0.1)
        for n, h in (("p1", "h1"), ("p2", "h1"), ("q1", "h2"), ("q2", "h2"))
    ]
    return SimulatedCluster(make_snapshot(hosts, vms), clock=clock, link_mib_s=20000.0)


def _settings(tmp_path: Path, predictive: dict[str, Any] | None) -> Path:
    policy: dict[str, Any] = {"automation": "full", "threshold": 3, "exclude": []}
    if predictive is not None:
        policy["predictive"] = predictive
    cfg = write_settings(
        tmp_path,
        policy=policy,
        intervals={"collect_s": 300, "balance_s": 300, "policy_reload_s": 300},
    )
    (tmp_path / "policies" / "rules.yaml").write_text("rules: []\n")
    doc = yaml.safe_load(cfg.read_text())
    doc["collectors"] = {"window_s": 3600, "sample_interval_s": 300, "stale_after_s": 900}
    cfg.write_text(yaml.safe_dump(doc))
    return cfg


@contextmanager
def serving(rt: Runtime) -> Iterator[str]:
    """The runtime's API served by uvicorn in this process; yields its URL."""
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(create_app(rt), host="127.0.0.1", port=port, log_level="warning")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        wait_for("the API", lambda: server.started or None, timeout_s=30)
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)


def _learn(rt: Runtime, sim: SimulatedCluster, clock: ManualClock, until: datetime) -> None:
    while clock.now() < until:
        sim.set_cpu_usage(_usage(clock.now()))
        rt.service.collect()
        clock.advance(STEP.total_seconds())


def test_the_service_moves_before_the_daily_peak_and_shows_its_forecast(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for u, t in TOKENS.items():
        monkeypatch.setenv(f"TEST_TOKEN_{u.upper()}", t)
    cfg = _settings(tmp_path, {"horizon_minutes": 60, "quantile": 0.9})
    clock = ManualClock(DAY0)
    sim = _cluster(clock)
    rt = Runtime.build(load_settings(cfg), port=sim, clock=clock)
    before = DAY0 + timedelta(days=2, hours=7, minutes=30)
    try:
        rt.service.start()
        _learn(rt, sim, clock, before)
        with TestClient(create_app(rt), raise_server_exceptions=True) as api:
            empty = api.get("/api/v1/forecast", headers=VIEWER).json()
            assert empty["enabled"] and empty["history"] and empty["at"] is None
            assert empty["history_series"] == 6  # four VMs and two hosts
            plan = rt.service.balance(who="test")
            moves = plan.moves
            assert moves and {m.vm for m in moves} <= {"p1", "p2"}, plan
            assert all(m.reason.startswith("forecast:h1 ") and "at 08:" in m.reason for m in moves)
            fc = api.get("/api/v1/forecast", headers=VIEWER).json()
            h1 = next(h for h in fc["hosts"] if h["host"] == "h1")
            assert h1["peak_load"] >= 0.9 and h1["present_load"] < 0.1
            assert h1["peak_at"].startswith(before.strftime("%Y-%m-%dT08:"))
            assert fc["fallback_vms"] == 0
            assert {v["name"] for v in fc["vms"]} == {"p1", "p2", "q1", "q2"}
            status = api.get("/api/v1/status", headers=VIEWER).json()
            hosts = {h["name"]: h for h in status["hosts"]}
            assert hosts["h1"]["forecast"]["peak_load"] == h1["peak_load"]
            metrics = api.get("/metrics").text
            assert 'balancer_cycle_seconds_count{job="forecast"} 1.0' in metrics
            # the assistant: h2 is cool now, and the forecast says how hot p1 would make it
            targets = api.get("/api/v1/vms/p1/targets", headers=VIEWER).json()
            assert targets["current"] == "h1" and targets["planned_cores"] >= 1.5
            assert targets["current_forecast"]["peak_load"] == h1["peak_load"]
            [h2] = targets["candidates"]
            h2_peak = next(h for h in fc["hosts"] if h["host"] == "h2")["peak_cores"]
            assert h2["host"] == "h2" and h2["cpu_load"] < 0.5
            # p1's curve on h2's, step by step: its 08:00 peak, at most both peaks added
            bound = (h2_peak + targets["planned_cores"]) / 4
            assert h2["cpu_load"] + 0.4 < h2["forecast_peak_load"] <= bound + 1e-3
            assert h2["forecast_peak_at"].startswith(before.strftime("%Y-%m-%dT08:"))
            assert [(r["host"], r["reason"]) for r in targets["ruled_out"]] == [
                ("h1", "current_host")
            ]
            missing = api.get("/api/v1/vms/nope/targets", headers=VIEWER)
            assert missing.status_code == 404 and "nope" in missing.json()["error"]
        with serving(rt) as url:
            cli = CliRunner()
            shown = cli.invoke(main_cli, ["forecast", "show", "--url", url, "--token", "t-viewer"])
            assert shown.exit_code == 0, shown.output
            assert "h1" in shown.output and "95% (3.8 cores)" in shown.output
            js = cli.invoke(
                main_cli, ["forecast", "show", "--url", url, "--token", "t-viewer", "--json"]
            )
            assert json.loads(js.output)["hosts"][0]["host"] == "h1"
            ranked = cli.invoke(main_cli, ["assist", "p1", "--url", url, "--token", "t-viewer"])
            assert ranked.exit_code == 0, ranked.output
            assert "forecast: h1 peaks at 95% at 08:00Z" in ranked.output, ranked.output
            assert f"{100 * h2['forecast_peak_load']:.0f}% at " in ranked.output, ranked.output
            js = cli.invoke(
                main_cli, ["assist", "p1", "--url", url, "--token", "t-viewer", "--json"]
            )
            assert json.loads(js.output)["candidates"][0]["host"] == "h2"
            bad = cli.invoke(main_cli, ["assist", "p1", "--url", url, "--policy", "x.yaml"])
            assert bad.exit_code == 2 and "--policy goes with --snapshot" in bad.output
            gone = cli.invoke(main_cli, ["assist", "nope", "--url", url, "--token", "t-viewer"])
            assert gone.exit_code != 0 and "nope" in gone.output and "Traceback" not in gone.output
        stored = rt.service.forecasts
        assert stored is not None
        end = bucket_end(clock.now(), 300)
        kept = stored.history.series("vm", ("p1", "q1"), end=end, steps=3 * 288).values
    finally:
        rt.close()

    # a restart reads the same history back from the database
    again = Runtime.build(load_settings(cfg), port=_cluster(clock), clock=clock)
    try:
        assert again.service.forecasts is not None
        got = again.service.forecasts.history.series("vm", ("p1", "q1"), end=end, steps=3 * 288)
        np.testing.assert_array_equal(got.values, kept)
        assert np.nanmax(got.values[0]) == pytest.approx(1.9)
    finally:
        again.close()


def test_a_reactive_policy_keeps_history_but_plans_on_the_present(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for u, t in TOKENS.items():
        monkeypatch.setenv(f"TEST_TOKEN_{u.upper()}", t)
    cfg = _settings(tmp_path, None)
    clock = ManualClock(DAY0)
    sim = _cluster(clock)
    rt = Runtime.build(load_settings(cfg), port=sim, clock=clock)
    try:
        rt.service.start()
        _learn(rt, sim, clock, DAY0 + timedelta(days=2, hours=7, minutes=30))
        assert rt.service.balance(who="test").moves == []
        with TestClient(create_app(rt), raise_server_exceptions=True) as api:
            fc = api.get("/api/v1/forecast", headers=VIEWER).json()
            assert not fc["enabled"] and fc["history"] and fc["hosts"] == []
            status = api.get("/api/v1/status", headers=VIEWER).json()
            assert all(h["forecast"] is None for h in status["hosts"])
            targets = api.get("/api/v1/vms/p1/targets", headers=VIEWER).json()
            assert targets["planned_cores"] is None and targets["current_forecast"] is None
            assert all(c["forecast_peak_load"] is None for c in targets["candidates"])
    finally:
        rt.close()
