from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from balancer.errors import SnapshotError
from balancer.model import HostState
from balancer.sim.generator import GeneratorSpec, generate
from balancer.snapshot_io import (
    dump_snapshot,
    load_snapshot,
    snapshot_from_dict,
    snapshot_to_dict,
)

EXAMPLE: dict[str, Any] = {
    "version": 1,
    "hosts": [
        {
            "name": "h01",
            "cpu_cores": 32,
            "memory_mib": 262144,
            "state": "active",
            "cpu_features": ["sse4_2", "avx2"],
            "labels": {"rack": "r1"},
        },
        {"name": "h02", "cpu_cores": 16, "memory_mib": 131072},
    ],
    "vms": [
        {
            "name": "vm001",
            "host": "h01",
            "vcpus": 4,
            "memory_mib": 8192,
            "cpu_used_cores": 1.5,
            "memory_used_mib": 6000,
            "cpu_features": ["sse4_2"],
            "labels": {"app": "web"},
            "dirty_rate_mib_s": 12.0,
        },
        {"name": "vm002", "host": "h02", "vcpus": 1, "memory_mib": 1024, "cpu_used_cores": 0.2},
    ],
}


def test_example_from_the_spec_reads_with_defaults() -> None:
    snap = snapshot_from_dict(EXAMPLE)
    assert snap.host("h02").state is HostState.ACTIVE
    assert snap.host("h02").cpu_features == frozenset()
    vm2 = snap.vm("vm002")
    assert vm2.memory_used == 1024  # defaults to memory_mib
    assert vm2.dirty_rate_mib_s is None
    assert snap.vm("vm001").cpu_features == {"sse4_2"}


def test_round_trip_through_a_file(tmp_path: Path) -> None:
    snap = generate(GeneratorSpec(hosts=6, vms=80, seed=3))
    path = tmp_path / "s.json"
    dump_snapshot(snap, path)
    again = load_snapshot(path)
    assert again == snap
    assert again.digest() == snap.digest()
    assert snapshot_to_dict(again) == json.loads(path.read_text())


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 10_000), hosts=st.integers(1, 12), vms=st.integers(0, 60))
def test_round_trip_property(seed: int, hosts: int, vms: int) -> None:
    snap = generate(GeneratorSpec(hosts=hosts, vms=vms, seed=seed))
    assert snapshot_from_dict(snapshot_to_dict(snap)) == snap


def _broken(path: list[Any], value: Any, *, delete: bool = False) -> dict[str, Any]:
    doc = copy.deepcopy(EXAMPLE)
    target: Any = doc
    for p in path[:-1]:
        target = target[p]
    if delete:
        del target[path[-1]]
    else:
        target[path[-1]] = value
    return doc


@pytest.mark.parametrize(
    ("doc", "needles"),
    [
        (_broken(["vms", 0, "colour"], "red"), ["vms[0] 'vm001'", "colour", "unknown key"]),
        (_broken(["hosts", 1, "ram"], 1), ["hosts[1] 'h02'", "ram", "unknown key"]),
        (_broken(["extra"], 1), ["snapshot", "extra", "unknown key"]),
        (_broken(["vms", 1, "host"], "h99"), ["vms[1] 'vm002'", "host", "unknown host 'h99'"]),
        (_broken(["vms", 1, "name"], "vm001"), ["vms[1] 'vm001'", "name", "duplicate"]),
        (_broken(["hosts", 1, "name"], "h01"), ["hosts[1] 'h01'", "name", "duplicate"]),
        (
            _broken(["vms", 0, "memory_mib"], 0),
            ["vms[0] 'vm001'", "memory_mib", "greater than zero"],
        ),
        (_broken(["vms", 0, "vcpus"], -2), ["vms[0] 'vm001'", "vcpus", "greater than zero"]),
        (
            _broken(["hosts", 0, "cpu_cores"], 0),
            ["hosts[0] 'h01'", "cpu_cores", "greater than zero"],
        ),
        (_broken(["hosts", 0, "memory_mib"], -1), ["hosts[0] 'h01'", "memory_mib"]),
        (
            _broken(["vms", 0, "cpu_used_cores"], -0.5),
            ["vms[0] 'vm001'", "cpu_used_cores", "negative"],
        ),
        (
            _broken(["vms", 0, "memory_used_mib"], 9000),
            ["vms[0] 'vm001'", "memory_used_mib", "above memory_mib 8192"],
        ),
        (_broken(["version"], 2), ["version", "unsupported version 2"]),
        (_broken(["version"], None, delete=True), ["version", "required"]),
        (_broken(["vms", 0, "vcpus"], None, delete=True), ["vms[0] 'vm001'", "vcpus", "required"]),
        (_broken(["hosts", 0, "state"], "broken"), ["hosts[0] 'h01'", "state", "unknown state"]),
        (_broken(["vms", 0, "labels"], {"a": 1}), ["vms[0] 'vm001'", "labels"]),
        (_broken(["vms", 0, "cpu_features"], "avx"), ["vms[0] 'vm001'", "cpu_features"]),
    ],
)
def test_rejections_name_item_and_field(doc: dict[str, Any], needles: list[str]) -> None:
    with pytest.raises(SnapshotError) as info:
        snapshot_from_dict(doc, path="s.json")
    text = str(info.value)
    assert text.startswith("s.json: ")
    for n in needles:
        assert n in text, (n, text)


def test_invalid_json_names_file_and_line(tmp_path: Path) -> None:
    p = tmp_path / "bad.json"
    p.write_text('{"version": 1,\n "hosts": [,]}')
    with pytest.raises(SnapshotError, match=r"bad.json: line 2: not valid JSON"):
        load_snapshot(p)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(SnapshotError, match="no such file"):
        load_snapshot(tmp_path / "nope.json")
