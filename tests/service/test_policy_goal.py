"""``goal: consolidate`` is refused by the service, which does not carry it out yet (only the
simulation packs hosts): at start (exit 2 through ``balancer serve``) and on a reload (the last
good policy stays, ``last_error`` says why)."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from balancer.cli import cli
from balancer.errors import PolicyError
from balancer.service.runtime import Runtime
from balancer.settings import load_settings
from tests.service.running import settled, write_settings

pytestmark = pytest.mark.timeout(120)


def test_serve_refuses_a_consolidating_policy_at_start(tmp_path: Path) -> None:
    cfg = write_settings(tmp_path, policy={"goal": "consolidate"})
    r = CliRunner().invoke(cli, ["serve", "--config", str(cfg)])
    assert r.exit_code == 2, r.output
    assert "goal: consolidate is not carried out by the service yet" in r.output
    assert "Traceback" not in r.output


def test_a_reload_to_consolidate_is_refused_and_the_last_good_policy_stays(tmp_path: Path) -> None:
    cfg = write_settings(tmp_path, policy={"goal": "balance"})
    rt = Runtime.build(load_settings(cfg))
    try:
        rt.start()
        svc = rt.service
        good = svc.policy
        assert good is not None
        policy_file = next((tmp_path / "policies").glob("*.yaml"))
        text = policy_file.read_text().replace("goal: balance", "goal: consolidate")
        assert "goal: consolidate" in text
        policy_file.write_text(text)
        settled(policy_file)
        assert svc.reload_policy() is False
        assert svc.policy is good
        view = svc.policy_view()
        assert view.last_error and "goal: consolidate" in view.last_error
        with pytest.raises(PolicyError):  # the initial load refuses it outright
            Runtime.build(load_settings(cfg)).service.reload_policy(initial=True)
    finally:
        rt.begin_stop("test")
        rt.drain()
        rt.close()
