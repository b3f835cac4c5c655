"""Bad input against a running service (issue 14, "the API"): the concrete corpus as regression
cases, bodies above the limit refused while streaming, tasks naming unknown VMs or hosts,
and a policy reload that fails with any exception. No input may reach the last-resort 500."""

from __future__ import annotations

import contextlib
import json
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from click.testing import CliRunner

from tests.service.running import TOKENS, Service, running, wait_for, write_settings

pytestmark = pytest.mark.timeout(240)

MIB = 1024 * 1024


@pytest.fixture(scope="module")
def svc(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    root = tmp_path_factory.mktemp("api-inputs")
    cfg = write_settings(
        root,
        policy={"automation": "manual"},
        intervals={"collect_s": 1, "balance_s": 5, "policy_reload_s": 2},
    )
    with running(cfg) as s:
        wait_for("a status", lambda: s.get("/status")["hosts"])
        yield s


def internal_errors(svc: Service) -> float:
    for line in httpx.get(f"{svc.url}/metrics").text.splitlines():
        if line.startswith("balancer_api_internal_errors_total "):
            return float(line.split()[1])
    raise AssertionError("no balancer_api_internal_errors_total in /metrics")


def check_answer(r: httpx.Response) -> dict[str, Any]:
    """Not a 5xx; an error body names what is wrong (and the field for a 422/413)."""
    assert r.status_code < 500, f"{r.request.method} {r.request.url}: {r.status_code} {r.text}"
    rid = r.headers["x-request-id"]
    doc: dict[str, Any] = r.json()
    if r.status_code >= 400:
        assert doc["error"] and doc["request_id"] == rid, doc
        if r.status_code in (413, 422):
            assert doc["field"] and doc["error"].startswith(f"{doc['field']}:"), doc
    return doc


def validate(svc: Service, text: str, user: str = "vic") -> httpx.Response:
    with svc.client(user) as c:
        return c.post("/policy/validate", json={"files": [{"name": "default.yaml", "text": text}]})


# -- POST /api/v1/policy/validate: the three 500s of the issue, for a viewer --------------------
ISSUE_POLICIES = {
    "deep nesting": "automation: manual\nrules: " + "[" * 5000 + "]" * 5000 + "\n",
    "deep mapping": "automation: manual\nx:\n"
    + "".join(f"{' ' * i}k{i}:\n" for i in range(1, 1200)),
    "bad int tag": "automation: manual\nthreshold: !!int abc\n",
    "5000-digit number": "automation: manual\nthreshold: " + "9" * 5000 + "\n",
}


@pytest.mark.parametrize("case", sorted(ISSUE_POLICIES))
def test_policy_validate_corpus_of_the_issue_is_answered_with_a_location(
    svc: Service, case: str
) -> None:
    r = validate(svc, ISSUE_POLICIES[case])
    doc = check_answer(r)
    if r.status_code == 200:
        assert doc["ok"] is False and doc["error"].startswith("default.yaml:"), doc
    else:
        assert r.status_code in (400, 422), doc


def test_policy_validate_corpus_of_malformed_files(svc: Service) -> None:
    texts = [
        "",
        "\x00\x01\x02",
        "automation: [\n",
        "automation: manual\nautomation: full\n",
        "balance: {cpu: .inf}\n",
        "threshold: 1e400\n",
        "threshold: -1\n",
        "rules: {a: 1}\n",
        "- a\n- b\n",
        "&a [*a]\n",
        "a: &x [1]\nb: *y\n",
        "!!python/object:os.system ls\n",
        "threshold: !!float nan\n",
        "\ufeffautomation: manual\n",
        "automation: manual\t\n\x1b[31m\n",
        "key: " + "x" * 900_000 + "\n",
    ]
    for text in texts:
        doc = check_answer(validate(svc, text))
        assert "ok" in doc or doc.get("error"), doc
    with svc.client("vic") as c:
        for body in (
            {"files": []},
            {"files": [{"name": "../etc/passwd.yaml", "text": ""}]},
            {"files": [{"name": "a.txt", "text": ""}]},
            {"files": [{"name": "a.yaml"}]},
            {"files": [{"name": "a.yaml", "text": 5}]},
            {"files": [{"name": "a.yaml", "text": "", "extra": 1}]},
            {"files": [{"name": "a.yaml", "text": ""}] * 101},
            {"files": "default.yaml"},
            [],
            None,
        ):
            r = c.post("/policy/validate", json=body)
            assert r.status_code == 422, r.text
            check_answer(r)


# -- bodies: size, depth, encoding, numbers ----------------------------------------------------
def _raw(svc: Service, head: bytes, chunks: Iterator[bytes]) -> tuple[bytes, int]:
    """Send ``head`` and then ``chunks`` until the server answers; return (answer, body bytes
    sent). Reads as soon as the server has something to say."""
    host, port = svc.url.removeprefix("http://").rsplit(":", 1)
    sent = 0
    with socket.create_connection((host, int(port)), timeout=30) as s:
        s.sendall(head)
        s.settimeout(0.05)
        answer = b""
        for chunk in [b"", *chunks]:
            with contextlib.suppress(TimeoutError):
                answer += s.recv(65536)
            if answer:
                break
            s.sendall(chunk)
            sent += len(chunk)
        s.settimeout(30)
        while b"\r\n\r\n" not in answer or not answer.rstrip().endswith(b"}"):
            more = s.recv(65536)
            if not more:
                break
            answer += more
    return answer, sent


def test_a_30_mib_body_with_content_length_is_refused_before_it_is_sent(svc: Service) -> None:
    head = (
        f"POST /api/v1/policy/validate HTTP/1.1\r\nHost: x\r\n"
        f"Authorization: Bearer {TOKENS['vic']}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {30 * MIB}\r\n\r\n"
    ).encode()
    # not a byte of the body goes out: the answer comes from the header alone
    answer, sent = _raw(svc, head, iter(()))
    assert sent == 0
    status, _, body = answer.partition(b"\r\n\r\n")
    assert status.startswith(b"HTTP/1.1 413"), answer[:300]
    doc = json.loads(body)
    assert doc["field"] == "body" and "1 MiB" in doc["error"], doc
    assert b"x-request-id: " in status.lower()


def test_a_30_mib_chunked_body_is_refused_once_it_passes_the_limit(svc: Service) -> None:
    head = (
        f"POST /api/v1/policy/validate HTTP/1.1\r\nHost: x\r\n"
        f"Authorization: Bearer {TOKENS['vic']}\r\nContent-Type: application/json\r\n"
        f"Transfer-Encoding: chunked\r\n\r\n"
    ).encode()
    piece = b"x" * 65536
    chunk = f"{len(piece):x}\r\n".encode() + piece + b"\r\n"
    # 30 MiB on offer; the answer must come once a little more than 1 MiB went out
    answer, sent = _raw(svc, head, (chunk for _ in range(30 * 16)))
    assert answer.startswith(b"HTTP/1.1 413"), answer[:300]
    assert sent < 8 * MIB, sent
    doc = json.loads(answer.partition(b"\r\n\r\n")[2])
    assert "api.max_body_bytes" in doc["error"]


def test_a_client_that_leaves_mid_body_is_no_error(svc: Service) -> None:
    before = internal_errors(svc)
    host, port = svc.url.removeprefix("http://").rsplit(":", 1)
    for _ in range(3):
        with socket.create_connection((host, int(port)), timeout=30) as s:
            s.sendall(
                b"POST /api/v1/migrations HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n"
                b"Content-Type: application/json\r\n\r\n" + b'{"vm": "vm0'
            )
    wait_for("the service", lambda: httpx.get(f"{svc.url}/healthz").status_code == 200)
    assert internal_errors(svc) == before


def test_a_30_mib_body_through_an_ordinary_client_gets_the_413(svc: Service) -> None:
    with svc.client("vic") as c:
        r = c.post("/policy/validate", content=b"{" + b" " * (30 * MIB) + b"}")
    assert r.status_code == 413 and r.json()["field"] == "body"


def test_bodies_that_json_cannot_take(svc: Service) -> None:
    json_type = {"content-type": "application/json"}
    with svc.client("bob") as c:
        for body in (
            b"[" * 100_000,  # deeper than any parser's stack
            b'{"vm": ' + b"[" * 40 + b"]" * 40 + b', "target": "h01"}',
            b'{"vm": 1' + b"0" * 5000 + b', "target": "h01"}',  # above Python's int digits
            b'{"vm": "vm001", "target": "\\udc00"}',
            b'{"vm": "vm001", "target": "h01"',
            b"\xff\xfe{}",
            b'{"vm": NaN, "target": Infinity}',
            b"",
        ):
            r = c.post("/migrations", content=body, headers=json_type)
            assert 400 <= r.status_code < 500, (body[:60], r.status_code, r.text)
            doc = check_answer(r)
            assert doc["field"], doc
        r = c.post("/migrations", content=b"vm=vm001", headers={"content-type": "text/plain"})
        assert r.status_code == 422 and check_answer(r)["field"] == "body"


# -- the rest of the API -----------------------------------------------------------------------
def test_corpus_across_the_routes_never_reaches_the_last_resort(svc: Service) -> None:
    before = internal_errors(svc)
    long = "h" * 5000
    cases: list[tuple[str, str, str, dict[str, Any]]] = [
        ("GET", "/history", "vic", {"params": {"hours": "nan"}}),
        ("GET", "/history", "vic", {"params": {"hours": "1e999"}}),
        ("GET", "/history", "vic", {"params": {"hours": "-1"}}),
        ("GET", "/recommendations", "vic", {"params": {"limit": "9" * 50}}),
        ("GET", "/recommendations", "vic", {"params": {"state": "\u00e9\u0000"}}),
        ("GET", "/audit", "vic", {"params": {"since": "1e30"}}),
        ("GET", "/audit", "vic", {"params": {"since": "9999-99-99T99:99:99Z"}}),
        ("GET", "/audit", "vic", {"params": {"since": "2026-01-01T00:00:00"}}),
        ("GET", "/audit", "vic", {"params": {"vm": long}}),
        ("GET", "/plans/" + "x" * 300, "vic", {}),
        ("GET", "/plans/%00", "vic", {}),
        ("GET", "/plans/..%2F..%2Fetc", "vic", {}),
        ("GET", "/maintenance/%E2%80%8B", "vic", {}),
        ("GET", "/maintenance/h01/preflight", "vic", {}),
        ("GET", "/maintenance/nope/preflight", "vic", {}),
        ("GET", "/vms/nope/targets", "vic", {}),
        ("GET", "/vms/" + "x" * 300 + "/targets", "vic", {}),
        ("GET", "/vms/%00/targets", "vic", {}),
        ("GET", "/vms/..%2F..%2Fetc/targets", "vic", {}),
        ("POST", "/recommendations/0/approve", "bob", {}),
        ("POST", "/recommendations/99999999999999999999/approve", "bob", {}),
        ("POST", "/recommendations/1/reject", "bob", {"json": {"note": 5}}),
        ("POST", "/recommendations/1/reject", "bob", {"json": {"note": "x" * 3000}}),
        ("POST", "/migrations/-1/cancel", "bob", {}),
        ("POST", "/migrations/999999/cancel", "bob", {}),
        ("POST", "/migrations", "bob", {"json": {"vm": "", "target": "h01"}}),
        ("POST", "/migrations", "bob", {"json": {"vm": "vm001", "target": long}}),
        ("POST", "/migrations", "bob", {"json": {"vm": ["vm001"], "target": "h01"}}),
        ("POST", "/migrations", "bob", {"json": {"vm": "vm001", "target": "h01", "x": 1}}),
        ("POST", "/maintenance/nope/enter", "bob", {"json": {"force": "yes"}}),
        ("POST", "/maintenance/h01/exit", "bob", {"json": {"move_back": 1}}),
        ("POST", "/pause", "alice", {"json": {"reason": 7}}),
        ("POST", "/pause", "alice", {"json": {"allow_mandatory": "no"}}),
        ("PUT", "/automation", "alice", {"json": {"level": "FULL"}}),
        ("PUT", "/automation", "alice", {"json": {}}),
        ("POST", "/tasks", "bob", {"json": {"kind": "balance", "at": 1767225600}}),
        ("POST", "/tasks", "bob", {"json": {"kind": "balance", "at": "2020-01-01T00:00:00Z"}}),
        ("POST", "/tasks", "bob", {"json": {"kind": "balance", "at": "2030-01-01T00:00:00"}}),
        ("POST", "/tasks", "bob", {"json": {"kind": "balance", "cron": "* * * * * * *"}}),
        ("POST", "/tasks", "bob", {"json": {"kind": "balance", "cron": "99 99 99 99 99"}}),
        ("POST", "/tasks", "bob", {"json": {"kind": "balance", "cron": "0 0 30 2 *"}}),
        ("POST", "/tasks", "bob", {"json": {"kind": "balance", "cron": "*/0 * * * *"}}),
        ("POST", "/tasks", "bob", {"json": {"kind": "nuke", "cron": "0 2 * * *"}}),
        (
            "POST",
            "/tasks",
            "bob",
            {"json": {"kind": "balance", "cron": "0 2 * * *", "at": "2030-01-01T00:00:00Z"}},
        ),
        (
            "POST",
            "/tasks",
            "bob",
            {"json": {"kind": "balance", "args": {"vm": "vm001"}, "cron": "0 2 * * *"}},
        ),
        ("DELETE", "/tasks/" + "t" * 201, "bob", {}),
        ("DELETE", "/tasks/nope", "bob", {}),
    ]
    with (
        svc.client("vic") as vic,
        svc.client("bob") as bob,
        svc.client("alice") as alice,
        svc.client("") as nobody,
    ):
        clients = {"vic": vic, "bob": bob, "alice": alice}
        for method, path, user, kw in cases:
            for c in (clients[user], nobody):
                r = c.request(method, path, **kw)
                doc = check_answer(r)
                if c is nobody:
                    assert r.status_code in (401, 404, 405, 422), (path, r.status_code, doc)
        # a bad Authorization header of any kind is a 401, not a crash
        for value in (
            "Bearer",
            "Bearer \u00e9\u00e8",
            "Basic Zm9vOmJhcg==",
            "Bearer " + "x" * 8000,
        ):
            r = httpx.get(
                f"{svc.url}/api/v1/status", headers={"Authorization": value.encode("utf-8")}
            )
            assert r.status_code in (401, 403), (value[:20], r.status_code)
            check_answer(r)
    assert internal_errors(svc) == before


# -- scheduled tasks naming what does not exist --------------------------------------------------
def test_tasks_naming_unknown_vms_or_hosts_are_refused_naming_the_field(svc: Service) -> None:
    cases = [
        ({"kind": "migrate", "args": {"vm": "vm999", "target": "h01"}}, "args.vm", "vm999"),
        ({"kind": "migrate", "args": {"vm": "vm001", "target": "h99"}}, "args.target", "h99"),
        ({"kind": "maintenance_enter", "args": {"host": "nohost"}}, "args.host", "nohost"),
        ({"kind": "maintenance_exit", "args": {"host": "h-x"}}, "args.host", "h-x"),
    ]
    before = [t["id"] for t in svc.get("/tasks")]
    with svc.client("bob") as c:
        for body, field, name in cases:
            for when in ({"cron": "0 2 * * *"}, {"at": "2030-01-01T02:00:00Z"}):
                r = c.post("/tasks", json={**body, **when})
                assert r.status_code == 422, r.text
                doc = check_answer(r)
                assert doc["field"] == field and repr(name) in doc["error"], doc
        # the same with names that exist is accepted
        ok = c.post(
            "/tasks",
            json={"kind": "maintenance_enter", "args": {"host": "h01"}, "cron": "0 3 1 1 *"},
        )
        assert ok.status_code == 201, ok.text
        assert c.delete(f"/tasks/{ok.json()['id']}").status_code == 200
    assert [t["id"] for t in svc.get("/tasks")] == before


def test_task_errors_name_the_field_not_a_union_member(svc: Service) -> None:
    cases = [
        ({"kind": "nuke", "cron": "0 2 * * *"}, "kind"),
        ({"kind": "balance"}, "at"),
        ({"kind": "balance", "cron": "0 2 * * *", "at": "2030-01-01T00:00:00Z"}, "at"),
        ({"kind": "balance", "cron": 5}, "cron"),
        ({"kind": "balance", "cron": "every day"}, "cron"),
        ({"kind": "balance", "at": "2030-01-01T00:00:00"}, "at"),
        ({"kind": "balance", "at": "2020-01-01T00:00:00Z"}, "at"),
        ({"kind": "migrate", "args": {"vm": 5}, "cron": "0 2 * * *"}, "args.vm"),
        ({"kind": "migrate", "args": {"vm": "vm001"}, "cron": "0 2 * * *"}, "args.target"),
        ({"kind": "balance", "args": {"host": "h01"}, "cron": "0 2 * * *"}, "args.host"),
        ({"kind": "automation", "args": {"level": "max"}, "cron": "0 2 * * *"}, "args.level"),
    ]
    with svc.client("alice") as c:
        for body, field in cases:
            r = c.post("/tasks", json=body)
            assert r.status_code == 422, (body, r.text)
            assert check_answer(r)["field"] == field, (body, r.text)


def test_cli_schedule_add_shows_the_servers_message_for_an_unknown_vm(svc: Service) -> None:
    from balancer.cli import cli

    r = CliRunner().invoke(
        cli,
        [
            "schedule",
            "add",
            "migrate",
            "--cron",
            "0 2 * * *",
            "--arg",
            "vm=vm999",
            "--arg",
            "target=h01",
            "--url",
            svc.url,
        ],
        env={"BALANCER_TOKEN": TOKENS["bob"]},
        catch_exceptions=False,
    )
    assert r.exit_code == 2  # the server's 422: bad input
    assert "args.vm: no VM 'vm999' in the cluster" in r.stderr, r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.stderr


# -- a failing reload, whatever the exception ----------------------------------------------------
def test_every_failed_reload_sets_last_error_and_keeps_the_last_good_policy(
    tmp_path: Path,
) -> None:
    cfg = write_settings(
        tmp_path,
        policy={"automation": "manual", "threshold": 4},
        intervals={"collect_s": 1, "balance_s": 30, "policy_reload_s": 0.3},
    )
    policy_file = tmp_path / "policies" / "default.yaml"
    good_text = policy_file.read_text()
    with running(cfg) as svc:
        good = wait_for("the policy", lambda: (p := svc.get("/policy"))["digest"] and p)
        assert good["last_error"] is None and good["threshold"] == 4
        # what made the loader raise something other than a PolicyError (ValueError,
        # RecursionError), and a plain refusal
        bad_texts = [
            good_text + "threshold: !!int abc\n",
            good_text.replace("threshold: 4", "threshold: " + "9" * 5000),
            good_text + "deep: " + "[" * 5000 + "]" * 5000 + "\n",
            good_text.replace("threshold: 4", "threshold: many"),
        ]
        for text in bad_texts:
            policy_file.write_text(text)
            bad = wait_for(
                "the refusal",
                lambda: (p := svc.get("/policy"))["last_error"] and p,
                timeout_s=30,
            )
            assert str(policy_file.parent) in bad["last_error"], bad["last_error"]
            assert bad["digest"] == good["digest"] and bad["threshold"] == 4
            assert svc.get("/status")["policy"]["last_error"] == bad["last_error"]
            policy_file.write_text(good_text)
            wait_for(
                "the good policy again",
                lambda: svc.get("/policy")["last_error"] is None,
                timeout_s=30,
            )
        refusals = svc.get("/audit", params={"kind": "policy"})
        assert sum(a["result"] == "refused" for a in refusals) >= len(bad_texts)
        # the service went on: collects continue, nothing reached the last resort
        t0 = svc.get("/status")["last_collect"]
        wait_for("a new collect", lambda: svc.get("/status")["last_collect"] != t0, timeout_s=30)
        assert internal_errors(svc) == 0
    log = svc.log_path.read_text(errors="replace")
    assert "job policy_reload failed" not in log
    assert "Exception in ASGI application" not in log
