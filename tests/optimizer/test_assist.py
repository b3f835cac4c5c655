"""The migration assistant ranks targets and says why each other host is ruled out."""

from __future__ import annotations

import pytest

from balancer.errors import InputError
from balancer.model import HostState
from balancer.optimizer import assist
from policies.model import RuleMode
from tests.factories import make_host, make_snapshot, make_vm
from tests.optimizer.helpers import anti, policy, vm_host


def test_ranks_and_explains() -> None:
    hosts = [
        make_host("h1"),
        make_host("h2"),
        make_host("h3"),
        make_host("h4", state=HostState.MAINTENANCE),
        make_host("h5", cpu_features={"sse4_2"}),
        make_host("h6"),
        make_host("h7", memory_mib=4096),
        make_host("h8"),
    ]
    vms = [
        make_vm("x", "h1", cpu_features={"avx2"}, cpu_used_cores=4.0),
        make_vm("busy", "h2", cpu_used_cores=20.0),
        make_vm("peer", "h8"),
    ]
    pol = policy(
        3, rules=(vm_host("not-h6", ("x",), ("h6",), RuleMode.MUST_NOT), anti("xp", "x", "peer"))
    )
    out = assist(make_snapshot(hosts, vms), pol, "x")
    assert [c.host for c in out.candidates] == ["h3", "h2"]
    assert out.candidates[0].imbalance <= out.candidates[1].imbalance
    reasons = {r.host: r.label for r in out.ruled_out}
    assert reasons == {
        "h1": "current_host",
        "h4": "host_state",
        "h5": "cpu_incompatible",
        "h6": "rule:not-h6",
        "h7": "capacity",
        "h8": "rule:xp",
    }


def test_unknown_vm() -> None:
    with pytest.raises(InputError):
        assist(make_snapshot([make_host("h1")], []), policy(3), "nope")
