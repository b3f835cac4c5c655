"""Reality the snapshot loader accepts but the rules would not create: a VM on a host that
lacks its CPU features is flagged in ``blocked`` (plan and assist), not crashed on; and a
policy built with non-finite balance weights never gives an ``imbalance`` of NaN."""

from __future__ import annotations

import json
import math
from dataclasses import replace
from pathlib import Path

import pytest
from click.testing import CliRunner

from balancer.cli import cli
from balancer.optimizer import assist
from balancer.plan import BlockedReason
from balancer.snapshot_io import dump_snapshot, load_snapshot
from policies.model import Resources
from tests.factories import make_host, make_snapshot, make_vm
from tests.optimizer.helpers import plan_ok, policy


def _reality():  # type: ignore[no-untyped-def]
    hosts = [make_host("old", cpu_features={"sse4_2"}), make_host("new")]
    vms = [make_vm("x", "old", cpu_features={"avx2", "avx"}), make_vm("y", "old")]
    return make_snapshot(hosts, vms)


def test_vm_on_a_host_lacking_its_cpu_features_is_flagged_in_blocked() -> None:
    plan, _ = plan_ok(_reality(), policy(1))
    flagged = {b.vm: b for b in plan.blocked}
    assert set(flagged) == {"x"}
    assert flagged["x"].reason is BlockedReason.CPU_FEATURES_MISSING
    assert flagged["x"].detail == "runs on old, which lacks avx, avx2"


def test_assist_flags_it_too() -> None:
    result = assist(_reality(), policy(1), "x")
    assert result.blocked is not None
    assert result.blocked.reason is BlockedReason.CPU_FEATURES_MISSING
    assert [c.host for c in result.candidates] == ["new"]
    assert assist(_reality(), policy(1), "y").blocked is None


def test_cli_plan_and_assist_show_the_flag(tmp_path: Path) -> None:
    snap = tmp_path / "snap.json"
    dump_snapshot(_reality(), snap)
    assert load_snapshot(snap).vm("x").host == "old"  # the loader accepts reality
    pol = tmp_path / "p.yaml"
    pol.write_text("threshold: 1\n")
    res = CliRunner().invoke(cli, ["plan", "--snapshot", str(snap), "--policy", str(pol), "--json"])
    assert res.exit_code == 0, res.output
    blocked = json.loads(res.stdout)["blocked"]
    assert blocked == [
        {
            "vm": "x",
            "reason": "cpu_features_missing",
            "detail": "runs on old, which lacks avx, avx2",
        }
    ]
    res = CliRunner().invoke(cli, ["assist", "x", "--snapshot", str(snap), "--policy", str(pol)])
    assert res.exit_code == 0, res.output
    assert "blocked: cpu_features_missing: runs on old, which lacks avx, avx2" in res.stdout


@pytest.mark.parametrize(
    ("cpu", "memory"),
    [(math.inf, 1.0), (math.inf, math.inf), (math.nan, 1.0), (1e308, 1e308), (-math.inf, 1.0)],
)
def test_non_finite_weights_never_give_nan_and_the_hot_host_is_relieved(
    cpu: float, memory: float
) -> None:
    hosts = [make_host("hot", cpu_cores=8), make_host("cold1"), make_host("cold2")]
    vms = [make_vm(f"v{i}", "hot", cpu_used_cores=3.0, memory_mib=8192) for i in range(4)]
    pol = replace(policy(5), balance=Resources(cpu=cpu, memory=memory))
    plan, end = plan_ok(make_snapshot(hosts, vms), pol)
    for m in (plan.before, plan.after):
        assert all(math.isfinite(x) for x in (m.imbalance, m.cpu_stddev, m.memory_stddev))
    assert plan.after.imbalance < plan.before.imbalance
    assert len(end.vms_on("hot")) < 4
