"""The API's outer guard in process (balancer.api.guard): the request id on every response,
the last-resort 500 logged once, the JSON depth and lone-surrogate refusals, the body limit."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi import Depends, FastAPI
from fastapi.testclient import TestClient

from balancer.api.app import create_app, principal
from balancer.api.guard import json_depth, lone_surrogate
from balancer.service.logs import JsonFormatter, TextFormatter
from balancer.service.runtime import Runtime
from balancer.settings import load_settings
from tests.service.running import TOKENS, write_settings

VIEWER = {"Authorization": f"Bearer {TOKENS['vic']}"}


class Boom(Exception):
    """Stands for a bug in a route."""


@pytest.fixture(scope="module")
def app(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FastAPI]:
    root = tmp_path_factory.mktemp("guard")
    cfg = write_settings(root, policy={"automation": "manual"})
    saved = dict(os.environ)
    os.environ.update({f"TEST_TOKEN_{u.upper()}": t for u, t in TOKENS.items()})
    rt = Runtime.build(load_settings(cfg))
    app = create_app(rt)

    def boom() -> None:
        raise Boom("marker-7f3a: a bug")

    app.add_api_route(
        "/api/v1/boom", boom, methods=["GET", "POST"], dependencies=[Depends(principal)]
    )
    try:
        yield app
    finally:
        rt.close()
        os.environ.clear()
        os.environ.update(saved)


@pytest.fixture
def client(app: FastAPI) -> Iterator[TestClient]:
    # raise_server_exceptions: an exception that left the application would fail the test
    with TestClient(app, raise_server_exceptions=True) as c:
        yield c


def test_an_unexpected_error_is_a_500_logged_once_with_its_request_id(
    client: TestClient, caplog: pytest.LogCaptureFixture
) -> None:
    before = _internal_errors(client)
    caplog.clear()
    with caplog.at_level(logging.INFO):
        r = client.get("/api/v1/boom", headers=VIEWER)
    assert r.status_code == 500
    rid = r.headers["x-request-id"]
    body = r.json()
    assert body["request_id"] == rid and rid in body["error"] and "Boom" in body["error"]
    assert "marker-7f3a" not in r.text  # the detail is for the log, not the client
    errors = [rec for rec in caplog.records if rec.levelno >= logging.ERROR]
    assert len(errors) == 1, [rec.getMessage() for rec in errors]
    rec = errors[0]
    assert rec.exc_info is not None and rid in rec.getMessage()
    for formatter in (JsonFormatter(), TextFormatter()):
        text = "\n".join(formatter.format(x) for x in caplog.records)
        assert text.count("Traceback (most recent call last)") == 1
        assert text.count("raise Boom(") == 1  # the failing line, once
    assert _internal_errors(client) == before + 1


def test_a_mutating_call_that_ends_in_a_500_is_audited_too(client: TestClient) -> None:
    operator = {"Authorization": f"Bearer {TOKENS['bob']}"}
    r = client.post("/api/v1/boom", headers=operator)
    assert r.status_code == 500
    calls = client.get("/api/v1/audit", params={"kind": "api"}, headers=operator).json()
    assert any(c["detail"] == "POST /api/v1/boom" and c["result"] == "500" for c in calls), calls


def test_every_response_carries_a_request_id(client: TestClient) -> None:
    answers = [
        client.get("/healthz"),
        client.get("/api/v1/whoami", headers=VIEWER),
        client.get("/api/v1/whoami"),  # 401
        client.get("/api/v1/no-such-route", headers=VIEWER),  # 404
        client.put("/api/v1/whoami", headers=VIEWER),  # 405
        client.post("/api/v1/migrations", headers={**VIEWER, "content-type": "application/json"}),
        client.get("/api/v1/history", params={"hours": "nan"}, headers=VIEWER),  # 422
    ]
    ids = [r.headers.get("x-request-id") for r in answers]
    assert all(ids) and len(set(ids)) == len(ids), ids
    for r in answers[2:]:
        assert 400 <= r.status_code < 500 and r.json()["request_id"] == r.headers["x-request-id"]
    assert answers[6].json()["field"] == "query.hours"
    # a sane id from the client (a proxy's) is kept; anything else is replaced
    r = client.get("/healthz", headers={"X-Request-ID": "lb-42.abc"})
    assert r.headers["x-request-id"] == "lb-42.abc"
    r = client.get("/healthz", headers={"X-Request-ID": "x" * 65})
    assert r.headers["x-request-id"] != "x" * 65


def test_json_deeper_than_the_limit_is_a_422_naming_the_depth(client: TestClient) -> None:
    for depth in (33, 1000, 200_000):
        body = b"[" * depth + b"]" * depth
        r = client.post(
            "/api/v1/policy/validate",
            content=body,
            headers={**VIEWER, "content-type": "application/json"},
        )
        assert r.status_code == 422, r.text
        assert r.json()["field"] == "body"
        assert f"nested {depth} levels deep; at most 32" in r.json()["error"]
    # at the limit the body is parsed (and refused for what it is: not an object)
    body = b"[" * 32 + b"]" * 32
    r = client.post(
        "/api/v1/policy/validate",
        content=body,
        headers={**VIEWER, "content-type": "application/json"},
    )
    assert r.status_code == 422 and "nested" not in r.json()["error"]


def test_json_depth_does_not_count_brackets_inside_strings() -> None:
    assert json_depth(b'{"a": "[[[[{{{{", "b": [1, {"c": "]]]}"}]}') == 3
    assert json_depth(b'["\\"[[[", [[]]]') == 3
    assert json_depth(b'"unterminated [[[[') == 4  # never below the real figure
    assert json_depth(b"") == 0


def test_a_lone_surrogate_is_refused_naming_its_field(client: TestClient) -> None:
    assert lone_surrogate(b'{"a": ["ok", "\\ud83d\\ude00", "\\udc00"]}') == "a.2"
    assert lone_surrogate(b'{"a": "\\ud83d\\ude00"}') is None  # a pair is one character
    assert lone_surrogate(b'{"a": "\\\\ud800"}') is None  # an escaped backslash, then text
    r = client.post(
        "/api/v1/policy/validate",
        content=b'{"files": [{"name": "a.yaml", "text": "ok \\ud800"}]}',
        headers={**VIEWER, "content-type": "application/json"},
    )
    assert r.status_code == 422 and r.json()["field"] == "files.0.text", r.text


def test_a_body_above_the_limit_is_a_413_naming_it(client: TestClient) -> None:
    big = b"x" * (1024 * 1024 + 1)
    r = client.post("/api/v1/policy/validate", content=big, headers=VIEWER)
    assert r.status_code == 413, r.text
    assert r.json()["field"] == "body" and "1 MiB" in r.json()["error"]

    def chunks() -> Iterator[bytes]:  # no Content-Length: refused as the chunks pass the limit
        for _ in range(40):
            yield b"y" * 65536

    r = client.post("/api/v1/policy/validate", content=chunks(), headers=VIEWER)
    assert r.status_code == 413 and "api.max_body_bytes" in r.json()["error"]


def _internal_errors(client: TestClient) -> float:
    for line in client.get("/metrics").text.splitlines():
        if line.startswith("balancer_api_internal_errors_total "):
            return float(line.split()[1])
    raise AssertionError("no balancer_api_internal_errors_total in /metrics")


def test_policy_validation_is_a_viewer_call_that_answers_valid_false(
    client: TestClient, tmp_path: Path
) -> None:
    r = client.post(
        "/api/v1/policy/validate",
        json={"files": [{"name": "default.yaml", "text": "threshold: [\n"}]},
        headers=VIEWER,
    )
    assert r.status_code == 200, r.text
    doc = r.json()
    assert doc["ok"] is False and "default.yaml" in doc["error"]
