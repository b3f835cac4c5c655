"""The dashboard in a real browser: Debian's chromium, headless, driven by Playwright.

The page loads, shows the hosts of a running demo service, and approving a recommendation
from the page works. Without chromium (or playwright) the test skips, unless
BALANCER_REQUIRE_SERVICES=1, where it fails.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from balancer.service.runtime import Runtime
from balancer.settings import load_settings
from balancer.sim.clock import ManualClock
from balancer.snapshot_io import dump_snapshot
from tests.factories import make_host, make_snapshot, make_vm
from tests.service.running import TOKENS, running, wait_for, write_settings
from tests.service.test_predictive import DAY0, _cluster, _learn, _settings, serving

CHROMIUM = os.environ.get("BALANCER_CHROMIUM", "/usr/bin/chromium")
ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]

pytestmark = [pytest.mark.browser, pytest.mark.timeout(180)]


def _need(reason: str) -> None:
    if os.environ.get("BALANCER_REQUIRE_SERVICES"):
        pytest.fail(f"{reason} (BALANCER_REQUIRE_SERVICES=1: browser tests must run)")
    pytest.skip(reason)


def _playwright() -> tuple[Any, Any]:
    """Playwright's ``expect`` and ``sync_playwright`` (skip, or fail, without a browser)."""
    if not (Path(CHROMIUM).exists() or shutil.which(CHROMIUM)):
        _need(f"no chromium at {CHROMIUM} (apt-get install chromium)")
    try:
        from playwright.sync_api import expect, sync_playwright
    except ImportError:
        _need("playwright for Python is not installed (pip install -e '.[dev]')")
    return expect, sync_playwright


@contextmanager
def _page(sync_playwright: Any, url: str) -> Iterator[Any]:
    """A headless chromium page opened on ``url``, closed at the end."""
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=ARGS, headless=True)
        try:
            page = browser.new_page()
            page.set_default_timeout(30_000)
            page.goto(url)
            yield page
        finally:
            browser.close()


def test_dashboard_shows_hosts_and_approves_a_recommendation(tmp_path: Path) -> None:
    expect, sync_playwright = _playwright()
    cfg = write_settings(tmp_path, policy={"automation": "manual"})
    with running(cfg) as svc:
        recs = wait_for("recommendations", lambda: svc.get("/recommendations"), timeout_s=60)
        hosts = [h["name"] for h in svc.get("/status")["hosts"]]
        with _page(sync_playwright, svc.url + "/") as page:
            # without a token: the page asks for one
            expect(page.locator("#summary")).to_contain_text("Sign in")
            page.fill("#token", TOKENS["bob"])
            page.click("#save-token")
            expect(page.locator("#whoami")).to_have_text("bob (operator)")
            # every host of the running service, with its CPU and memory bars
            expect(page.locator("#hosts .host")).to_have_count(len(hosts))
            for h in hosts:
                card = page.locator(f'#hosts .host[data-host="{h}"]')
                expect(card.locator(".bar.cpu")).to_have_count(1)
                expect(card.locator(".bar.mem")).to_have_count(1)
            expect(page.locator("#automation")).to_have_text("manual")
            # approve the first pending recommendation from the page
            button = page.locator("#recommendations button.approve").first
            expect(button).to_be_visible()
            rid = int(button.get_attribute("data-id") or "0")
            assert rid in {r["id"] for r in recs} or rid > 0
            button.click()
            expect(page.locator("#banner")).to_contain_text(f"recommendation {rid} approved")
            # the token survives a reload (localStorage)
            page.reload()
            expect(page.locator("#whoami")).to_have_text("bob (operator)")
            # the migration assistant: choose a VM, see its ranked targets, move it to the first
            status = svc.get("/status")
            vm = sorted(v["name"] for v in status["vms"])[0]
            ranked = svc.get(f"/vms/{vm}/targets")
            best = ranked["candidates"][0]["host"]
            page.select_option("#assist-vm", vm)
            rows = page.locator("#targets tbody tr.candidate")
            expect(rows).to_have_count(len(ranked["candidates"]))
            expect(rows.first).to_have_attribute("data-host", best)
            current = page.locator(f'#assist .out[data-host="{ranked["current"]}"]')
            expect(current).to_contain_text("current_host")
            rows.first.locator("button.migrate").click()
            expect(page.locator("#banner")).to_contain_text(f"of {vm} to {best} queued")
            # quarantine a host from its card (the reason asked in a prompt), then release it
            other = next(h for h in hosts if h not in (best, ranked["current"]))
            page.once("dialog", lambda d: d.accept("disk errors"))
            page.locator(f'#hosts .host[data-host="{other}"] button.quarantine').click()
            expect(page.locator("#banner")).to_contain_text(f"{other} quarantined")
            card = page.locator(f'#hosts .host[data-host="{other}"]')
            expect(card).to_have_attribute("data-state", "quarantined")
            card.locator("button.release").click()
            expect(page.locator("#banner")).to_contain_text(f"{other} released")
            expect(card).to_have_attribute("data-state", "active")

        approved = [r for r in svc.get("/recommendations", params={"state": "approved"})]
        assert [(r["id"], r["decided_by"]) for r in approved] == [(rid, "bob")]
        mid = approved[0]["migration_id"]
        wait_for(
            "the approved migration",
            lambda: any(
                m["id"] == mid and m["state"] == "succeeded" for m in svc.get("/migrations")
            ),
            timeout_s=60,
        )
        quarantined = svc.get("/audit", params={"kind": "quarantine"})
        assert [(a["result"], a["who"]) for a in reversed(quarantined)] == [
            ("quarantined", "bob"),
            ("released", "bob"),
        ]
        assert "disk errors" in quarantined[-1]["detail"]
        # the assistant's move was requested by bob and runs to the host he chose
        wait_for(
            "the assistant's migration",
            lambda: any(
                m["vm"] == vm
                and m["target"] == best
                and m["who"] == "bob"
                and m["state"] == "succeeded"
                for m in svc.get("/migrations")
            ),
            timeout_s=60,
        )


def test_dashboard_shows_a_partial_plans_violations(tmp_path: Path) -> None:
    expect, sync_playwright = _playwright()
    # a and b must trade hosts but may never share one: no safe order on two hosts
    snap = tmp_path / "snap.json"
    hosts = [make_host("h1"), make_host("h2")]
    dump_snapshot(make_snapshot(hosts, [make_vm("a", "h1"), make_vm("b", "h2")]), snap)
    rules = [
        {"name": "apart", "kind": "anti_affinity", "vms": ["a", "b"]},
        {"name": "a-not-h1", "kind": "vm_host", "mode": "must_not", "vms": ["a"], "hosts": ["h1"]},
        {"name": "b-not-h2", "kind": "vm_host", "mode": "must_not", "vms": ["b"], "hosts": ["h2"]},
    ]
    cfg = write_settings(
        tmp_path,
        snapshot=str(snap),
        policy={"automation": "manual", "threshold": 1, "rules": rules},
    )
    with running(cfg) as svc:
        wait_for("a partial plan", lambda: svc.get("/status")["last_plan_status"] == "partial")
        with _page(sync_playwright, svc.url + "/") as page:
            page.fill("#token", TOKENS["vic"])
            page.click("#save-token")
            expect(page.locator("#plan-status")).to_have_text("partial")
            shown = page.locator("#violations .violation")
            expect(shown).to_have_count(2)
            first = page.locator('#violations .violation[data-rule="a-not-h1"]')
            expect(first.locator(".cause")).to_have_text("needs_transient_violation")
            expect(first).to_contain_text("a on h1")
            expect(first).to_contain_text("apart")


def test_dashboard_shows_each_hosts_forecast_peak(tmp_path: Path, monkeypatch: Any) -> None:
    """A predictive policy after two days of a daily 08:00 peak (the service test's cluster, on
    a manual clock, served by uvicorn in this process): the peak host's card shows the
    expected peak and its time under its CPU bar."""
    expect, sync_playwright = _playwright()
    for u, t in TOKENS.items():
        monkeypatch.setenv(f"TEST_TOKEN_{u.upper()}", t)
    clock = ManualClock(DAY0)
    sim = _cluster(clock)
    rt = Runtime.build(
        load_settings(_settings(tmp_path, {"horizon_minutes": 60})), port=sim, clock=clock
    )
    try:
        rt.service.start()
        _learn(rt, sim, clock, DAY0 + timedelta(days=2, hours=7, minutes=30))
        assert rt.service.balance(who="test").moves
        with serving(rt) as url, _page(sync_playwright, url + "/") as page:
            page.fill("#token", TOKENS["vic"])
            page.click("#save-token")
            h1 = page.locator('#hosts .host[data-host="h1"] .bar.forecast')
            expect(h1).to_have_count(1)
            expect(h1).to_contain_text("forecast 95% at 08:00Z")
            expect(page.locator('#hosts .host[data-host="h2"] .bar.forecast')).to_have_count(1)
            # the assistant shows where p1 would peak; a viewer gets no "Migrate here"
            page.select_option("#assist-vm", "p1")
            h2 = page.locator('#targets tr.candidate[data-host="h2"] td.forecast')
            expect(h2).to_contain_text(" at 08:00Z")
            expect(page.locator("#assist")).to_contain_text("h1 peaks at 95% at 08:00Z")
            expect(page.locator("#targets button.migrate")).to_have_count(0)
    finally:
        rt.close()


def test_dashboard_shows_a_hosts_health_signal(tmp_path: Path) -> None:
    expect, sync_playwright = _playwright()
    cfg = write_settings(tmp_path, policy={"automation": "partial", "health": {}})
    with running(cfg) as svc:
        host = svc.get("/status")["hosts"][0]["name"]
        for ce in (1, 4):  # the agent's EDAC corrected count rises
            svc.post(
                "/ingest/host",
                user="ada",
                json={
                    "host": host,
                    "time": datetime.now(UTC).isoformat(),
                    "cpu_cores": 1,
                    "cpu_used_cores": 0.0,
                    "memory_mib": 1,
                    "memory_used_mib": 0,
                    "hardware": {"edac_corrected": ce},
                },
            )
        wait_for(
            f"{host} quarantined",
            lambda: any(
                h["name"] == host and h["state"] == "quarantined"
                for h in svc.get("/status")["hosts"]
            ),
            timeout_s=60,
        )
        with _page(sync_playwright, svc.url + "/") as page:
            page.fill("#token", TOKENS["vic"])
            page.click("#save-token")
            card = page.locator(f'#hosts .host[data-host="{host}"]')
            expect(card).to_have_attribute("data-state", "quarantined")
            signal = card.locator('.health-signal[data-signal="hardware_errors"]')
            expect(signal).to_contain_text("hardware errors since")
            expect(signal).to_contain_text("edac_corrected rose 1 -> 4")
