from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from balancer.lab.testing import lab_fixture
from tests.collectors.vmserver import VictoriaMetrics, find_binary

#: the shared libvirt lab (one per test process, shared with the other packages' lab tests)
lab = lab_fixture()


@pytest.fixture
def victoria_metrics(tmp_path: Path) -> Iterator[VictoriaMetrics]:
    server = VictoriaMetrics(find_binary(), tmp_path / "vm-storage")
    server.start()
    try:
        yield server
    finally:
        server.stop()
