"""The one schema of the balancer's durable store (SQLite or PostgreSQL, one code path).

Tables live on :data:`metadata`; the service adds its own tables to the same object and
:func:`create_schema` creates whatever is missing at start.

* ``plans`` -- every plan handed to the executor (who, when, premises, digests).
* ``requests`` -- every migration request and its current state (the durable queue).
* ``journal`` -- every state change of a request, written *before* the executor acts on it.
* ``audit_records`` -- the append-only, hash-chained audit trail (``seq`` is the position).
* ``audit_head`` -- one row: the last ``seq`` and hash, so that a deleted tail is noticed too.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Dialect

#: the ``prev_hash`` of the first audit record
GENESIS_HASH = "0" * 64

metadata = sa.MetaData()


class UTCDateTime(sa.TypeDecorator[datetime]):
    """A UTC-aware datetime on every backend (SQLite stores it naive, we read it as UTC)."""

    impl = sa.DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to the store; datetimes are UTC-aware")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: Any, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        assert isinstance(value, datetime)
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value.astimezone(UTC)


Double = sa.Float(precision=53).with_variant(sa.Double(), "postgresql")

plans = sa.Table(
    "plans",
    metadata,
    sa.Column("id", sa.String(64), primary_key=True),
    sa.Column("who", sa.String(200), nullable=False),
    sa.Column("created_at", UTCDateTime, nullable=False),
    sa.Column("made_at", UTCDateTime, nullable=False),
    sa.Column("snapshot_digest", sa.String(64), nullable=False, default=""),
    sa.Column("policy_digest", sa.String(64), nullable=False, default=""),
    sa.Column("moves", sa.Integer, nullable=False),
    sa.Column("expected_gain", Double, nullable=False, default=0.0),
    #: accepted | superseded
    sa.Column("state", sa.String(20), nullable=False),
    sa.Column("detail", sa.Text, nullable=False, default=""),
)

requests = sa.Table(
    "requests",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("plan_id", sa.String(64), sa.ForeignKey("plans.id"), nullable=True, index=True),
    sa.Column("step", sa.Integer, nullable=True),
    sa.Column("vm", sa.String(200), nullable=False, index=True),
    sa.Column("source", sa.String(200), nullable=False),
    #: the target of the current attempt (changes on a retry)
    sa.Column("target", sa.String(200), nullable=False),
    sa.Column("requested_target", sa.String(200), nullable=False),
    sa.Column("priority", sa.Integer, nullable=False),
    sa.Column("priority_class", sa.String(40), nullable=False),
    sa.Column("who", sa.String(200), nullable=False),
    sa.Column("reason", sa.String(100), nullable=False),
    sa.Column("rule", sa.String(200), nullable=True),
    sa.Column("gain", Double, nullable=False, default=0.0),
    sa.Column("policy_digest", sa.String(64), nullable=False, default=""),
    sa.Column("allow_retry", sa.Boolean, nullable=False, default=False),
    sa.Column("preempt", sa.Boolean, nullable=False, default=False),
    #: queued | starting | running | aborting | succeeded | failed | aborted | skipped | superseded
    sa.Column("state", sa.String(20), nullable=False, index=True),
    sa.Column("attempt", sa.Integer, nullable=False, default=1),
    sa.Column("job_id", sa.String(200), nullable=True),
    sa.Column("created_at", UTCDateTime, nullable=False),
    sa.Column("started_at", UTCDateTime, nullable=True),
    sa.Column("updated_at", UTCDateTime, nullable=False),
    sa.Column("ended_at", UTCDateTime, nullable=True),
    sa.Column("duration_s", Double, nullable=True),
    sa.Column("downtime_ms", Double, nullable=True),
    sa.Column("data_copied_mib", Double, nullable=True),
    sa.Column("skip_reason", sa.String(40), nullable=True),
    sa.Column("error", sa.Text, nullable=True),
    #: the reason of an abort the executor asked for (stall, time_limit, cancelled, preempted)
    sa.Column("abort_reason", sa.String(40), nullable=True),
)

journal = sa.Table(
    "journal",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("request_id", sa.Integer, sa.ForeignKey("requests.id"), nullable=False, index=True),
    sa.Column("at", UTCDateTime, nullable=False),
    sa.Column("event", sa.String(20), nullable=False),
    sa.Column("source", sa.String(200), nullable=True),
    sa.Column("target", sa.String(200), nullable=True),
    sa.Column("job_id", sa.String(200), nullable=True),
    sa.Column("fraction", Double, nullable=True),
    sa.Column("detail", sa.Text, nullable=False, default=""),
)

audit_records = sa.Table(
    "audit_records",
    metadata,
    #: the position in the chain: 1, 2, 3, ... (assigned under a lock on ``audit_head``)
    sa.Column("seq", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("at", UTCDateTime, nullable=False, index=True),
    #: plan | request | outcome
    sa.Column("kind", sa.String(20), nullable=False),
    sa.Column("who", sa.String(200), nullable=False, index=True),
    sa.Column("plan_id", sa.String(64), nullable=True),
    sa.Column("request_id", sa.Integer, nullable=True, index=True),
    sa.Column("vm", sa.String(200), nullable=True, index=True),
    sa.Column("source", sa.String(200), nullable=True),
    sa.Column("target", sa.String(200), nullable=True),
    sa.Column("priority_class", sa.String(40), nullable=True),
    sa.Column("reason", sa.String(100), nullable=True),
    sa.Column("rule", sa.String(200), nullable=True),
    sa.Column("policy_digest", sa.String(64), nullable=True),
    sa.Column("gain", Double, nullable=True),
    sa.Column("result", sa.String(20), nullable=True),
    sa.Column("duration_s", Double, nullable=True),
    sa.Column("downtime_ms", Double, nullable=True),
    sa.Column("data_copied_mib", Double, nullable=True),
    sa.Column("error", sa.Text, nullable=True),
    sa.Column("detail", sa.Text, nullable=True),
    #: set only on ``outcome`` records: the database itself refuses a second outcome
    sa.Column("outcome_of", sa.Integer, nullable=True, unique=True),
    sa.Column("prev_hash", sa.String(64), nullable=False),
    sa.Column("hash", sa.String(64), nullable=False),
)

audit_head = sa.Table(
    "audit_head",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("seq", sa.Integer, nullable=False),
    sa.Column("hash", sa.String(64), nullable=False),
)


def create_schema(engine: sa.Engine) -> None:
    """Create every missing table (idempotent) and the audit head row."""
    try:
        metadata.create_all(engine)
    except (sa.exc.ProgrammingError, sa.exc.IntegrityError, sa.exc.OperationalError):
        # another process (a second service instance) created them at the same moment
        time.sleep(0.5)
        metadata.create_all(engine)

    try:
        with engine.begin() as conn:
            if conn.execute(sa.select(audit_head.c.id)).first() is None:
                conn.execute(sa.insert(audit_head).values(id=1, seq=0, hash=GENESIS_HASH))
    except sa.exc.IntegrityError:
        pass  # another process created it at the same moment
