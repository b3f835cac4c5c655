"""The adaptive cooldown's two policy keys: ``cooldown_minutes`` (the base, as before) and
``cooldown_max_minutes`` (the ceiling it doubles up to), with located errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from balancer.errors import PolicyError
from policies.loader import load_policy
from policies.model import Policy


def _load(tmp_path: Path, **files: str) -> Policy:
    d = tmp_path / f"policies{len(list(tmp_path.iterdir()))}"
    d.mkdir()
    for name, text in files.items():
        (d / name).write_text(text)
    return load_policy([d])


def test_base_and_ceiling_are_read(tmp_path: Path) -> None:
    p = _load(tmp_path, **{"a.yaml": "cooldown_minutes: 30\ncooldown_max_minutes: 240\n"})
    assert (p.cooldown_minutes, p.cooldown_max_minutes) == (30, 240)


def test_defaults_and_an_old_policy_with_the_base_only(tmp_path: Path) -> None:
    p = _load(tmp_path, **{"a.yaml": "threshold: 3\n"})
    assert (p.cooldown_minutes, p.cooldown_max_minutes) == (60, 480)
    # a base above the default ceiling, no ceiling given: the ceiling is the base (no doubling)
    p = _load(tmp_path, **{"a.yaml": "cooldown_minutes: 1440\n"})
    assert (p.cooldown_minutes, p.cooldown_max_minutes) == (1440, 1440)


@pytest.mark.parametrize(
    ("files", "expected"),
    [
        (
            {"a.yaml": "threshold: 3\ncooldown_minutes: 60\ncooldown_max_minutes: 30\n"},
            "a.yaml:3: cooldown_max_minutes: 30 is below cooldown_minutes (60)",
        ),
        # the base in one file, the ceiling in another: the error names the ceiling's file
        (
            {"a.yaml": "cooldown_minutes: 120\n", "b.yaml": "\n\ncooldown_max_minutes: 60\n"},
            "b.yaml:3: cooldown_max_minutes: 60 is below cooldown_minutes (120)",
        ),
        # below the default base
        ({"a.yaml": "cooldown_max_minutes: 59\n"}, "a.yaml:1: cooldown_max_minutes: 59 is below"),
        ({"a.yaml": "cooldown_max_minutes: 0\n"}, "a.yaml:1: cooldown_max_minutes:"),
        ({"a.yaml": "cooldown_max_minutes: 20000\n"}, "a.yaml:1: cooldown_max_minutes:"),
        ({"a.yaml": "cooldown_max_minutes: '60'\n"}, "a.yaml:1: cooldown_max_minutes:"),
    ],
)
def test_a_bad_ceiling_is_refused_naming_file_line_and_field(
    tmp_path: Path, files: dict[str, str], expected: str
) -> None:
    with pytest.raises(PolicyError) as info:
        _load(tmp_path, **files)
    assert expected in str(info.value), str(info.value)
