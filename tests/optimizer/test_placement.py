"""Initial placement (balancer.optimizer.placement): a new VM is ranked under the same rules,
headroom and CPU checks as any move."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from balancer.errors import InputError
from balancer.model import Snapshot
from balancer.optimizer.placement import NewVM, place
from policies.loader import load_policy
from policies.model import Policy
from tests.factories import make_host, make_snapshot, make_vm


def _policy(tmp_path: Path, rules: list[dict[str, object]]) -> Policy:
    f = tmp_path / "p.yaml"
    f.write_text(yaml.safe_dump({"threshold": 3, "exclude": [], "rules": rules}))
    return load_policy([f])


def _cluster() -> Snapshot:
    hosts = [
        make_host("h1", cpu_cores=8, labels={"rack": "r1"}),
        make_host("h2", cpu_cores=8, labels={"rack": "r2"}),
        make_host("h3", cpu_cores=8, labels={"rack": "r2"}, cpu_features=frozenset()),
    ]
    vms = [
        make_vm("db1", "h2", vcpus=2, cpu_used_cores=1.0),
        make_vm("busy", "h1", vcpus=8, cpu_used_cores=6.5),
    ]
    return make_snapshot(hosts, vms)


def test_the_coolest_allowed_host_comes_first_and_each_other_says_why(tmp_path: Path) -> None:
    snap = _cluster()
    pol = _policy(
        tmp_path,
        [
            {"name": "apart", "kind": "anti_affinity", "vms": ["db1", "db2"]},
            {
                "name": "no-r1",
                "kind": "vm_host",
                "mode": "must_not",
                "vms": {"labels": {"tier": "db"}},
                "hosts": {"labels": {"rack": "r1"}},
            },
        ],
    )
    new = NewVM(name="db2", vcpus=2, memory_mib=2048, labels={"tier": "db"})
    got = place(snap, pol, new)
    assert [c.host for c in got.candidates] == ["h3"]
    out = {r.host: r.label for r in got.ruled_out}
    assert out == {"h1": "rule:no-r1", "h2": "rule:apart"}
    assert got.candidates[0].cpu_load == pytest.approx(2 / 8)  # planned with all its vCPUs


def test_cpu_features_and_headroom_rule_hosts_out(tmp_path: Path) -> None:
    snap = _cluster()
    pol = _policy(tmp_path, [])
    needs = NewVM(name="n", vcpus=2, memory_mib=1024, cpu_features=frozenset({"avx2"}))
    got = place(snap, pol, needs)
    out = {r.host: r.label for r in got.ruled_out}
    assert out.get("h3") == "cpu_incompatible" and "h3" not in {c.host for c in got.candidates}
    big = NewVM(name="m", vcpus=4, memory_mib=1024)  # 6.5 + 4 cores on h1: over its headroom
    got = place(snap, pol, big)
    assert {r.host: r.label for r in got.ruled_out} == {"h1": "capacity"}
    light = NewVM(name="m", vcpus=4, memory_mib=1024, cpu_demand_cores=0.5)
    assert "h1" in {c.host for c in place(snap, pol, light).candidates}


def test_a_name_in_use_or_a_bad_size_is_refused(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="exists already"):
        place(_cluster(), _policy(tmp_path, []), NewVM(name="db1", vcpus=1, memory_mib=1))
    with pytest.raises(InputError, match=r"^cpu_demand_cores: 3 cores, outside 0\.\.2"):
        NewVM(name="x", vcpus=2, memory_mib=1, cpu_demand_cores=3)
    for bad, field in (
        ({"name": ""}, "vm"),
        ({"vcpus": 0}, "vcpus"),
        ({"memory_mib": 0}, "memory_mib"),
    ):
        with pytest.raises(InputError, match=f"^{field}: "):
            NewVM(**{"name": "x", "vcpus": 2, "memory_mib": 1, **bad})  # type: ignore[arg-type]
