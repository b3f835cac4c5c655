"""The ``health:`` policy section: off when absent, on with safe defaults when given, and every
bad value refused naming the file, the line and the field."""

from __future__ import annotations

from pathlib import Path

import pytest

from balancer.errors import PolicyError
from policies.loader import load_policy
from policies.model import Health, PsiThresholds


def write(tmp_path: Path, text: str, name: str = "p.yaml") -> Path:
    p = tmp_path / name
    p.write_text(text)
    return p


def test_absent_is_off_given_is_on_with_defaults(tmp_path: Path) -> None:
    assert load_policy([write(tmp_path, "threshold: 3\n")]).health == Health()
    assert not Health().enabled
    pol = load_policy([write(tmp_path, "health: {}\n")])
    assert pol.health == Health(enabled=True)
    assert pol.health.release_after_healthy_minutes == 30 and pol.health.max_quarantined == 1


def test_values_are_read(tmp_path: Path) -> None:
    pol = load_policy(
        [
            write(
                tmp_path,
                "health:\n"
                "  connection_failures: 2\n"
                "  migration_failures: 4\n"
                "  window_minutes: 15\n"
                "  psi_some_avg60: {cpu: 90, memory: null, io: 55.5}\n"
                "  sustained_minutes: 3\n"
                "  hardware_errors: false\n"
                "  release_after_healthy_minutes: null\n"
                "  max_quarantined: 2\n",
            )
        ]
    )
    assert pol.health == Health(
        enabled=True,
        connection_failures=2,
        migration_failures=4,
        window_minutes=15,
        psi_some_avg60=PsiThresholds(cpu=90.0, memory=None, io=55.5),
        sustained_minutes=3,
        hardware_errors=False,
        release_after_healthy_minutes=None,
        max_quarantined=2,
    )


@pytest.mark.parametrize(
    ("text", "field", "message"),
    [
        (
            "health: {connection_failures: 0}",
            "health.connection_failures",
            "greater than or equal to 1",
        ),
        ("health: {migration_failures: three}", "health.migration_failures", "valid integer"),
        ("health: {window_minutes: -5}", "health.window_minutes", "greater than or equal to 1"),
        (
            "health: {psi_some_avg60: {cpu: 101}}",
            "health.psi_some_avg60.cpu",
            "less than or equal to 100",
        ),
        ("health: {psi_some_avg60: {io: 0}}", "health.psi_some_avg60.io", "greater than 0"),
        ("health: {psi_some_avg60: {disk: 10}}", "health.psi_some_avg60.disk", "unknown setting"),
        ("health: {sustained_minutes: 1.5}", "health.sustained_minutes", "valid integer"),
        ("health: {hardware_errors: 'yes'}", "health.hardware_errors", "valid boolean"),
        (
            "health: {release_after_healthy_minutes: 0}",
            "health.release_after_healthy_minutes",
            "greater than or equal to 1",
        ),
        ("health: {max_quarantined: -1}", "health.max_quarantined", "greater than or equal to 0"),
        ("health: {enable: true}", "health.enable", "unknown setting"),
        ("health: on", "health", "valid dictionary"),
    ],
)
def test_bad_values_name_the_field(tmp_path: Path, text: str, field: str, message: str) -> None:
    f = write(tmp_path, "threshold: 3\n" + text + "\n")
    with pytest.raises(PolicyError) as err:
        load_policy([f])
    assert err.value.field == field
    assert message in str(err.value)
    assert f"{f}:2:" in str(err.value)


def test_one_file_of_a_directory_only(tmp_path: Path) -> None:
    write(tmp_path, "health: {}\n", "a.yaml")
    write(tmp_path, "health: {enabled: false}\n", "b.yaml")
    with pytest.raises(PolicyError, match="also set in") as err:
        load_policy([tmp_path])
    assert err.value.field == "health"
