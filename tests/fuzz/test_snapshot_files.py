"""Malformed snapshots through ``balancer plan --snapshot`` and ``balancer policy check
--snapshot``: exit 2, one line naming the file, the item (``vms[3] 'vm004'``) or the line, and
the field; no traceback; never a hang. Impossible states are refused; a VM on a host that lacks
its CPU features is accepted (it is reality).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from balancer.snapshot_io import snapshot_to_dict
from tests.factories import make_host, make_snapshot, make_vm
from tests.fuzz.files import (
    assert_clean,
    assert_refused,
    line_col_of,
    run_cli,
    run_subprocess,
    scratch,
)

pytestmark = pytest.mark.timeout(120)

FUZZ = settings(
    max_examples=30,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)

BASE: dict[str, Any] = snapshot_to_dict(
    make_snapshot(
        [
            make_host("h1", cpu_features={"sse4_2", "avx2"}),
            make_host("h2", cpu_features={"sse4_2"}),
            make_host("h3"),
        ],
        [
            make_vm("vm1", "h1", vcpus=4, cpu_used_cores=2.5, cpu_features={"avx2"}),
            make_vm("vm2", "h1", vcpus=2, memory_mib=2048),
            make_vm("vm3", "h2", vcpus=8, cpu_used_cores=6.0, memory_used_mib=3000),
            make_vm("vm4", "h3", labels={"app": "web"}),
        ],
    )
)
BASE_TEXT = json.dumps(BASE, indent=1)
POLICY = "automation: manual\n"

HOST_NUMBERS = ["cpu_cores", "memory_mib", "overhead_cpu_cores", "overhead_memory_mib"]
VM_NUMBERS = ["vcpus", "memory_mib", "cpu_used_cores", "memory_used_mib", "dirty_rate_mib_s"]


def runs(text: str | bytes, *, plan: bool = True) -> list[Any]:
    """``policy check --snapshot`` (and ``plan --snapshot`` when ``plan``) on the text."""
    with scratch() as d:
        snap, pol = d / "s.json", d / "p.yaml"
        if isinstance(text, bytes):
            snap.write_bytes(text)
        else:
            snap.write_text(text)
        pol.write_text(POLICY)
        out = [run_cli(["policy", "check", str(pol), "--snapshot", str(snap)])]
        if plan:
            out.append(run_cli(["plan", "--snapshot", str(snap), "--policy", str(pol)]))
        return out


def with_raw(kind: str, index: int, field: str, raw: str) -> str:
    """BASE with ``kind[index].field`` set to the raw JSON text ``raw``."""
    doc = json.loads(BASE_TEXT)
    doc[kind][index][field] = "__RAW__"
    return json.dumps(doc, indent=1).replace('"__RAW__"', raw)


def item(kind: str, index: int) -> str:
    return f"{kind}[{index}] {BASE[kind][index]['name']!r}"


FIELD = st.one_of(
    st.tuples(st.just("hosts"), st.integers(0, 2), st.sampled_from(HOST_NUMBERS)),
    st.tuples(st.just("vms"), st.integers(0, 3), st.sampled_from(VM_NUMBERS)),
)

HUGE = st.one_of(
    st.integers(21, 6000).map(lambda n: "9" * n),
    st.integers(21, 6000).map(lambda n: "-" + "7" * n),
    st.integers(309, 6000).map(lambda e: f"1e{e}"),
    st.sampled_from(["1e25", "1e300", "NaN", "Infinity", "-Infinity", "1.7976931348623157e309"]),
)


# -- generated classes -------------------------------------------------------------------------
@FUZZ
@given(data=st.binary(max_size=400))
def test_random_bytes_never_crash(data: bytes) -> None:
    for run in runs(data, plan=False):
        assert_clean(run)
        assert run.code == 2, run  # random bytes are never a snapshot


@FUZZ
@given(offset=st.integers(0, len(BASE_TEXT)), byte=st.integers(0x80, 0xFF))
def test_non_utf8_byte_is_located(offset: int, byte: int) -> None:
    data = BASE_TEXT.encode()
    bad = data[:offset] + bytes([byte]) + data[offset:]
    line, col = line_col_of(bad, offset)
    for run in runs(bad):
        assert_refused(run, "s.json", f"line {line}, column {col}", f"0x{byte:02x}")


@FUZZ
@given(offset=st.integers(0, len(BASE_TEXT)), code=st.sampled_from([0, 1, 7, 8, 0x1B, 0x7F, 0x9B]))
def test_control_character_is_located(offset: int, code: int) -> None:
    text = BASE_TEXT[:offset] + chr(code) + BASE_TEXT[offset:]
    line, col = line_col_of(text.encode("latin-1"), offset)
    for run in runs(text):
        assert_refused(run, "s.json", f"line {line}, column {col}", f"U+{code:04X}")


@FUZZ
@given(field=FIELD, depth=st.integers(62, 5000), opener=st.sampled_from(["[", '{"a":']))
def test_deep_nesting_is_located(field: tuple[str, int, str], depth: int, opener: str) -> None:
    kind, i, key = field
    closer = "]" if opener == "[" else "}"
    raw = opener * depth + ("1" if opener != "[" else "") + closer * depth
    for run in runs(with_raw(kind, i, key, raw)):
        assert_refused(run, "s.json", "nested more than 64 levels")


@FUZZ
@given(field=FIELD, raw=HUGE)
def test_huge_and_non_finite_numbers_name_item_and_field(
    field: tuple[str, int, str], raw: str
) -> None:
    kind, i, key = field
    for run in runs(with_raw(kind, i, key, raw)):
        assert_refused(run, "s.json", item(kind, i), key)


BAD_VALUES = {
    "cpu_cores": ["0", "-4", "70000", "2.5", "true", '"8"'],
    "memory_mib": ["0", "-1", "2000000000000", "1.5", "null", "[]"],
    "overhead_cpu_cores": ["-0.5", "1000000", '"1"', "{}"],
    "overhead_memory_mib": ["-1", "99999999999", "false"],
    "vcpus": ["0", "-2", "100000", "1.0", '"4"'],
    "cpu_used_cores": ["-0.1", "1000000", '"x"', "[1]"],
    "memory_used_mib": ["-1", "1.5", "99999999", '"1"'],
    "dirty_rate_mib_s": ["-3", "1e12", '"fast"', "{}"],
}


@FUZZ
@given(field=FIELD, pick=st.integers(0, 10))
def test_wrong_types_negative_and_out_of_range_name_item_and_field(
    field: tuple[str, int, str], pick: int
) -> None:
    kind, i, key = field
    values = BAD_VALUES[key]
    for run in runs(with_raw(kind, i, key, values[pick % len(values)])):
        assert_refused(run, "s.json", item(kind, i))


@FUZZ
@given(vm=st.integers(0, 3), factor=st.floats(1.01, 1e6))
def test_a_vm_using_more_cores_than_its_vcpus_is_refused(vm: int, factor: float) -> None:
    vcpus = BASE["vms"][vm]["vcpus"]
    used = min(round(vcpus * factor, 3), 60000.0)
    if used <= vcpus:
        used = vcpus + 0.5
    for run in runs(with_raw("vms", vm, "cpu_used_cores", repr(used))):
        assert_refused(run, "s.json", item("vms", vm), "cpu_used_cores", "vCPUs")


@FUZZ
@given(vm=st.integers(0, 3), extra=st.integers(1, 10**9))
def test_a_vm_larger_than_its_host_is_refused(vm: int, extra: int) -> None:
    host = next(h for h in BASE["hosts"] if h["name"] == BASE["vms"][vm]["host"])
    doc = json.loads(BASE_TEXT)
    doc["vms"][vm]["memory_mib"] = host["memory_mib"] + extra
    doc["vms"][vm].pop("memory_used_mib", None)
    for run in runs(json.dumps(doc)):
        assert_refused(run, "s.json", item("vms", vm), "memory_mib", "larger than its host")


JSON = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(10**30), 10**30)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=6),
    lambda kids: (
        st.lists(kids, max_size=3) | st.dictionaries(st.text(max_size=5), kids, max_size=3)
    ),
    max_leaves=8,
)


@settings(max_examples=60, deadline=None)
@given(
    where=st.sampled_from(["top", "hosts", "vms"]),
    index=st.integers(0, 3),
    key=st.sampled_from(
        [
            "name",
            "host",
            "state",
            "cpu_features",
            "labels",
            "version",
            "hosts",
            "vms",
            "x",
            *HOST_NUMBERS,
            *VM_NUMBERS,
        ]
    ),
    value=JSON,
)
def test_mutated_valid_snapshots_never_crash(where: str, index: int, key: str, value: Any) -> None:
    doc = json.loads(BASE_TEXT)
    target = doc if where == "top" else doc[where][index % len(doc[where])]
    target[key] = value
    (run,) = runs(json.dumps(doc), plan=False)
    assert_clean(run)
    if run.code == 2 and "error(s) in" not in run.message:  # a refused snapshot, not a lint error
        assert "s.json" in run.message, run.stderr


# -- the concrete cases of issue 14 ------------------------------------------------------------
def _raw(kind: str, i: int, key: str, raw: str) -> str:
    return with_raw(kind, i, key, raw)


REGRESSIONS: list[tuple[str, str | bytes, tuple[str, ...]]] = [
    ("memory-1e25", _raw("vms", 0, "memory_mib", "1e25"), ("vms[0] 'vm1'", "memory_mib")),
    (
        "cpu-used-1e300",
        _raw("vms", 0, "cpu_used_cores", "1e300"),
        ("vms[0] 'vm1'", "cpu_used_cores", "out of range"),
    ),
    (
        "400-cores-on-4-vcpus",
        _raw("vms", 0, "cpu_used_cores", "400"),
        ("vms[0] 'vm1'", "cpu_used_cores", "4 vCPUs"),
    ),
    (
        "vm-larger-than-host",
        _raw("vms", 1, "memory_mib", "99999999"),
        ("vms[1] 'vm2'", "memory_mib"),
    ),
    ("nan", _raw("vms", 2, "cpu_used_cores", "NaN"), ("vms[2] 'vm3'", "cpu_used_cores", "finite")),
    ("infinity", _raw("hosts", 0, "overhead_cpu_cores", "Infinity"), ("hosts[0] 'h1'",)),
    ("negative", _raw("vms", 3, "dirty_rate_mib_s", "-1"), ("vms[3] 'vm4'", "negative")),
    ("5000-digit", _raw("hosts", 1, "memory_mib", "9" * 5000), ("hosts[1] 'h2'", "5000-digit")),
    (
        "non-utf8",
        BASE_TEXT.encode().replace(b'"h1"', b'"h\xe91"', 1),
        ("line 5, column 14", "0xe9"),
    ),
    ("binary", bytes(range(256)), ("line 1, column 1", "U+0000")),
    ("deep", "[" * 100000, ("line 1", "nested more than 64")),
    ("not-json", '{"version": 1,\n "hosts": [,]}', ("line 2: not valid JSON",)),
    ("bom", "\ufeff" + _raw("vms", 0, "vcpus", "0"), ("vms[0] 'vm1'", "vcpus")),
    ("wrong-top", "[1, 2]", ("snapshot", "JSON object")),
]


@pytest.mark.parametrize(("text", "needles"), [(t, n) for _, t, n in REGRESSIONS],
                         ids=[i for i, _, _ in REGRESSIONS])  # fmt: skip
def test_issue_regressions(text: str | bytes, needles: tuple[str, ...]) -> None:
    for run in runs(text):
        assert_refused(run, "s.json", *needles)


def test_a_vm_on_a_host_without_its_cpu_features_is_accepted() -> None:
    doc = json.loads(BASE_TEXT)
    doc["vms"][0]["host"] = "h3"  # vm1 needs avx2; h3 has no features
    for run in runs(json.dumps(doc)):
        assert run.code == 0, run


def test_the_base_snapshot_is_valid() -> None:
    for run in runs(BASE_TEXT):
        assert run.code == 0, run


# -- real processes: FIFOs, devices, directories never hang -----------------------------------
def test_fifo_device_and_directory_snapshots_are_refused_without_hanging(tmp_path: Path) -> None:
    pol = tmp_path / "p.yaml"
    pol.write_text(POLICY)
    fifo = tmp_path / "s.json"
    os.mkfifo(fifo)
    run = run_subprocess(["plan", "--snapshot", str(fifo), "--policy", str(pol)])
    assert_refused(run, "s.json", "FIFO", located=False)
    run = run_cli(["policy", "check", str(pol), "--snapshot", str(fifo)])  # pytest-timeout
    assert_refused(run, "s.json", "FIFO", located=False)
    run = run_cli(["policy", "check", str(pol), "--snapshot", "/dev/zero"])
    assert_refused(run, "/dev/zero", "character device", located=False)
