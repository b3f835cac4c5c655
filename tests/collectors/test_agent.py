"""``balancer agent``: the --once --json shape, the ingest document, buffering while the service
is down, and the push loop as a real process that stops cleanly on SIGTERM."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
from click.testing import CliRunner

from balancer.cli import cli
from balancer.errors import InputError
from collectors.agent import (
    DOC_KEYS,
    HttpIngestTarget,
    host_sample_doc,
    host_sample_from_doc,
    run_agent,
)
from collectors.hostagent import HostAgentSampler
from collectors.samples import HostSample, Psi, PsiLine, PsiResource, SampleSource
from tests.collectors.helpers import at

ROOT = Path(__file__).resolve().parents[2]


def test_once_json_prints_exactly_the_documented_keys() -> None:
    result = CliRunner().invoke(
        cli, ["agent", "--once", "--json", "--measure-s", "0.1", "--host", "hv1"]
    )
    assert result.exit_code == 0, result.output
    doc = json.loads(result.output)
    assert list(doc) == list(DOC_KEYS)
    assert doc["host"] == "hv1"
    assert isinstance(doc["cpu_cores"], int) and doc["cpu_cores"] >= 1
    assert 0 <= doc["cpu_used_cores"] <= doc["cpu_cores"]
    assert 0 < doc["memory_used_mib"] <= doc["memory_mib"]
    assert doc["psi"] is None or set(doc["psi"]) == {"cpu", "memory", "io"}
    assert doc["net_rx_bps"] >= 0 and doc["net_tx_bps"] >= 0
    host_sample_from_doc(doc)  # the service can read what the agent prints


def test_once_table() -> None:
    result = CliRunner().invoke(cli, ["agent", "--once", "--measure-s", "0.1"])
    assert result.exit_code == 0, result.output
    assert "cores" in result.output and "MiB" in result.output


def test_loop_without_target_is_an_input_error() -> None:
    result = CliRunner().invoke(
        cli, ["agent"], env={"BALANCER_INGEST_URL": "", "BALANCER_INFLUX_URL": ""}
    )
    assert result.exit_code == 2
    assert "no target" in result.output


def sample(t: float, host: str = "hv1") -> HostSample:
    psi = Psi(io=PsiResource(some=PsiLine(avg10=1, avg60=2, avg300=3, total_us=4)))
    return HostSample(
        host=host,
        time=at(t),
        cpu_cores=4,
        cpu_used_cores=1.25,
        memory_mib=8000,
        memory_used_mib=2000,
        psi=psi,
        net_rx_bps=10.0,
        net_tx_bps=None,
        source=SampleSource.AGENT,
    )


def test_doc_round_trip_and_errors() -> None:
    s = sample(0)
    assert host_sample_from_doc(host_sample_doc(s)) == s
    bad = host_sample_doc(s) | {"cpu_cores": "many"}
    with pytest.raises(InputError, match="bad numbers"):
        host_sample_from_doc(bad)
    with pytest.raises(InputError, match="missing psi"):
        host_sample_from_doc({k: v for k, v in host_sample_doc(s).items() if k != "psi"})


def test_http_target_keeps_samples_while_the_service_is_down() -> None:
    received: list[dict[str, Any]] = []
    up = False

    def handler(request: httpx.Request) -> httpx.Response:
        if not up:
            raise httpx.ConnectError("refused")
        assert request.url.path == "/api/v1/ingest/host"
        assert request.headers["authorization"] == "Bearer tok"
        received.append(json.loads(request.content))
        return httpx.Response(202)

    target = HttpIngestTarget(
        "http://127.0.0.1:1/", token="tok", max_pending=3, transport=httpx.MockTransport(handler)
    )
    for t in range(5):
        target.push(sample(t * 20))
    assert len(target.pending) == 3 and target.dropped == 2
    up = True
    target.push(sample(100))
    # the bound holds on push too: 40 s is dropped for 100 s, the rest go oldest first
    assert [r["time"] for r in received] == [at(t).isoformat() for t in (60, 80, 100)]
    assert target.sent == 3 and target.dropped == 3 and not target.pending
    target.close()


def test_run_agent_stops_after_max_cycles() -> None:
    class Collect:
        def __init__(self) -> None:
            self.samples: list[HostSample] = []
            self.closed = False

        def push(self, s: HostSample) -> None:
            self.samples.append(s)

        def close(self) -> None:
            self.closed = True

    target = Collect()
    n = run_agent(
        HostAgentSampler(at(0), host="x"),
        [target],
        interval_s=0.05,
        stop=threading.Event(),
        max_cycles=3,
    )
    assert n == 3 and len(target.samples) == 3 and target.closed


class _Ingest(BaseHTTPRequestHandler):
    received: list[dict[str, Any]] = []
    event = threading.Event()

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        type(self).received.append({"path": self.path, "doc": json.loads(body)})
        if len(type(self).received) >= 2:
            type(self).event.set()
        self.send_response(202)
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def ingest_server() -> Iterator[ThreadingHTTPServer]:
    _Ingest.received = []
    _Ingest.event = threading.Event()
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Ingest)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def test_agent_pushes_to_the_ingest_url_and_stops_on_sigterm(
    ingest_server: ThreadingHTTPServer,
) -> None:
    url = f"http://127.0.0.1:{ingest_server.server_address[1]}"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "from balancer.cli import main; main()",
            "agent",
            "--push-url",
            url,
            "--interval-s",
            "0.2",
            "--host",
            "hv-test",
        ],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        assert _Ingest.event.wait(20), "no samples arrived"
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(5)
    assert proc.returncode == 0, err.decode()
    assert "SIGTERM received, stopping" in err.decode()
    first = _Ingest.received[0]
    assert first["path"] == "/api/v1/ingest/host"
    assert list(first["doc"]) == list(DOC_KEYS) and first["doc"]["host"] == "hv-test"
