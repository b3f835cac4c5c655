"""Malformed policy files through ``balancer policy check`` (and ``plan --policy``): exit 2, one
line naming the file, the line and the field, no traceback, never a hang.

Generated classes (hypothesis, bounded examples) and the concrete cases of issue 14 (the
``REGRESSIONS`` corpus). Counts are in docs/input-hardening.md.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

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
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)

VALID = """\
automation: full
threshold: 3
goal: balance
balance: {cpu: 1.0, memory: 1.0}
headroom: {cpu: 0.10, memory: 0.05}
limits: {moves_per_cycle: 32, concurrent_per_host: 2, concurrent_total: 8}
cooldown_minutes: 60
migration: {bandwidth_mib_s: 0, max_downtime_ms: 300, stall_timeout_s: 60, time_limit_s: 1800}
rules:
  - {name: db-apart, kind: anti_affinity, vms: [db-1, db-2, db-3]}
  - {name: app-together, kind: affinity, vms: [app-1, app-2]}
  - name: oracle-hosts
    kind: vm_host
    mode: must
    vms: {labels: {app: oracle}}
    hosts: [h01, h02]
exclude: [legacy-1, {labels: {pinned: "true"}}]
"""

#: every number of the schema: (path, a valid value)
NUMERIC = [
    ("threshold", 3),
    ("cooldown_minutes", 60),
    ("balance.cpu", 1.0),
    ("balance.memory", 1.0),
    ("headroom.cpu", 0.1),
    ("headroom.memory", 0.05),
    ("limits.moves_per_cycle", 32),
    ("limits.concurrent_per_host", 2),
    ("limits.concurrent_total", 8),
    ("migration.bandwidth_mib_s", 0),
    ("migration.max_downtime_ms", 300),
    ("migration.stall_timeout_s", 60.0),
    ("migration.time_limit_s", 1800.0),
]


def check(text: str | bytes, name: str = "p.yaml") -> tuple[Any, Path]:
    """Write ``text`` to a fresh file and run ``policy check`` on it."""
    with scratch() as d:
        p = d / name
        if isinstance(text, bytes):
            p.write_bytes(text)
        else:
            p.write_text(text)
        return run_cli(["policy", "check", str(p)]), p


#: settings whose other keys are required
SIBLINGS = {"balance": {"cpu": "1.0", "memory": "1.0"}}


def doc_with(path: str, value_yaml: str) -> str:
    """A policy setting ``path`` (``limits.concurrent_total``) to ``value_yaml`` on its last
    line."""
    top, _, sub = path.partition(".")
    if not sub:
        return f"automation: manual\n{top}: {value_yaml}\n"
    others = "".join(f"  {k}: {v}\n" for k, v in SIBLINGS.get(top, {}).items() if k != sub)
    return f"automation: manual\n{top}:\n{others}  {sub}: {value_yaml}\n"


# -- generated classes -------------------------------------------------------------------------
@FUZZ
@given(data=st.binary(max_size=600))
def test_random_bytes_never_crash(data: bytes) -> None:
    run, _ = check(data)
    assert_clean(run)
    assert run.code in (0, 2), run


@FUZZ
@given(offset=st.integers(0, len(VALID)), byte=st.integers(0x80, 0xFF))
def test_non_utf8_byte_is_located(offset: int, byte: int) -> None:
    data = VALID.encode()
    bad = data[:offset] + bytes([byte]) + data[offset:]
    line, col = line_col_of(bad, offset)
    run, _ = check(bad)
    assert_refused(run, "p.yaml", f"line {line}, column {col}", f"byte 0x{byte:02x}", "UTF-8")


CONTROL = [c for c in range(0x20) if c not in (0x09, 0x0A, 0x0D)] + [0x7F, *range(0x80, 0xA0)]


@FUZZ
@given(offset=st.integers(0, len(VALID)), code=st.sampled_from(CONTROL))
def test_control_character_is_located(offset: int, code: int) -> None:
    if code == 0x85:  # NEL is a line break in YAML, not a control character
        code = 0x07
    text = VALID[:offset] + chr(code) + VALID[offset:]
    line, col = line_col_of(text.encode("ascii", "replace"), offset)
    run, _ = check(text)
    assert_refused(run, "p.yaml", f"line {line}, column {col}", f"U+{code:04X}")


@settings(FUZZ, max_examples=25)
@given(
    depth=st.integers(65, 2000),
    style=st.sampled_from(["flow-list", "flow-map", "block-map", "mixed"]),
    key=st.sampled_from(["rules", "balance", "x", "exclude"]),
)
def test_deep_nesting_is_located(depth: int, style: str, key: str) -> None:
    if style == "flow-list":
        value = "[" * depth + "]" * depth
    elif style == "flow-map":
        value = "{a: " * depth + "1" + "}" * depth
    elif style == "mixed":
        value = "[{a: " * (depth // 2) + "1" + "}]" * (depth // 2)
    else:
        depth = min(depth, 400)
        value = "".join("\n" + "  " * (i + 1) + "a:" for i in range(depth)) + " 1"
    run, _ = check(f"automation: manual\n{key}: {value}\n")
    msg = assert_refused(run, "p.yaml:", f"{key}", "nested more than 64 levels")
    line = int(re.findall(r"p\.yaml:(\d+):", msg)[0])
    assert line == (2 if style != "block-map" else 2 + 63), msg


HUGE = st.one_of(
    st.integers(21, 6000).map(lambda n: "9" * n),
    st.integers(21, 6000).map(lambda n: "-" + "1" * n),
    st.integers(2, 400).map(lambda n: "0x" + "f" * (n + 16)),
    st.sampled_from(
        ["1e400", "-1e400", "1.0e999", ".inf", "-.inf", ".nan", ".NaN", "+.Inf", "1e309"]
    ),
    st.integers(309, 5000).map(lambda e: f"1.5e{e}"),
)


@FUZZ
@given(field=st.sampled_from([p for p, _ in NUMERIC]), value=HUGE)
def test_huge_and_non_finite_numbers_name_the_field(field: str, value: str) -> None:
    run, _ = check(doc_with(field, value))
    msg = assert_refused(run, "p.yaml:", field)
    assert re.search(r"p\.yaml:\d+: ", msg), msg


@FUZZ
@given(
    field=st.sampled_from([p for p, _ in NUMERIC]),
    value=st.sampled_from(
        ['"3"', "true", "[1, 2]", "{a: 1}", "abc", "-1", "1e6", "2026-01-01", "null!", "~"]
    ),
)
def test_wrong_types_and_out_of_range_name_the_field(field: str, value: str) -> None:
    if value == "~":  # null: "not given" for optional top-level settings
        value = "[]"
    if value == "1e6" and field.startswith("migration.") and field.endswith("_s"):
        value = "1e9"
    if value == "-1" and field == "migration.bandwidth_mib_s":
        value = "-5"
    run, _ = check(doc_with(field, value))
    assert_refused(run, "p.yaml:", field.split(".", maxsplit=1)[0])


def _duplicated(where: str, key: str) -> tuple[str, int, int]:
    """VALID with ``key`` given twice at ``where`` (top level, a rule, a nested mapping)."""
    if where == "top":
        doc = f"{key}: {_value_for(key)}\n" + VALID
        second = next(
            i + 2 for i, line in enumerate(VALID.splitlines()) if line.startswith(key + ":")
        )
        return doc, 1, second
    if where == "rule":
        lines = VALID.splitlines()
        at = lines.index("  - name: oracle-hosts")
        lines.insert(at + 1, f"    {key}: {_rule_value(key)}")
        found = [
            i + 1
            for i, line in enumerate(lines)
            if i >= at and line.strip().removeprefix("- ").startswith(key + ":")
        ]
        return "\n".join(lines) + "\n", found[0], found[1]
    doc = VALID.replace(
        "headroom: {cpu: 0.10, memory: 0.05}", f"headroom: {{cpu: 0.10, memory: 0.05, {key}: 0.2}}"
    )
    line = 1 + next(i for i, line in enumerate(doc.splitlines()) if line.startswith("headroom"))
    return doc, line, line


def _value_for(key: str) -> str:
    return dict(NUMERIC).get(key, "manual") if key != "automation" else "manual"  # type: ignore[return-value]


def _rule_value(key: str) -> str:
    return {"kind": "vm_host", "mode": "should", "vms": "[x]", "hosts": "[h03]", "name": "o2"}[key]


@FUZZ
@given(
    case=st.one_of(
        st.tuples(
            st.just("top"),
            st.sampled_from(["automation", "threshold", "cooldown_minutes", "goal"]),
        ),
        st.tuples(st.just("rule"), st.sampled_from(["kind", "mode", "vms", "hosts", "name"])),
        st.tuples(st.just("nested"), st.sampled_from(["cpu", "memory"])),
    )
)
def test_duplicate_keys_name_both_lines(case: tuple[str, str]) -> None:
    where, key = case
    text, first, second = _duplicated(where, key)
    if where == "top" and key == "goal":
        text = "goal: consolidate\n" + VALID
    run, _ = check(text)
    msg = assert_refused(run, "p.yaml:", f"key {key!r} is given twice")
    lines = [int(x) for x in re.findall(r"lines (\d+) and (\d+)", msg)[0]]
    assert lines[0] == first and lines[1] == second, (msg, first, second)


TAGS = [
    "!!int abc",
    "!!int 0x",
    "!!float abc",
    "!!timestamp 2026-13-45",
    "!!timestamp nope",
    "!!binary '*not base64*'",
    "!!bool maybe",
    "!!set [a]",
    "!!omap 5",
    "!!pairs 5",
    "!!python/object:os.system x",
    "!unknown x",
    "!!str [a]",
    "!!map [a]",
    "!!seq {a: 1}",
]


@FUZZ
@given(
    tag=st.sampled_from(TAGS),
    field=st.sampled_from(["threshold", "automation", "limits.concurrent_total", "balance.cpu"]),
)
def test_bad_tags_are_located(tag: str, field: str) -> None:
    run, _ = check(doc_with(field, tag))
    msg = assert_refused(run, "p.yaml:")
    assert re.search(r"p\.yaml:\d+", msg), msg


@settings(max_examples=60, deadline=None)
@given(
    cuts=st.lists(
        st.tuples(
            st.integers(0, len(VALID) - 1),
            st.integers(0, 8),
            st.sampled_from(
                ["", ":", "-", "[", "]", "{", "}", "'", '"', "&a", "*a", "\n", "  ", "!!"]
            ),
        ),
        min_size=1,
        max_size=4,
    )
)
def test_mutated_valid_policies_never_crash(cuts: list[tuple[int, int, str]]) -> None:
    text = VALID
    for offset, length, insert in cuts:
        at = min(offset, len(text))
        text = text[:at] + insert + text[at + length :]
    run, _ = check(text)
    assert_clean(run)
    assert run.code in (0, 2), run
    if run.code == 2:
        assert "p.yaml" in run.message, run.stderr


@FUZZ
@given(
    values=st.recursive(
        st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
        lambda kids: (
            st.lists(kids, max_size=3) | st.dictionaries(st.text(max_size=6), kids, max_size=3)
        ),
        max_leaves=12,
    ),
    key=st.sampled_from(
        [
            "automation",
            "threshold",
            "balance",
            "headroom",
            "limits",
            "rules",
            "exclude",
            "migration",
        ]
    ),
)
def test_any_yaml_value_under_any_setting_never_crashes(values: Any, key: str) -> None:
    text = yaml.safe_dump({key: values}, allow_unicode=False)
    run, _ = check(text)
    assert_clean(run)
    if run.code == 2:
        assert "p.yaml" in run.message and key in run.message, run.stderr


# -- the concrete cases of issue 14 ------------------------------------------------------------
REGRESSIONS: list[tuple[str, str | bytes, tuple[str, ...]]] = [
    ("binary", b"\x00\x01\x02\xff\xfe", ("line 1, column 1", "U+0000")),
    ("non-utf8", b"automation: manual\nthreshold: 3 # \xe9t\xe9\n", ("line 2, column 16", "0xe9")),
    ("control-char", b"threshold: 3\x07\n", ("not valid YAML", "line 1, column 13", "U+0007")),
    ("escape-char", "automation: \x1b[31mfull\n", ("line 1, column 13", "U+001B")),
    ("deep-flow", "rules: " + "[" * 5000 + "]" * 5000 + "\n", ("p.yaml:1:", "nested")),
    ("deep-map", "x: " + "{a: " * 2000 + "1" + "}" * 2000 + "\n", ("p.yaml:1:", "nested")),
    ("huge-int", "threshold: " + "9" * 5000 + "\n", ("p.yaml:1:", "threshold", "5000-digit")),
    ("huge-float", "balance: {cpu: 1e400, memory: 1}\n", ("balance.cpu", "not a finite")),
    ("inf-weight", "balance: {cpu: .inf, memory: 1.0}\n", ("p.yaml:1:", "balance.cpu", "finite")),
    ("nan-headroom", "headroom: {cpu: .nan, memory: 0}\n", ("headroom.cpu", "finite")),
    ("bad-int-tag", "threshold: !!int abc\n", ("p.yaml:1:", "threshold", "'abc'")),
    (
        "dup-automation",
        "automation: manual\nautomation: full\n",
        ("p.yaml:2:", "automation", "lines 1 and 2"),
    ),
    (
        "dup-in-rule",
        "rules:\n  - name: r\n    kind: vm_host\n    mode: must\n    mode: must_not\n"
        "    vms: [a]\n    hosts: [h1]\n",
        ("p.yaml:5:", "rules[0].mode", "lines 4 and 5"),
    ),
    (
        "dup-nested",
        "limits:\n  moves_per_cycle: 3\n  moves_per_cycle: 300\n",
        ("p.yaml:3:", "limits.moves_per_cycle", "lines 2 and 3"),
    ),
    (
        "billion-laughs",
        "a: &a [x, x, x, x, x, x, x, x, x, x]\n"
        + "".join(
            f"{chr(98 + i)}: &{chr(98 + i)} [{', '.join('*' + chr(97 + i) for _ in range(10))}]\n"
            for i in range(7)
        ),
        ("aliases expand",),
    ),
    ("recursive-alias", "exclude: &e [*e]\n", ("p.yaml:1:", "an alias refers")),
    ("huge-bandwidth", "migration: {bandwidth_mib_s: 99999999999}\n", ("bandwidth_mib_s",)),
    ("huge-stall", "migration: {stall_timeout_s: 1e12}\n", ("migration.stall_timeout_s",)),
    ("string-threshold", 'threshold: "3"\n', ("p.yaml:1:", "threshold")),
    ("bool-threshold", "threshold: yes\n", ("p.yaml:1:", "threshold")),
    ("int-key", "1: 2\n", ("p.yaml:1:", "must be text")),
    ("timestamp", "automation: !!timestamp 2026-13-45\n", ("p.yaml:1:", "automation")),
    ("two-documents", "automation: full\n---\nautomation: manual\n", ("p.yaml:", "single")),
    ("bom-then-error", "\ufeffthreshold: 9\n", ("p.yaml:1:", "threshold")),
]


@pytest.mark.parametrize(("text", "needles"), [(t, n) for _, t, n in REGRESSIONS],
                         ids=[i for i, _, _ in REGRESSIONS])  # fmt: skip
def test_issue_regressions(text: str | bytes, needles: tuple[str, ...]) -> None:
    run, _ = check(text)
    assert_refused(run, "p.yaml", *needles)


def test_a_bom_is_dropped_and_the_file_loads() -> None:
    run, _ = check("\ufeffautomation: manual\n")
    assert run.code == 0, run


def test_a_valid_policy_still_loads() -> None:
    run, _ = check(VALID)
    assert run.code == 0, run


def test_directory_entries_that_are_not_files_are_refused_by_name(tmp_path: Path) -> None:
    (tmp_path / "a.yaml").write_text("automation: manual\n")
    (tmp_path / "sub.yaml").mkdir()
    run = run_cli(["policy", "check", str(tmp_path)])
    assert_refused(run, "sub.yaml", "is a directory", located=False)
    os.rmdir(tmp_path / "sub.yaml")
    (tmp_path / "dangling.yml").symlink_to(tmp_path / "nowhere")
    assert_refused(
        run_cli(["policy", "check", str(tmp_path)]), "dangling.yml", "no such file", located=False
    )


def test_oversized_policy_file_is_refused_before_reading(tmp_path: Path) -> None:
    p = tmp_path / "big.yaml"
    with p.open("wb") as f:
        f.truncate(2 * 1024 * 1024)
    assert_refused(
        run_cli(["policy", "check", str(p)]), "big.yaml", "above the limit", located=False
    )


# -- real processes: FIFOs and devices never hang ---------------------------------------------
def test_fifo_policy_file_and_fifo_in_a_directory_are_refused_without_hanging(
    tmp_path: Path,
) -> None:
    fifo = tmp_path / "pipe.yaml"
    os.mkfifo(fifo)
    run = run_subprocess(["policy", "check", str(fifo)], timeout_s=60)
    assert_refused(run, "pipe.yaml", "FIFO", located=False)
    d = tmp_path / "policies"
    d.mkdir()
    (d / "a.yaml").write_text("automation: manual\n")
    os.mkfifo(d / "b.yaml")
    run = run_subprocess(["policy", "check", str(d)], timeout_s=60)
    assert_refused(run, "b.yaml", "FIFO", located=False)
    os.unlink(d / "b.yaml")
    os.mkfifo(d / "notes")  # not named like a policy file: still never legitimate here
    run = run_cli(["policy", "check", str(d)])  # in process: a hang fails on pytest-timeout
    assert_refused(run, "notes", "FIFO", located=False)


def test_device_as_policy_file_is_refused() -> None:
    run = run_cli(["policy", "check", "/dev/zero"])
    assert_refused(run, "/dev/zero", "character device", located=False)


# -- the service settings file: the same YAML layer, through ``balancer serve --config`` ------
SETTINGS = "backend: {kind: simulated, hosts: 2, vms: 4}\ndatabase: sqlite://\n"

SETTINGS_CASES: list[tuple[str, str | bytes, tuple[str, ...]]] = [
    ("dup-key", SETTINGS + "database: sqlite://\n", ("b.yaml:3:", "database", "lines 2 and 3")),
    ("inf-interval", SETTINGS + "intervals: {collect_s: .inf}\n", ("intervals.collect_s",)),
    ("huge-seed", SETTINGS.replace("vms: 4", "vms: 4, seed: " + "9" * 5000), ("backend.seed",)),
    ("big-seed", SETTINGS.replace("vms: 4", "vms: 4, seed: 99999999999"), ("backend.seed",)),
    ("string-number", SETTINGS + 'service: {plan_seed: "3"}\n', ("service.plan_seed",)),
    ("long-interval", SETTINGS + "intervals: {balance_s: 1e9}\n", ("intervals.balance_s",)),
    ("bad-tag", SETTINGS + "log_json: !!bool perhaps\n", ("b.yaml:3:", "log_json")),
    ("deep", SETTINGS + "x: " + "[" * 3000 + "\n", ("b.yaml:3:", "nested")),
    ("non-utf8", SETTINGS.encode() + b"state_dir: \xc3(\n", ("line 3, column 12", "0xc3")),
    ("control", SETTINGS + "state_dir: a\x1bb\n", ("line 3, column 13", "U+001B")),
]


@pytest.mark.parametrize(("text", "needles"), [(t, n) for _, t, n in SETTINGS_CASES],
                         ids=[i for i, _, _ in SETTINGS_CASES])  # fmt: skip
def test_settings_regressions(text: str | bytes, needles: tuple[str, ...]) -> None:
    with scratch() as d:
        p = d / "b.yaml"
        if isinstance(text, bytes):
            p.write_bytes(text)
        else:
            p.write_text(text)
        assert_refused(run_cli(["serve", "--config", str(p)]), "b.yaml", *needles)


def test_fifo_settings_file_is_refused_without_hanging(tmp_path: Path) -> None:
    fifo = tmp_path / "b.yaml"
    os.mkfifo(fifo)
    run = run_subprocess(["serve", "--config", str(fifo)])
    assert_refused(run, "b.yaml", "FIFO", located=False)


SETTINGS_NUMBERS = [
    "intervals.collect_s",
    "intervals.balance_s",
    "intervals.policy_reload_s",
    "breakers.failure_limit",
    "breakers.failure_window_s",
    "service.drain_timeout_s",
    "service.plan_time_limit_s",
    "service.plan_seed",
    "service.history_h",
    "service.executor_poll_s",
]


@settings(FUZZ, max_examples=25)
@given(field=st.sampled_from(SETTINGS_NUMBERS), value=HUGE | st.sampled_from(["-1", '"5"', "[]"]))
def test_settings_numbers_are_finite_and_bounded(field: str, value: str) -> None:
    section, key = field.split(".")
    with scratch() as d:
        p = d / "b.yaml"
        p.write_text(f"{SETTINGS}{section}:\n  {key}: {value}\n")
        assert_refused(run_cli(["serve", "--config", str(p)]), "b.yaml:4:", field)
