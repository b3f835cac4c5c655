"""pytest helpers for tests that need the libvirt lab (executor, service, collectors, ...).

In a ``conftest.py``::

    from balancer.lab.testing import lab_fixture

    lab = lab_fixture()          # session-scoped fixture named "lab": a 3-host lab

and mark the tests ``@pytest.mark.lab``. Every fixture made here shares one lab per test
process (brought up on first use, taken down when the last user is done), so several test
packages do not start several labs.

When a prerequisite is missing the fixture *skips* with the exact reason, unless
``BALANCER_REQUIRE_LAB=1`` (CI sets it): then it *fails*, so the lab tests cannot silently
stop running. Tests share the lab: do not assume where a VM is (use ``lab.where(vm)``) and
put back what you break (``lab.start_host``, ``lab.remove_vm``).
"""

from __future__ import annotations

import os
import shutil
import tempfile
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from balancer.lab.lab import Lab, missing_prerequisites

REQUIRE_ENV = "BALANCER_REQUIRE_LAB"
#: the shared lab's shape: h1..h3 (h3's CPU lacks ``Lab.lacking_feature``), busy-1 on h1,
#: idle-2 on h2, idle-3 on h3
SHARED_HOSTS = 3
SHARED_VMS = 3
SHARED_BUSY = 1

_lock = threading.Lock()
_shared: Lab | None = None
_users = 0


def lab_required() -> bool:
    return os.environ.get(REQUIRE_ENV, "") not in ("", "0")


def unavailable_reason() -> str | None:
    """Why the lab cannot run here (None when it can)."""
    missing = missing_prerequisites()
    if missing:
        return "libvirt lab unavailable, missing: " + "; ".join(missing)
    return None


def require_lab() -> None:
    """Skip (or, with BALANCER_REQUIRE_LAB=1, fail) the current test when the lab cannot run."""
    import pytest

    reason = unavailable_reason()
    if reason is None:
        return
    if lab_required():
        pytest.fail(f"{reason} (BALANCER_REQUIRE_LAB=1: lab tests must run)", pytrace=False)
    pytest.skip(reason)


def acquire_shared_lab() -> Lab:
    """The process-wide shared lab, brought up on first use (pair with release_shared_lab)."""
    global _shared, _users
    with _lock:
        if _shared is None:
            state_dir = Path(tempfile.mkdtemp(prefix="balancer-lab-"))
            try:
                _shared = Lab.up(
                    SHARED_HOSTS, SHARED_VMS, busy=SHARED_BUSY, state_dir=state_dir / "lab"
                )
            except BaseException:
                # Lab.up took down what it had started; leave no empty directory behind
                shutil.rmtree(state_dir, ignore_errors=True)
                raise
        _users += 1
        return _shared


def release_shared_lab() -> None:
    global _shared, _users
    with _lock:
        _users -= 1
        if _users > 0 or _shared is None:
            return
        lab, _shared = _shared, None
    root = lab.state_dir.parent
    try:
        lab.down()
    finally:
        if root.name.startswith("balancer-lab-") and root.exists() and not any(root.iterdir()):
            root.rmdir()


def lab_fixture(name: str = "lab") -> Callable[..., Any]:
    """A session-scoped pytest fixture yielding the shared :class:`Lab` (skips or fails as
    described above)."""
    import pytest

    @pytest.fixture(scope="session", name=name)
    def _lab() -> Iterator[Lab]:
        require_lab()
        lab = acquire_shared_lab()
        try:
            yield lab
        finally:
            release_shared_lab()

    return _lab
