"""Host and VM spec parsing (pure)."""

from __future__ import annotations

import pytest

from balancer.errors import InputError
from balancer.simulation.spec import (
    PAPER_VM_TYPES,
    build_hosts,
    parse_duration_s,
    parse_host_spec,
    parse_vm_types,
)


def test_sizes_and_named_types() -> None:
    groups = parse_host_spec("2x(4c,16G),1x(2c,4096,80,160),2xG4,1xg5@gen2")
    hosts, types = build_hosts(groups)
    assert [h.name for h in hosts] == ["h000", "h001", "h002", "h003", "h004", "h005"]
    assert (hosts[0].cpu_cores, hosts[0].memory_mib) == (4, 16384)
    assert (types["h002"].idle_w, types["h002"].peak_w) == (80.0, 160.0)
    assert types["h003"].name == "G4" and hosts[3].memory_mib == 4096
    assert "avx2" in hosts[5].cpu_features and types["h005"].name == "G5"


@pytest.mark.parametrize(
    "spec",
    ["", "100", "0x(2c,4G)", "2x(2.5c,4G)", "2x(2c)", "2xG9", "2x(2c,4G)@gen9", "2x(2c,4G,9,1)"],
)
def test_bad_host_specs_name_the_problem(spec: str) -> None:
    with pytest.raises(InputError):
        parse_host_spec(spec)


def test_vm_types_and_durations() -> None:
    assert parse_vm_types("paper") == PAPER_VM_TYPES
    types = parse_vm_types("(0.5c,512),(2c,2G)")
    assert [(t.cpu_cores, t.memory_mib, t.vcpus) for t in types] == [(0.5, 512, 1), (2.0, 2048, 2)]
    assert parse_duration_s("5m") == 300.0
    assert parse_duration_s("1h") == 3600.0
    assert parse_duration_s("30") == 30.0
    with pytest.raises(InputError):
        parse_duration_s("soon")
    with pytest.raises(InputError):
        parse_vm_types("(1c)")
