"""Rolling maintenance through the HTTP API (in process) and the CLI (its client commands
against the same runtime served by uvicorn), on a simulated cluster and a manual clock that
the test advances itself (each collect is one maintenance tick)."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from fastapi.testclient import TestClient

from balancer.api.app import create_app
from balancer.cli import cli
from balancer.service.runtime import Runtime
from balancer.sim.clock import ManualClock
from tests.api.inprocess import OPERATOR
from tests.service.running import TOKENS
from tests.service.test_predictive import serving
from tests.service.test_rolling import HOSTS, cluster, service, settings, tick

pytestmark = pytest.mark.timeout(300)

ADMIN = {"Authorization": f"Bearer {TOKENS['alice']}"}


def ticks_until(
    rt: Runtime, clock: ManualClock, get: Callable[[], Any], done: Callable[[Any], bool]
) -> Any:
    doc = get()
    for _ in range(400):
        if done(doc):
            return doc
        tick(rt, clock)
        doc = get()
    raise AssertionError(f"not within 400 ticks: {doc}")


def steps(doc: dict[str, Any]) -> dict[str, str]:
    return {h["host"]: h["state"] for h in doc["hosts"]}


def awaiting(*hosts: str) -> Callable[[dict[str, Any]], bool]:
    return lambda d: all(steps(d)[h] == "awaiting_gate" for h in hosts)


def test_rolling_maintenance_through_the_api_and_the_cli(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cfg = settings(tmp_path, monkeypatch)
    clock = ManualClock(datetime.now(UTC).replace(microsecond=0))
    sim = cluster(clock)
    vms = set(sim.snapshot().placement())
    with service(cfg, sim, clock) as rt, TestClient(create_app(rt)) as api:
        url = "/api/v1/maintenance/rolling"
        # bad requests: a 4xx naming the item, never a 500
        for body, status, field, text in [
            ({"hosts": ["h1", "h1"], "at_a_time": 1}, 422, "hosts[1]", "given twice"),
            ({"hosts": ["h1", "nope"], "at_a_time": 1}, 404, "hosts[1]", "no host 'nope'"),
            ({"hosts": ["h1"], "at_a_time": 0}, 422, "at_a_time", "greater than"),
            (
                {"hosts": ["h1"], "at_a_time": 1, "until_file": "/x", "until_command": "true"},
                422,
                "until_command",
                "not both",
            ),
        ]:
            r = api.post(url, headers=OPERATOR, json=body)
            assert r.status_code == status, (body, r.text)
            assert r.json()["field"] == field and text in r.json()["error"], r.text
        r = api.post(
            url, headers=OPERATOR, json={"hosts": ["h1"], "at_a_time": 1, "until_command": "true"}
        )
        assert r.status_code == 403 and "admin" in r.json()["error"]
        assert api.get(url, headers=OPERATOR).json() == []

        started = api.post(url, headers=OPERATOR, json={"hosts": HOSTS, "at_a_time": 2})
        assert started.status_code == 200, started.text
        rid = started.json()["id"]

        def get() -> Any:
            r = api.get(f"{url}/{rid}", headers=OPERATOR)
            assert r.status_code == 200, r.text
            return r.json()

        first = ticks_until(rt, clock, get, awaiting("h1", "h2"))
        assert first["current_batch"] == 0 and steps(first)["h3"] == "waiting"
        again = api.post(url, headers=OPERATOR, json={"hosts": ["h1"], "at_a_time": 1})
        assert again.status_code == 409 and again.json()["field"] == "hosts[0]"
        went = api.post(f"{url}/{rid}/continue", headers=OPERATOR, json={})
        assert went.status_code == 200, went.text
        assert steps(went.json()) == {
            "h1": "done",
            "h2": "done",
            "h3": "evacuating",
            "h4": "evacuating",
        }
        early = api.post(f"{url}/{rid}/continue", headers=OPERATOR, json={})
        assert early.status_code == 409, early.text
        assert early.json()["error"] == f"rolling {rid}: no host is awaiting its gate now"
        one = api.post(f"{url}/{rid}/continue", headers=OPERATOR, json={"host": "h3"})
        assert one.status_code == 409 and one.json()["field"] == "host", one.text
        assert api.get(f"{url}/999", headers=OPERATOR).status_code == 404

        # the rest through the CLI
        with serving(rt) as base:
            runner = CliRunner()

            def run(*args: str) -> Any:
                return runner.invoke(cli, [*args, "--url", base, "--token", TOKENS["bob"]])

            shown = run("maintenance", "rollings", str(rid))
            assert shown.exit_code == 0, shown.output
            assert f"rolling {rid}: running, 2 at a time, gate operator" in shown.stdout
            assert "evacuating" in shown.stdout or "awaiting_gate" in shown.stdout
            ticks_until(rt, clock, get, awaiting("h3", "h4"))
            done = run("maintenance", "continue", str(rid), "--json")
            assert done.exit_code == 0, done.output
            assert '"state": "done"' in done.stdout
            table = run("maintenance", "rollings")
            assert table.exit_code == 0 and f"rolling {rid}: done" in table.stdout
            # bad input is exit 2 with one line naming the item
            for args, text in [
                (("h1", "h1", "--at-a-time", "1"), "hosts[1]: 'h1' is given twice"),
                (("h1", "nope", "--at-a-time", "1"), "hosts[1]: no host 'nope'"),
                (("h1", "--at-a-time", "0"), "'--at-a-time'"),
            ]:
                bad = run("maintenance", "rolling", *args)
                assert bad.exit_code == 2, bad.output
                assert text in bad.stderr and len(bad.stderr.splitlines()) <= 3, bad.stderr
            one = run("maintenance", "rolling", "h1", "--at-a-time", "1")
            assert one.exit_code == 0 and "h1" in one.stdout, one.output
            rid2 = int(one.stdout.split()[1].rstrip(":"))
            cancelled = run("maintenance", "cancel", str(rid2))
            assert cancelled.exit_code == 0 and "cancelled by bob" in cancelled.stdout
        hosts = {
            h["name"]: h["state"] for h in api.get("/api/v1/status", headers=ADMIN).json()["hosts"]
        }
        assert hosts["h2"] == hosts["h3"] == hosts["h4"] == "active"
        assert set(sim.snapshot().placement()) == vms
