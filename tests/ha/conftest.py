"""A PostgreSQL server for the HA tests: like tests/pg.py (same binaries and helpers, skipped
without them unless BALANCER_REQUIRE_SERVICES=1), but restartable on its port."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.ha.harness import Postgres, postgres
from tests.pg import _missing, find_bin_dir


@pytest.fixture(scope="session")
def ha_postgres() -> Iterator[Postgres]:
    if find_bin_dir() is None:
        _missing(
            "PostgreSQL server binaries (initdb, pg_ctl) not found; apt-get install postgresql"
        )
    with postgres() as pg:
        yield pg
