"""``schedule add --at``: an ISO time with a zone, or a time from now (README examples)."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from balancer.cli.service import parse_at
from balancer.errors import InputError

NOW = datetime(2026, 12, 1, 20, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("+2h", "2026-12-01T22:00:00+00:00"),
        ("+30m", "2026-12-01T20:30:00+00:00"),
        ("+1d", "2026-12-02T20:00:00+00:00"),
        ("+45s", "2026-12-01T20:00:45+00:00"),
        ("2030-01-01T02:00Z", "2030-01-01T02:00Z"),
    ],
)
def test_relative_and_absolute_times(text: str, expected: str) -> None:
    assert parse_at(text, NOW) == expected


@pytest.mark.parametrize("text", ["tomorrow", "+2x", "2h", "+", "2030-01-01T02:00", "+9999999h"])
def test_anything_else_is_bad_input(text: str) -> None:
    with pytest.raises(InputError, match="--at"):
        parse_at(text, NOW)
