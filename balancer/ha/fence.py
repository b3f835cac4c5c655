"""The database side of fencing: the lease tables, and a trigger that refuses old epochs.

A leader's store carries its fencing token in every transaction
(``set_config('balancer.fence', '<epoch>:<cluster>', true)``, see
:class:`balancer.storage.Fence`). A trigger on the executor's tables -- ``requests``,
``journal`` and ``audit_records`` -- checks it on every insert and update:

* no token (an unfenced writer: the command line, a standby taking a request into the shared
  database) -> allowed;
* a token whose epoch still holds the cluster's lease (same epoch, a holder, not expired by
  ``clock_timestamp()``) -> allowed, and the row is stamped with the epoch (``journal.epoch``,
  ``requests.epoch``);
* otherwise -> ``RAISE ... USING ERRCODE = 'BF001'``, which the store turns into
  :class:`~balancer.errors.FencedError`.

The lease row is read ``FOR SHARE``: a takeover (an ``UPDATE`` of that row) waits for the
writes in flight under the old epoch to commit, so the new leader's recovery sees them.
"""

from __future__ import annotations

import zlib

import sqlalchemy as sa
from sqlalchemy.exc import SQLAlchemyError

from balancer.errors import StorageError
from balancer.ha.lease import SCHEMA, ha_metadata
from balancer.storage.db import redact
from balancer.storage.journal import FENCED_SQLSTATE

#: the tables whose writes are fenced (the journal and the audit trail)
FENCED_TABLES = ("requests", "journal", "audit_records")
#: the tables that carry the epoch of the write that made each row
STAMPED_TABLES = ("requests", "journal")

_FUNCTION = f"""
CREATE OR REPLACE FUNCTION {SCHEMA}.check_fence() RETURNS trigger
LANGUAGE plpgsql AS $fn$
DECLARE
    token text := current_setting('balancer.fence', true);
    fence_epoch bigint;
    fence_cluster text;
BEGIN
    IF token IS NULL OR token = '' THEN
        RETURN NEW;
    END IF;
    fence_epoch := split_part(token, ':', 1)::bigint;
    fence_cluster := substr(token, length(split_part(token, ':', 1)) + 2);
    PERFORM 1 FROM {SCHEMA}.leases
      WHERE cluster = fence_cluster AND epoch = fence_epoch AND holder IS NOT NULL
        AND expires_at > clock_timestamp()
      FOR SHARE;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'fenced: epoch % no longer holds the lease of cluster %',
            fence_epoch, fence_cluster
            USING ERRCODE = '{FENCED_SQLSTATE}';
    END IF;
    IF TG_ARGV[0] = 'stamp' THEN
        NEW.epoch := fence_epoch;
    END IF;
    RETURN NEW;
END
$fn$
"""


def install_ha_schema(engine: sa.Engine) -> None:
    """The lease tables and the fencing function (idempotent; safe when several instances
    start at once: one advisory lock serialises the DDL)."""
    try:
        with engine.begin() as conn:
            conn.execute(sa.text("SELECT pg_advisory_xact_lock(:k)"), {"k": _key(SCHEMA)})
            conn.execute(sa.text(f"CREATE SCHEMA IF NOT EXISTS {SCHEMA}"))
            ha_metadata.create_all(conn)
            conn.execute(sa.text(_FUNCTION))
    except SQLAlchemyError as exc:
        raise StorageError(f"cannot install the lease tables: {_first_line(exc)}") from exc


def install_fencing(engine: sa.Engine, schema: str | None = None) -> None:
    """The fencing triggers on the executor's tables of ``schema`` (default: the engine's
    search path), which must exist already (``Store`` creates them)."""
    install_ha_schema(engine)
    where = f"{schema}." if schema else ""
    try:
        with engine.begin() as conn:
            conn.execute(
                sa.text("SELECT pg_advisory_xact_lock(:k)"), {"k": _key(f"fence:{schema}")}
            )
            for table in STAMPED_TABLES:
                conn.execute(
                    sa.text(f"ALTER TABLE {where}{table} ADD COLUMN IF NOT EXISTS epoch bigint")
                )
            for table in FENCED_TABLES:
                arg = "stamp" if table in STAMPED_TABLES else "check"
                conn.execute(
                    sa.text(
                        f"CREATE OR REPLACE TRIGGER balancer_fence BEFORE INSERT OR UPDATE "
                        f"ON {where}{table} FOR EACH ROW "
                        f"EXECUTE FUNCTION {SCHEMA}.check_fence('{arg}')"
                    )
                )
    except SQLAlchemyError as exc:
        url = redact(engine.url.render_as_string(hide_password=False))
        raise StorageError(f"cannot install fencing at {url}: {_first_line(exc)}") from exc


def _key(name: str) -> int:
    return zlib.crc32(name.encode()) - 2**31


def _first_line(exc: BaseException) -> str:
    text = str(getattr(exc, "orig", None) or exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
