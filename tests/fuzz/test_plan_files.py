"""Malformed plans through ``balancer execute --plan``: the format and version are validated
before anything runs; exit 2, one line naming the file, the item (``moves[3]``) and the field;
no traceback; never a hang. The plan written by ``balancer plan --json`` (version 1) and the
version-less format written before it both still run.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from balancer.snapshot_io import dump_snapshot
from tests.factories import make_host, make_snapshot, make_vm
from tests.fuzz.files import (
    Run,
    assert_clean,
    assert_refused,
    line_col_of,
    run_cli,
    run_subprocess,
    scratch,
)

pytestmark = pytest.mark.timeout(180)

FUZZ = settings(
    max_examples=30,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)

SNAPSHOT = make_snapshot(
    [make_host(f"h{i}", cpu_cores=8, memory_mib=16384) for i in range(1, 4)],
    [
        make_vm(f"vm{i}", "h1", vcpus=2, cpu_used_cores=2.0, memory_mib=1024, dirty_rate_mib_s=0.0)
        for i in range(1, 4)
    ],
)
METRICS = {
    "imbalance": 0.3,
    "cpu_stddev": 0.2,
    "memory_stddev": 0.1,
    "max_cpu_load": 0.5,
    "max_memory_load": 0.4,
}
BASE: dict[str, Any] = {
    "version": 1,
    "status": "moves",
    "moves": [
        {"vm": "vm1", "source": "h1", "target": "h2", "step": 0, "reason": "balance", "gain": 0.2},
        {"vm": "vm2", "source": "h1", "target": "h3", "step": 0, "reason": "maintenance",
         "gain": 0.0},
        {"vm": "vm3", "source": "h1", "target": "h2", "step": 1, "reason": "rule:apart",
         "gain": 0.1},
    ],
    "blocked": [{"vm": "vm9", "reason": "cpu_incompatible", "detail": "needs avx512"}],
    "before": METRICS,
    "after": METRICS,
    "solve_seconds": 0.25,
    "conflicts": [],
}  # fmt: skip
BASE_TEXT = json.dumps(BASE, indent=1)


def execute(text: str | bytes) -> Run:
    with scratch() as d:
        plan, snap = d / "plan.json", d / "snap.json"
        if isinstance(text, bytes):
            plan.write_bytes(text)
        else:
            plan.write_text(text)
        dump_snapshot(SNAPSHOT, snap)
        return run_cli(
            ["execute", "--plan", str(plan), "--snapshot", str(snap), "--db",
             f"sqlite:///{d / 'b.db'}", "--json", "--poll", "0.02", "--link-mib-s", "100000"]
        )  # fmt: skip


def with_raw(path: tuple[str | int, ...], raw: str) -> str:
    doc = json.loads(BASE_TEXT)
    target: Any = doc
    for p in path[:-1]:
        target = target[p]
    target[path[-1]] = "__RAW__"
    return json.dumps(doc, indent=1).replace('"__RAW__"', raw)


def without(path: tuple[str | int, ...]) -> str:
    doc = json.loads(BASE_TEXT)
    target: Any = doc
    for p in path[:-1]:
        target = target[p]
    del target[path[-1]]
    return json.dumps(doc)


MOVE_FIELDS = ["vm", "source", "target", "step", "reason", "gain"]
#: values each field refuses (raw JSON)
BAD = {
    "vm": ["1", "null", '""', "[]", '"   "'],
    "source": ["2", "true", '""', "{}"],
    "target": ['"h1"', "3.5", "[]", "null"],  # "h1": the same host as the source
    "step": ["-1", "1.5", '"0"', "true", "99999999999", "9" * 400],
    "reason": ['"nope"', "7", '"rule:"', "[]"],
    "gain": ['"x"', "NaN", "Infinity", "1e400", "1e7", "9" * 5000, "[]"],
    "status": ['"maybe"', "1", "null", "[]"],
    "version": ["2", "0", '"1"', "true", "1.0", "null", "9" * 500],
    "solve_seconds": ["-1", "NaN", '"fast"', "1e400"],
    "moves": ['"all"', "{}", "1", "null"],
    "blocked": ['"x"', "{}", "[1]", '[{"vm": "v", "reason": "bored"}]', '[{"vm": 1}]'],
    "before": ["[]", '"x"', '{"imbalance": 1}', '{"imbalance": "x"}', "1"],
    "conflicts": ['"a"', "[1]", '[""]', "{}"],
    "made_at": ["1", "[]", '"not a date"', '"2026-99-01T00:00:00Z"'],
}


# -- generated classes -------------------------------------------------------------------------
@FUZZ
@given(data=st.binary(max_size=300))
def test_random_bytes_never_crash(data: bytes) -> None:
    run = execute(data)
    assert_clean(run)
    assert run.code == 2, run


@FUZZ
@given(offset=st.integers(0, len(BASE_TEXT)), byte=st.integers(0x80, 0xFF))
def test_non_utf8_byte_is_located(offset: int, byte: int) -> None:
    data = BASE_TEXT.encode()
    bad = data[:offset] + bytes([byte]) + data[offset:]
    line, col = line_col_of(bad, offset)
    assert_refused(execute(bad), "plan.json", f"line {line}, column {col}", f"0x{byte:02x}")


@FUZZ
@given(offset=st.integers(0, len(BASE_TEXT)), code=st.sampled_from([0, 2, 7, 0x1B, 0x7F, 0x85 + 1]))
def test_control_character_is_located(offset: int, code: int) -> None:
    text = BASE_TEXT[:offset] + chr(code) + BASE_TEXT[offset:]
    line, col = line_col_of(text.encode("latin-1"), offset)
    assert_refused(execute(text), "plan.json", f"line {line}, column {col}", f"U+{code:04X}")


@FUZZ
@given(
    at=st.sampled_from([("moves", 0, "vm"), ("before",), ("blocked",), ("x",)]),
    depth=st.integers(64, 4000),
)
def test_deep_nesting_is_located(at: tuple[Any, ...], depth: int) -> None:
    raw = "[" * depth + "]" * depth
    assert_refused(execute(with_raw(at, raw)), "plan.json", "nested more than 64 levels")


@FUZZ
@given(index=st.integers(0, 2), field=st.sampled_from(MOVE_FIELDS), pick=st.integers(0, 10))
def test_bad_move_fields_name_the_move_and_field(index: int, field: str, pick: int) -> None:
    values = BAD[field]
    raw = values[pick % len(values)]
    if field == "target" and raw == '"h1"':
        raw = json.dumps(BASE["moves"][index]["source"])
    msg = assert_refused(execute(with_raw(("moves", index, field), raw)), "plan.json")
    assert f"moves[{index}]: {field}:" in msg, msg


@FUZZ
@given(
    field=st.sampled_from(
        ["status", "version", "solve_seconds", "moves", "blocked", "before", "conflicts", "made_at"]
    ),
    pick=st.integers(0, 10),
)
def test_bad_top_level_fields_name_the_field(field: str, pick: int) -> None:
    values = BAD[field]
    msg = assert_refused(execute(with_raw((field,), values[pick % len(values)])), "plan.json")
    assert field in msg, msg


@FUZZ
@given(
    path=st.sampled_from(
        [("moves",), ("moves", 0, "vm"), ("moves", 1, "source"), ("moves", 2, "target"),
         ("blocked", 0, "reason"), ("blocked", 0, "vm"), ("before", "imbalance"),
         ("after", "max_cpu_load")]
    )
)  # fmt: skip
def test_missing_required_keys_are_named(path: tuple[Any, ...]) -> None:
    msg = assert_refused(execute(without(path)), "plan.json", "is required")
    assert str(path[-1]) in msg, msg


@FUZZ
@given(
    where=st.sampled_from([(), ("moves", 0), ("moves", 2), ("blocked", 0), ("before",)]),
    key=st.text(st.characters(codec="ascii", categories=["L", "N"]), min_size=1, max_size=12),
)
def test_unknown_keys_are_refused(where: tuple[Any, ...], key: str) -> None:
    doc = json.loads(BASE_TEXT)
    target: Any = doc
    for p in where:
        target = target[p]
    if key in target or key == "made_at":
        key = key + "_extra"
    target[key] = 1
    msg = assert_refused(execute(json.dumps(doc)), "plan.json", "unknown key", key)
    if where[:1] == ("moves",):
        assert f"moves[{where[1]}]" in msg, msg


JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-(10**30), 10**30) | st.floats() | st.text(max_size=6),
    lambda kids: (
        st.lists(kids, max_size=3) | st.dictionaries(st.text(max_size=5), kids, max_size=3)
    ),
    max_leaves=8,
)


@settings(max_examples=25, deadline=None)
@given(
    path=st.sampled_from(
        [("status",), ("moves", 0, "vm"), ("moves", 1, "step"), ("moves", 2, "gain"),
         ("moves", 0, "reason"), ("blocked", 0, "detail"), ("before", "imbalance"),
         ("solve_seconds",), ("conflicts",), ("moves", 1), ("version",)]
    ),
    value=JSON,
)  # fmt: skip
def test_mutated_valid_plans_never_crash(path: tuple[Any, ...], value: Any) -> None:
    doc = json.loads(BASE_TEXT)
    target: Any = doc
    for p in path[:-1]:
        target = target[p]
    target[path[-1]] = value
    run = execute(json.dumps(doc))
    assert_clean(run)
    assert run.code in (0, 1, 2), run
    if run.code == 2:
        assert "plan.json" in run.message, run.stderr


# -- the concrete cases of issue 14 and the formats that must keep working --------------------
REGRESSIONS: list[tuple[str, str | bytes, tuple[str, ...]]] = [
    ("any-object", "{}", ("moves: is required",)),
    ("any-object-2", '{"hello": "world"}', ("unknown key", "hello")),
    ("array", "[]", ("plan: must be a JSON object",)),
    ("null", "null", ("plan: must be a JSON object",)),
    ("version-2", with_raw(("version",), "2"), ("version", "unsupported version 2")),
    ("moves-not-list", '{"moves": {"vm": "a"}}', ("moves: must be a list",)),
    ("move-not-object", '{"moves": ["vm1"]}', ("moves[0]: must be a JSON object",)),
    ("move-3-bad", with_raw(("moves", 2, "vm"), "42"), ("moves[2]: vm:",)),
    ("same-host", with_raw(("moves", 0, "target"), '"h1"'), ("moves[0]: target:", "same host")),
    ("gain-nan", with_raw(("moves", 0, "gain"), "NaN"), ("moves[0]: gain:", "finite")),
    ("huge-step", with_raw(("moves", 1, "step"), "9" * 5000), ("moves[1]: step:",)),
    ("bad-reason", with_raw(("moves", 1, "reason"), '"whim"'), ("moves[1]: reason:",)),
    ("bad-blocked", with_raw(("blocked", 0, "reason"), '"bored"'), ("blocked[0]: reason:",)),
    ("not-json", '{"moves": [,]}', ("line 1: not valid JSON",)),
    ("non-utf8", b'{"moves": [], "status": "mov\xffes"}', ("line 1, column 29", "0xff")),
    ("deep", "[" * 50000, ("nested more than 64",)),
]


@pytest.mark.parametrize(("text", "needles"), [(t, n) for _, t, n in REGRESSIONS],
                         ids=[i for i, _, _ in REGRESSIONS])  # fmt: skip
def test_issue_regressions(text: str | bytes, needles: tuple[str, ...]) -> None:
    assert_refused(execute(text), "plan.json", *needles)


def test_the_version_less_format_still_runs() -> None:
    doc = {"status": "moves", "moves": [{"vm": "vm1", "source": "h1", "target": "h2"}]}
    run = execute(json.dumps(doc))
    assert run.code == 0, run
    assert [(d["vm"], d["outcome"]) for d in json.loads(run.stdout)] == [("vm1", "succeeded")]


def test_a_plan_written_by_plan_json_runs(tmp_path: Path) -> None:
    snap, pol = tmp_path / "snap.json", tmp_path / "p.yaml"
    dump_snapshot(SNAPSHOT, snap)
    pol.write_text("automation: manual\n")
    res = run_cli(["plan", "--snapshot", str(snap), "--policy", str(pol), "--json"])
    assert res.code == 0, res
    doc = json.loads(res.stdout)
    assert doc["version"] == 1 and doc["moves"], doc
    run = execute(res.stdout)
    assert run.code == 0, run
    assert {d["outcome"] for d in json.loads(run.stdout)} == {"succeeded"}


def test_base_plan_runs() -> None:
    run = execute(BASE_TEXT)
    assert run.code in (0, 1), run
    assert_clean(run)


# -- real processes: a FIFO plan never hangs ---------------------------------------------------
def test_fifo_plan_is_refused_without_hanging(tmp_path: Path) -> None:
    fifo, snap = tmp_path / "plan.json", tmp_path / "snap.json"
    os.mkfifo(fifo)
    dump_snapshot(SNAPSHOT, snap)
    run = run_subprocess(
        ["execute", "--plan", str(fifo), "--snapshot", str(snap), "--db",
         f"sqlite:///{tmp_path / 'b.db'}"]
    )  # fmt: skip
    assert_refused(run, "plan.json", "FIFO", located=False)
    assert not (tmp_path / "b.db").exists()  # refused before the store is opened
