from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.collectors.vmserver import VictoriaMetrics, find_binary


@pytest.fixture
def victoria_metrics(tmp_path: Path) -> Iterator[VictoriaMetrics]:
    server = VictoriaMetrics(find_binary(), tmp_path / "vm-storage")
    server.start()
    try:
        yield server
    finally:
        server.stop()
