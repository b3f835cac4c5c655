"""Leases with fencing tokens on PostgreSQL: one row per cluster, the database's clock.

```
balancer_ha.leases     cluster (pk) | holder | epoch | acquired_at | renewed_at | expires_at
balancer_ha.instances  instance (pk) | started_at | seen_at | pid | api
```

* **acquire** -- take the cluster's lease when it is free (released) or expired, in one
  statement (``INSERT ... ON CONFLICT DO UPDATE ... WHERE``): the epoch becomes the old epoch + 1
  (the row is never deleted, so the epoch only grows). Two instances racing for one lease: the
  row lock decides, one gets it.
* **renew** -- push ``expires_at`` out by the lease length, only while the lease is still this
  instance's term (same holder and epoch) *and* not yet expired. A lease that lapsed is never
  revived: the next term is a new epoch, with a fresh recovery.
* **release** -- ``holder = NULL``, ``expires_at = now()``: another instance may take it at once.

Every time is the database's ``now()``; the instances' clocks only measure how long ago they
last renewed (``time.monotonic``), so that a paused process knows on waking that its lease is
gone before it asks the database.

The fencing trigger (:mod:`balancer.ha.fence`) checks a write's (cluster, epoch) against this
table, so a write from an old epoch is refused by the database itself.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.exc import SQLAlchemyError

from balancer.errors import StorageError
from balancer.storage.db import redact
from balancer.storage.schema import UTCDateTime

SCHEMA = "balancer_ha"

ha_metadata = sa.MetaData(schema=SCHEMA)

leases = sa.Table(
    "leases",
    ha_metadata,
    sa.Column("cluster", sa.String(200), primary_key=True),
    #: the instance holding it (NULL: released)
    sa.Column("holder", sa.String(200), nullable=True),
    #: the fencing token: grows by one with every new term, never goes back
    sa.Column("epoch", sa.BigInteger, nullable=False),
    sa.Column("acquired_at", UTCDateTime, nullable=False),
    sa.Column("renewed_at", UTCDateTime, nullable=False),
    sa.Column("expires_at", UTCDateTime, nullable=False),
)

instances = sa.Table(
    "instances",
    ha_metadata,
    sa.Column("instance", sa.String(200), primary_key=True),
    sa.Column("started_at", UTCDateTime, nullable=False),
    sa.Column("seen_at", UTCDateTime, nullable=False),
    sa.Column("pid", sa.Integer, nullable=True),
    sa.Column("api", sa.String(200), nullable=True),
)


@dataclass(frozen=True, slots=True, kw_only=True)
class Lease:
    """A lease as the database has it."""

    cluster: str
    holder: str | None
    epoch: int
    acquired_at: datetime
    renewed_at: datetime
    expires_at: datetime
    #: the database's clock when this was read
    now: datetime

    @property
    def valid(self) -> bool:
        return self.holder is not None and self.expires_at > self.now


@dataclass(frozen=True, slots=True, kw_only=True)
class Term:
    """A lease this instance holds: the fencing token is ``epoch``."""

    cluster: str
    holder: str
    epoch: int
    acquired_at: datetime
    expires_at: datetime


@dataclass(frozen=True, slots=True, kw_only=True)
class InstanceRow:
    instance: str
    started_at: datetime
    seen_at: datetime
    pid: int | None
    api: str | None
    #: the database's clock when this was read
    now: datetime


def _first_line(exc: BaseException) -> str:
    text = str(getattr(exc, "orig", None) or exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


class LeaseStore:
    """Acquire, renew and release cluster leases; list instances. One transaction per call;
    database errors become :class:`~balancer.errors.StorageError`."""

    def __init__(self, engine: sa.Engine) -> None:
        if engine.dialect.name != "postgresql":
            raise StorageError(
                "high availability needs PostgreSQL (database: postgresql://...), "
                f"not {engine.dialect.name}",
                subject=redact(engine.url.render_as_string(hide_password=False)),
            )
        self.engine = engine
        self.url = redact(engine.url.render_as_string(hide_password=False))

    @contextlib.contextmanager
    def _tx(self) -> Iterator[sa.Connection]:
        try:
            with self.engine.begin() as conn:
                yield conn
        except SQLAlchemyError as exc:
            raise StorageError(f"leases at {self.url}: {_first_line(exc)}") from exc

    # -- leases ------------------------------------------------------------------------------
    def acquire(self, cluster: str, holder: str, lease_s: float) -> Term | None:
        """Take the lease of ``cluster`` when it is free or expired; None when another instance
        holds it."""
        stmt = sa.text(
            f"""
            INSERT INTO {SCHEMA}.leases AS l
                (cluster, holder, epoch, acquired_at, renewed_at, expires_at)
            VALUES (:c, :h, 1, now(), now(), now() + make_interval(secs => :ttl))
            ON CONFLICT (cluster) DO UPDATE
                SET holder = EXCLUDED.holder, epoch = l.epoch + 1, acquired_at = now(),
                    renewed_at = now(), expires_at = EXCLUDED.expires_at
                WHERE l.holder IS NULL OR l.expires_at <= now()
            RETURNING epoch, acquired_at, expires_at
            """
        )
        with self._tx() as conn:
            row = conn.execute(stmt, {"c": cluster, "h": holder, "ttl": lease_s}).first()
        if row is None:
            return None
        return Term(
            cluster=cluster,
            holder=holder,
            epoch=int(row.epoch),
            acquired_at=_utc(row.acquired_at),
            expires_at=_utc(row.expires_at),
        )

    def renew(self, term: Term, lease_s: float) -> Term | None:
        """Extend a term that is still valid; None when it was lost (expired or taken)."""
        stmt = sa.text(
            f"""
            UPDATE {SCHEMA}.leases SET renewed_at = now(),
                   expires_at = now() + make_interval(secs => :ttl)
             WHERE cluster = :c AND holder = :h AND epoch = :e AND expires_at > now()
            RETURNING expires_at
            """
        )
        with self._tx() as conn:
            row = conn.execute(
                stmt, {"c": term.cluster, "h": term.holder, "e": term.epoch, "ttl": lease_s}
            ).first()
        if row is None:
            return None
        return Term(
            cluster=term.cluster,
            holder=term.holder,
            epoch=term.epoch,
            acquired_at=term.acquired_at,
            expires_at=_utc(row.expires_at),
        )

    def release(self, term: Term) -> bool:
        """Give the lease up now (a clean stop, a handover); False when it was no longer ours."""
        stmt = sa.text(
            f"""
            UPDATE {SCHEMA}.leases SET holder = NULL, expires_at = now()
             WHERE cluster = :c AND holder = :h AND epoch = :e
            """
        )
        with self._tx() as conn:
            res = conn.execute(stmt, {"c": term.cluster, "h": term.holder, "e": term.epoch})
        return bool(res.rowcount)

    def leases(self) -> list[Lease]:
        cols: list[Any] = [*leases.c, sa.func.now().label("now")]
        with self._tx() as conn:
            rows = conn.execute(sa.select(*cols).order_by(leases.c.cluster)).all()
        return [
            Lease(
                cluster=r.cluster,
                holder=r.holder,
                epoch=int(r.epoch),
                acquired_at=r.acquired_at,
                renewed_at=r.renewed_at,
                expires_at=r.expires_at,
                now=_utc(r.now),
            )
            for r in rows
        ]

    # -- instances ---------------------------------------------------------------------------
    def heartbeat(self, instance: str, *, pid: int | None, api: str | None) -> None:
        stmt = sa.text(
            f"""
            INSERT INTO {SCHEMA}.instances AS i (instance, started_at, seen_at, pid, api)
            VALUES (:i, now(), now(), :pid, :api)
            ON CONFLICT (instance) DO UPDATE SET seen_at = now(), pid = EXCLUDED.pid,
                   api = EXCLUDED.api
            """
        )
        with self._tx() as conn:
            conn.execute(stmt, {"i": instance, "pid": pid, "api": api})

    def restarted(self, instance: str) -> None:
        """A new process under this name: its start time is now."""
        with self._tx() as conn:
            conn.execute(
                sa.text(f"UPDATE {SCHEMA}.instances SET started_at = now() WHERE instance = :i"),
                {"i": instance},
            )

    def instances(self) -> list[InstanceRow]:
        cols: list[Any] = [*instances.c, sa.func.now().label("now")]
        with self._tx() as conn:
            rows = conn.execute(sa.select(*cols).order_by(instances.c.instance)).all()
        return [
            InstanceRow(
                instance=r.instance,
                started_at=r.started_at,
                seen_at=r.seen_at,
                pid=r.pid,
                api=r.api,
                now=_utc(r.now),
            )
            for r in rows
        ]

    def live_instances(self, within_s: float) -> list[str]:
        """Instances seen in the last ``within_s`` seconds (database clock)."""
        stmt = sa.text(
            f"SELECT instance FROM {SCHEMA}.instances "
            "WHERE seen_at > now() - make_interval(secs => :s) ORDER BY instance"
        )
        with self._tx() as conn:
            return [str(r.instance) for r in conn.execute(stmt, {"s": within_s})]


def _utc(value: Any) -> datetime:
    assert isinstance(value, datetime)
    from datetime import UTC

    return value.astimezone(UTC) if value.tzinfo else value.replace(tzinfo=UTC)
