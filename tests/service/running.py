"""A running ``balancer serve`` for end-to-end tests: its own settings, policy directory,
database and simulated cluster state file under a temporary directory, a free loopback port,
fast intervals, and a fast simulated link (migrations take about a second).

Always stopped at the end (SIGTERM, then SIGKILL after a bound), even when the test fails.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import yaml

from balancer.service.core import POLICY_SETTLE_S

REPO = Path(__file__).resolve().parents[2]
TOKENS = {"alice": "t-admin", "bob": "t-operator", "vic": "t-viewer", "ada": "t-agent"}
ROLES = {"alice": "admin", "bob": "operator", "vic": "viewer", "ada": "agent"}


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def write_policy(directory: Path, **overrides: Any) -> Path:
    """The demo policy files with top-level settings overridden (e.g. automation=manual)."""
    directory.mkdir(parents=True, exist_ok=True)
    doc = yaml.safe_load((REPO / "config/policies/default.yaml").read_text())
    doc.update(overrides)
    (directory / "default.yaml").write_text(yaml.safe_dump(doc, sort_keys=False))
    return directory


def write_settings(
    root: Path,
    *,
    hosts: int = 4,
    vms: int = 30,
    seed: int = 3,
    link_mib_s: float = 20000.0,
    policy: dict[str, Any] | None = None,
    intervals: dict[str, float] | None = None,
    service: dict[str, Any] | None = None,
    breakers: dict[str, Any] | None = None,
    anonymous_viewer: bool = False,
    snapshot: str | None = None,
) -> Path:
    port = free_port()
    pol = write_policy(root / "policies", **(policy or {}))
    backend: dict[str, Any] = {
        "kind": "simulated",
        "hosts": hosts,
        "vms": vms,
        "seed": seed,
        "state_file": str(root / "sim.json"),
        "link_mib_s": link_mib_s,
    }
    if snapshot:
        backend["snapshot"] = snapshot
    doc: dict[str, Any] = {
        "backend": backend,
        "policy": str(pol),
        "database": f"sqlite:///{root / 'balancer.db'}",
        "state_dir": str(root / "state"),
        "api": {
            "listen": f"127.0.0.1:{port}",
            "anonymous_viewer": anonymous_viewer,
            "tokens": [
                {"user": u, "role": ROLES[u], "token_env": f"TEST_TOKEN_{u.upper()}"}
                for u in TOKENS
            ],
        },
        "intervals": intervals or {"collect_s": 0.5, "balance_s": 2, "policy_reload_s": 0.5},
        "service": {"executor_poll_s": 0.2, "plan_time_limit_s": 2, **(service or {})},
        "log_json": True,
    }
    if breakers:
        doc["breakers"] = breakers
    path = root / "balancer.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


class Service:
    """One ``balancer serve`` subprocess."""

    def __init__(self, config: Path) -> None:
        self.config = config
        self.doc = yaml.safe_load(config.read_text())
        self.url = f"http://{self.doc['api']['listen']}"
        self.root = config.parent
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = self.root / "service.log"
        self.starts = 0

    @property
    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        env.update({f"TEST_TOKEN_{u.upper()}": t for u, t in TOKENS.items()})
        env["PYTHONUNBUFFERED"] = "1"
        return env

    def start(self, timeout_s: float = 90.0) -> None:
        self.starts += 1
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "balancer", "serve", "--config", str(self.config)],
            cwd=REPO,
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        log.close()
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"service exited with {self.proc.returncode}:\n{self.tail()}")
            try:
                if httpx.get(f"{self.url}/healthz", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise AssertionError(f"service did not answer within {timeout_s} s:\n{self.tail()}")

    def tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def stop(self, timeout_s: float = 30.0) -> int | None:
        if self.proc is None or self.proc.poll() is not None:
            return None if self.proc is None else self.proc.returncode
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait(10)

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait(10)

    def client(self, user: str = "alice") -> httpx.Client:
        headers = {"Authorization": f"Bearer {TOKENS[user]}"} if user else {}
        return httpx.Client(base_url=f"{self.url}/api/v1", headers=headers, timeout=60)

    def get(self, path: str, user: str = "alice", **kw: Any) -> Any:
        with self.client(user) as c:
            r = c.get(path, **kw)
        assert r.status_code == 200, f"GET {path}: {r.status_code} {r.text}"
        return r.json()

    def post(self, path: str, user: str = "alice", **kw: Any) -> Any:
        with self.client(user) as c:
            r = c.post(path, **kw)
        assert r.status_code < 300, f"POST {path}: {r.status_code} {r.text}"
        return r.json()

    def sim_state(self) -> dict[str, Any]:
        doc: dict[str, Any] = json.loads((self.root / "sim.json").read_text())
        return doc


@contextmanager
def running(config: Path) -> Iterator[Service]:
    svc = Service(config)
    try:
        svc.start()
        yield svc
    finally:
        svc.stop()
        if os.environ.get("BALANCER_KEEP_TEST_LOGS"):
            shutil.copy(svc.log_path, f"/tmp/{config.parent.name}-service.log")


def wait_for(
    what: str, check: Callable[[], Any], timeout_s: float = 60.0, every_s: float = 0.3
) -> Any:
    """Poll ``check`` until it returns something truthy; fail naming ``what`` on the timeout."""
    deadline = time.monotonic() + timeout_s
    last: Any = None
    while time.monotonic() < deadline:
        last = check()
        if last:
            return last
        time.sleep(every_s)
    raise AssertionError(f"timed out after {timeout_s} s waiting for {what} (last: {last!r})")


def settled(path: Path) -> None:
    """Date a policy file's last write (and its directory's) back past the reload's settling
    time: the file is complete, as an ops engineer's save is by the next poll."""
    then = time.time() - 10 * POLICY_SETTLE_S
    for p in (path, path.parent):
        os.utime(p, (then, then))
