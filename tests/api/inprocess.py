"""The API in process (FastAPI's TestClient) on a runtime built from a settings file, with the
test tokens in the environment for as long as the client is open."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from fastapi.testclient import TestClient

from balancer.api.app import create_app
from balancer.service.runtime import Runtime
from balancer.settings import load_settings
from tests.service.running import TOKENS

OPERATOR = {"Authorization": f"Bearer {TOKENS['bob']}"}
VIEWER = {"Authorization": f"Bearer {TOKENS['vic']}"}


@contextmanager
def api_client(settings: Path) -> Iterator[TestClient]:
    """A client of the app on the settings' runtime, its policy loaded."""
    saved = dict(os.environ)
    os.environ.update({f"TEST_TOKEN_{u.upper()}": t for u, t in TOKENS.items()})
    rt = Runtime.build(load_settings(settings))
    try:
        assert rt.service.reload_policy(initial=True)
        with TestClient(create_app(rt), raise_server_exceptions=True) as c:
            yield c
    finally:
        rt.close()
        os.environ.clear()
        os.environ.update(saved)
