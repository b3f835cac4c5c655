"""A real victoria-metrics server for the ``influx`` tests: free loopback port, temporary storage,
stop and start again on the same storage. Missing binary: skip, or fail when
BALANCER_REQUIRE_SERVICES=1 (CI)."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import pytest

BINARY_CANDIDATES = ("/usr/bin/victoria-metrics", "victoria-metrics")


def find_binary() -> str:
    for c in BINARY_CANDIDATES:
        found = shutil.which(c)
        if found:
            return found
    msg = "victoria-metrics is not installed (apt-get install victoria-metrics)"
    if os.environ.get("BALANCER_REQUIRE_SERVICES") == "1":
        pytest.fail(msg)
    pytest.skip(msg)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class VictoriaMetrics:
    def __init__(self, binary: str, storage: Path) -> None:
        self.binary = binary
        self.storage = storage
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = storage.parent / "victoria-metrics.log"

    def start(self, timeout_s: float = 15.0) -> None:
        assert self.proc is None
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(
                [
                    self.binary,
                    f"-storageDataPath={self.storage}",
                    f"-httpListenAddr=127.0.0.1:{self.port}",
                    "-retentionPeriod=1",
                    "-loggerLevel=ERROR",
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"victoria-metrics exited: {self.log.read_text()[-2000:]}")
            try:
                with urllib.request.urlopen(f"{self.url}/health", timeout=1) as r:
                    if r.status == 200:
                        return
            except (urllib.error.URLError, OSError):
                time.sleep(0.1)
        self.stop()
        raise RuntimeError("victoria-metrics did not become healthy")

    def stop(self, timeout_s: float = 10.0) -> None:
        if self.proc is None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)
        self.proc = None

    def export(self, match: str) -> list[dict[str, Any]]:
        """Raw samples of every series matching ``match`` (after a forced flush)."""
        with urllib.request.urlopen(f"{self.url}/internal/force_flush", timeout=5):
            pass
        data = urllib.parse.urlencode({"match[]": match}).encode()
        with urllib.request.urlopen(f"{self.url}/api/v1/export", data=data, timeout=10) as r:
            body = r.read().decode()
        return [json.loads(line) for line in body.splitlines() if line.strip()]

    def wait_for_points(
        self, match: str, expected: int, timeout_s: float = 10.0
    ) -> list[dict[str, Any]]:
        """Export until ``expected`` points are visible (or the timeout: returns what is)."""
        deadline = time.monotonic() + timeout_s
        while True:
            series = self.export(match)
            if sum(len(s["values"]) for s in series) >= expected or time.monotonic() > deadline:
                return series
            time.sleep(0.2)
