"""Lab fixtures: one 3-host lab for the whole session (h3's CPU lacks a feature).

Without the prerequisites the lab tests skip with the exact reason; with
BALANCER_REQUIRE_LAB=1 (CI) they fail instead.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from balancer.lab import Lab
from balancer.lab.testing import lab_fixture
from balancer.libvirt import LibvirtBackend

lab = lab_fixture()


@pytest.fixture()
def backend(lab: Lab) -> Iterator[LibvirtBackend]:
    """A fresh backend on the lab hosts (its own connections, caches and event feed)."""
    be = lab.backend()
    try:
        yield be
    finally:
        be.close()


@pytest.fixture()
def busy_vm(lab: Lab) -> str:
    """The busy guest, booted and counting."""
    lab.wait_counter_running("busy-1", timeout_s=60)
    return "busy-1"
