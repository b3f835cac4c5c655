"""Engines for the durable store: one SQLAlchemy code path for SQLite and PostgreSQL.

* ``None`` -> an SQLite file ``balancer.db`` under the state directory (``$BALANCER_STATE_DIR``
  or ``./state``).
* ``sqlite:///path`` -> that file. SQLite runs in WAL mode with a busy timeout, and every
  transaction starts with ``BEGIN IMMEDIATE`` so that two writers never deadlock on an upgrade
  from a read lock (the audit chain reads the head and appends in one transaction).
* ``postgresql://...`` / ``postgres://...`` -> the psycopg 3 driver (``postgresql+psycopg``).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, SQLAlchemyError

from balancer.errors import StorageError

STATE_DIR_ENV = "BALANCER_STATE_DIR"
DB_URL_ENV = "BALANCER_DB"


def state_dir() -> Path:
    return Path(os.environ.get(STATE_DIR_ENV) or "state")


def default_url() -> str:
    """``$BALANCER_DB`` when set, else an SQLite file under the state directory."""
    env = os.environ.get(DB_URL_ENV)
    if env:
        return env
    return f"sqlite:///{state_dir() / 'balancer.db'}"


def normalize_url(url: str | None) -> str:
    """The SQLAlchemy URL to use: PostgreSQL always through psycopg 3."""
    raw = url or default_url()
    if raw.startswith("postgres://"):
        raw = "postgresql://" + raw[len("postgres://") :]
    if raw.startswith("postgresql://"):
        raw = "postgresql+psycopg://" + raw[len("postgresql://") :]
    return raw


def redact(url: str) -> str:
    """The URL without its password, for messages."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except ArgumentError:
        return "<invalid database URL>"


def make_engine(url: str | None = None) -> sa.Engine:
    """An engine for ``url`` (see the module doc); raises :class:`StorageError` on a bad URL."""
    full = normalize_url(url)
    try:
        parsed = make_url(full)
    except ArgumentError as exc:
        raise StorageError(f"invalid database URL {full!r}: {exc}", subject=full) from exc
    backend = parsed.get_backend_name()
    if backend == "sqlite":
        return _sqlite_engine(parsed)
    if backend == "postgresql":
        try:
            return sa.create_engine(parsed, pool_pre_ping=True, future=True)
        except (ArgumentError, SQLAlchemyError, ImportError) as exc:
            raise StorageError(f"cannot use database {redact(full)}: {exc}") from exc
    raise StorageError(
        f"unsupported database {redact(full)}: use sqlite:///path or postgresql://...",
        subject=redact(full),
    )


def _sqlite_engine(parsed: sa.URL) -> sa.Engine:
    db = parsed.database
    if db and db != ":memory:" and not db.startswith("file:"):
        try:
            Path(db).parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StorageError(f"cannot create the directory of {db}: {exc}", subject=db) from exc
    engine = sa.create_engine(parsed, future=True, connect_args={"timeout": 30})

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        # let SQLAlchemy's "begin" event issue BEGIN itself (pysqlite's own handling is lazy)
        dbapi_conn.isolation_level = None
        cur = dbapi_conn.cursor()
        try:
            cur.execute("PRAGMA busy_timeout = 30000")
            cur.execute("PRAGMA foreign_keys = ON")
            if db and db != ":memory:":
                cur.execute("PRAGMA journal_mode = WAL")
                # WAL + NORMAL: durable across a crash or kill of the process (not power loss)
                cur.execute("PRAGMA synchronous = NORMAL")
        finally:
            cur.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: sa.Connection) -> None:
        conn.exec_driver_sql("BEGIN IMMEDIATE")

    return engine
