"""Schemathesis hooks for the API fuzz (loaded through ``SCHEMATHESIS_HOOKS``): a check that
every error answer is ours and says what is wrong.

* every response carries an ``X-Request-ID`` header;
* a 4xx body is JSON with a non-empty ``error`` and the same ``request_id``;
* a 422 names the field (``field``), and its message starts with it.
"""

from __future__ import annotations

import json
from typing import Any

import schemathesis


@schemathesis.check
def error_names_what_is_wrong(ctx: Any, response: Any, case: Any) -> bool | None:
    rid = response.headers.get("x-request-id") or response.headers.get("X-Request-ID")
    if isinstance(rid, list):
        rid = rid[0] if rid else None
    if not rid:
        raise AssertionError(f"{response.status_code}: no X-Request-ID header")
    if not 400 <= response.status_code < 500:
        return None
    try:
        body = json.loads(response.content)
    except ValueError as exc:
        raise AssertionError(f"{response.status_code}: the body is not JSON: {exc}") from None
    if not isinstance(body, dict) or not str(body.get("error") or "").strip():
        raise AssertionError(f"{response.status_code}: no error message in {body!r}"[:500])
    if body.get("request_id") != rid:
        raise AssertionError(f"{response.status_code}: request_id {body.get('request_id')!r}")
    if response.status_code in (413, 422):
        field = body.get("field")
        if not field or not str(body["error"]).startswith(f"{field}:"):
            raise AssertionError(f"{response.status_code}: no field named in {body!r}"[:500])
    return None
