"""Structured logs: every line that concerns a plan or a VM carries ``plan_id`` and ``vm``.

``log.info("queued", extra=fields(plan_id=p, vm=v))``. Text lines end with ``key=value``
pairs; with ``log_json: true`` each line is one JSON object.
"""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime
from typing import Any

#: attributes that our code may attach to a record (``extra=``)
FIELDS = (
    "plan_id",
    "vm",
    "host",
    "migration_id",
    "recommendation_id",
    "task_id",
    "user",
    "reason",
    "policy_digest",
)

log = logging.getLogger("balancer.service")


def fields(**kw: object) -> dict[str, object]:
    """The ``extra`` of a log call, without the empty values."""
    return {k: v for k, v in kw.items() if v is not None and v != ""}


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        doc: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        for k in FIELDS:
            v = getattr(record, k, None)
            if v is not None:
                doc[k] = v
        if record.exc_info:
            doc["error"] = self.formatException(record.exc_info)
        return json.dumps(doc, default=str)


class TextFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        base = super().format(record)
        extra = " ".join(
            f"{k}={getattr(record, k)}" for k in FIELDS if getattr(record, k, None) is not None
        )
        return f"{base} {extra}" if extra else base


def setup_logging(*, as_json: bool, level: int = logging.INFO) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if as_json else TextFormatter())
    root = logging.getLogger()
    for h in list(root.handlers):
        root.removeHandler(h)
    root.addHandler(handler)
    root.setLevel(level)
    for noisy in ("apscheduler", "uvicorn.access", "httpx"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    # "skipped: maximum number of running instances reached" is how max_instances=1 works
    logging.getLogger("apscheduler.scheduler").setLevel(logging.ERROR)
