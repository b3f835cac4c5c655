"""Policy ``windows:`` (issue 13): loaded into pure values, bad windows refused naming the
file, line and field, and the window state at a given time (pure: the time is an argument)."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest

from balancer.errors import PolicyError
from policies.loader import load_policy
from policies.model import WindowMode
from policies.windows import window_state


def write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "p.yaml"
    p.write_text(text)
    return p


def window(mode: str = "freeze", cron: str = "0 8 * * 1-5", duration: object = 600) -> str:
    return (
        "windows:\n"
        "  - name: business-hours\n"
        f"    mode: {mode}\n"
        f'    cron: "{cron}"\n'
        f"    duration_minutes: {duration}\n"
    )


def test_windows_load_into_the_policy(tmp_path: Path) -> None:
    pol = load_policy([write(tmp_path, "timezone: Europe/Berlin\n" + window())])
    [w] = pol.windows
    assert (w.name, w.mode, w.cron, w.duration_minutes) == (
        "business-hours",
        WindowMode.FREEZE,
        "0 8 * * 1-5",
        600,
    )
    assert pol.timezone == "Europe/Berlin" and w.origin.endswith("p.yaml:3")


@pytest.mark.parametrize(
    ("text", "field", "words"),
    [
        (window(cron="0 25 * * *"), "windows[0].cron", "higher than the maximum"),
        (window(cron="every day"), "windows[0].cron", "5-field cron"),
        (window(duration=-5), "windows[0].duration_minutes", "greater than or equal to 1"),
        (window(mode="sometimes"), "windows[0].mode", "'allow' or 'freeze'"),
        ("timezone: Mars/Olympus\n" + window(), "timezone", "unknown time zone 'Mars/Olympus'"),
        (window() + window()[len("windows:\n") :], "windows[1].name", "already used"),
    ],
)
def test_bad_windows_are_refused_naming_the_field(
    tmp_path: Path, text: str, field: str, words: str
) -> None:
    path = write(tmp_path, text)
    with pytest.raises(PolicyError) as err:
        load_policy([path])
    msg = str(err.value)
    assert msg.startswith(f"{path}:"), msg
    assert field in msg and words in msg, msg


def test_the_window_state_at_a_time(tmp_path: Path) -> None:
    pol = load_policy([write(tmp_path, window())])  # weekdays 08:00-18:00 UTC
    monday = datetime(2026, 3, 2, tzinfo=UTC)
    inside = window_state(pol, monday.replace(hour=9))
    assert inside.held and inside.window == "business-hours"
    assert inside.detail == "frozen by business-hours until 2026-03-02T18:00+00:00"
    assert inside.key == window_state(pol, monday.replace(hour=17)).key  # one hold
    assert not window_state(pol, monday.replace(hour=19)).held
    assert not window_state(pol, datetime(2026, 3, 7, 9, tzinfo=UTC)).held  # Saturday
    allow = load_policy([write(tmp_path, window(mode="allow", cron="0 22 * * *", duration=120))])
    assert not window_state(allow, monday.replace(hour=23)).held
    out = window_state(allow, monday.replace(hour=9))
    assert out.held and out.window is None
    assert out.detail == "outside every allow window until 2026-03-02T22:00+00:00 (business-hours)"
