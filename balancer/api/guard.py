"""The API's outermost layer (plain ASGI): request ids, body limits, the audit of mutating
calls, and the last-resort 500.

* **Request id.** Every request gets one (a sane ``X-Request-ID`` from the client is kept,
  anything else is replaced by a new one); it is in ``request.state.request_id``, in every
  error body and in the ``X-Request-ID`` header of every response.
* **Body size.** A body above ``api.max_body_bytes`` (default 1 MiB) is answered 413 naming
  the limit: at once when ``Content-Length`` says so, else as soon as the streamed chunks pass
  the limit. Nothing larger is ever held in memory, nor parsed.
* **JSON depth.** A JSON body nested deeper than ``api.max_json_depth`` (default 32) is
  answered 422 naming the depth before any parser sees it (no RecursionError).
* **Audit.** Every mutating call (POST/PUT/DELETE/PATCH under ``/api/``) by an authenticated
  user is recorded with its status before the response goes out.
* **Last resort.** An exception that no handler mapped (a bug) is logged once, with its
  traceback and the request id, and answered 500 with the request id; nothing propagates to
  the server (which would log it a second time). ``on_internal_error`` counts them (the
  metric ``balancer_api_internal_errors_total``).
"""

from __future__ import annotations

import json
import logging
import re
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.types import ASGIApp, Message, Receive, Scope, Send

log = logging.getLogger("balancer.api")

REQUEST_ID_HEADER = "X-Request-ID"
_CLIENT_ID = re.compile(r"[A-Za-z0-9._:-]{1,64}")
#: a JSON string (skipped whole, escapes included) or one bracket
_JSON_TOKEN = re.compile(rb'"(?:[^"\\]|\\.)*"|[\[\]{}]', re.DOTALL)
#: what may decode to a lone UTF-16 surrogate (an escape, or raw bytes that json lets pass)
_SURROGATE_HINT = re.compile(rb"\\u[dD][89a-fA-F]|\xed[\xa0-\xbf]")
_MUTATING = frozenset({"POST", "PUT", "DELETE", "PATCH"})
#: calls that change no state of the balancer's and are not audited: host agents' samples
#: (one every interval per host: telemetry, not a decision)
_NOT_AUDITED = frozenset({"/api/v1/ingest/host"})

RecordCall = Callable[[str, str, str], None]  # (who, action, result)


def json_depth(body: bytes) -> int:
    """The deepest nesting of arrays and objects in ``body``, read as JSON text, without
    parsing it (brackets inside strings do not count; an unterminated string counts its
    brackets, so the figure is never below the real one)."""
    depth = deepest = 0
    for m in _JSON_TOKEN.finditer(body):
        c = m.group()
        if c in (b"[", b"{"):
            depth += 1
            deepest = max(deepest, depth)
        elif c in (b"]", b"}"):
            depth = max(depth - 1, 0)
    return deepest


def lone_surrogate(body: bytes) -> str | None:
    """The field of the first string of a JSON body that holds a lone UTF-16 surrogate (not
    text: it cannot be written to a file, a database or a response), or None."""
    if not _SURROGATE_HINT.search(body):
        return None
    try:
        doc = json.loads(body)
    except ValueError:
        return None  # not JSON: FastAPI answers that itself
    todo: list[tuple[str, object]] = [("", doc)]
    while todo:
        where, value = todo.pop()
        items: list[tuple[str, object]] = []
        if isinstance(value, str):
            try:
                value.encode("utf-8")
            except UnicodeEncodeError:
                return where or "body"
        elif isinstance(value, dict):
            items = [(str(k), k) for k in value] + [(str(k), v) for k, v in value.items()]
        elif isinstance(value, list):
            items = [(str(i), v) for i, v in enumerate(value)]
        todo.extend((f"{where}.{k}" if where else k, v) for k, v in items)
    return None


def _is_json(content_type: str) -> bool:
    """FastAPI reads a body as JSON when it has no content type or a JSON one."""
    media = content_type.split(";", 1)[0].strip().lower()
    return not media or media == "application/json" or media.endswith("+json")


def _size_text(n: int) -> str:
    return f"{n // 1048576} MiB" if n % 1048576 == 0 else f"{n} bytes"


class _ClientGone(Exception):
    """The client disconnected before its body arrived: there is no one to answer."""


class Guard:
    """See the module docstring; wraps the whole FastAPI application."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        max_body_bytes: int,
        max_json_depth: int,
        record_call: RecordCall | None = None,
        on_internal_error: Callable[[], None] | None = None,
    ) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes
        self.max_json_depth = max_json_depth
        self.record_call = record_call
        self.on_internal_error = on_internal_error

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        state: dict[str, Any] = scope.setdefault("state", {})
        outer = "request_id" in state  # a mounted application under another guard
        rid = state.get("request_id") or self._request_id(scope)
        state["request_id"] = rid
        started = False

        async def send_with_id(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                if not outer:
                    headers = list(message.get("headers", []))
                    headers.append((REQUEST_ID_HEADER.lower().encode(), rid.encode()))
                    message = {**message, "headers": headers}
                # recorded before the answer goes out; if that fails, the answer is a 500
                await self._audit(scope, int(message["status"]))
                started = True
            await send(message)

        try:
            refusal, replay = await self._read_body(scope, receive)
            if refusal is not None:
                status, text, field = refusal
                await self._error(send_with_id, status, text, field, rid)
                return
            await self.app(scope, replay, send_with_id)
        except _ClientGone:
            return
        except Exception as exc:
            # the last resort: logged here once, never re-raised (the server would log again)
            if self.on_internal_error is not None:
                self.on_internal_error()
            log.error(
                "unexpected error in %s %s (request %s): %s: %s",
                scope.get("method"),
                scope.get("path"),
                rid,
                type(exc).__name__,
                str(exc)[:500],
                exc_info=exc,
                extra={"request_id": rid},
            )
            if not started:
                try:
                    await self._audit(scope, 500)
                except Exception as again:  # the store itself fails: say so, answer anyway
                    log.error("request %s: the 500 is not audited: %s", rid, again)
                await self._error(
                    send,
                    500,
                    f"internal error ({type(exc).__name__}); the log has it under request {rid}",
                    None,
                    rid,
                    with_id=not outer,
                )

    @staticmethod
    def _request_id(scope: Scope) -> str:
        for k, v in scope.get("headers", []):
            if k == b"x-request-id":
                text = str(v.decode("latin-1"))
                if _CLIENT_ID.fullmatch(text):
                    return text
        return uuid.uuid4().hex

    async def _read_body(
        self, scope: Scope, receive: Receive
    ) -> tuple[tuple[int, str, str] | None, Receive]:
        """Read the body up to the limit; return a refusal, or a receive that replays it."""
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        limit = self.max_body_bytes
        too_large = (
            413,
            f"body: the request body exceeds the limit of {_size_text(limit)} "
            f"(api.max_body_bytes = {limit})",
            "body",
        )
        length = headers.get("content-length", "")
        if length.isdigit() and int(length) > limit:
            return too_large, receive
        chunks: list[bytes] = []
        size = 0
        more = True
        while more:
            message = await receive()
            if message["type"] != "http.request":
                raise _ClientGone
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                return too_large, receive
            if chunk:
                chunks.append(chunk)
            more = bool(message.get("more_body", False))
        body = b"".join(chunks)
        if body and _is_json(headers.get("content-type", "")):
            depth = json_depth(body)
            if depth > self.max_json_depth:
                return (
                    422,
                    f"body: JSON nested {depth} levels deep; at most {self.max_json_depth} "
                    f"(api.max_json_depth)",
                    "body",
                ), receive
            where = lone_surrogate(body)
            if where is not None:
                return (
                    422,
                    f"{where}: holds a lone UTF-16 surrogate (\\ud800-\\udfff), which is not text",
                    where,
                ), receive
        return None, _replay({"type": "http.request", "body": body, "more_body": False}, receive)

    async def _audit(self, scope: Scope, status: int) -> None:
        if self.record_call is None or scope.get("method") not in _MUTATING:
            return
        path = str(scope.get("path", ""))
        root = str(scope.get("root_path", ""))
        if root and path.startswith(root):
            path = path[len(root) :]
        user = scope.get("state", {}).get("user")
        if user is None or not path.startswith("/api/") or path in _NOT_AUDITED:
            return
        await run_in_threadpool(self.record_call, user, f"{scope['method']} {path}", str(status))

    @staticmethod
    async def _error(
        send: Callable[[Message], Awaitable[None]],
        status: int,
        text: str,
        field: str | None,
        rid: str,
        *,
        with_id: bool = False,
    ) -> None:
        body = json.dumps({"error": text, "field": field, "request_id": rid}).encode()
        headers = [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
        ]
        if with_id:
            headers.append((REQUEST_ID_HEADER.lower().encode(), rid.encode()))
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})


def _replay(first: Message, receive: Receive) -> Receive:
    """A receive that gives ``first`` (the buffered body) once, then what the server says."""
    pending = [first]

    async def replay() -> Message:
        if pending:
            return pending.pop()
        return await receive()

    return replay
