"""The tamper-evident audit trail: append-only records, each carrying the hash of the one before.

Chain format (see docs/executor.md):

* ``seq`` numbers the records 1, 2, 3, ... without gaps; ``audit_head`` holds the last ``seq``
  and hash.
* ``hash = sha256(prev_hash + "\\n" + canonical)`` where ``canonical`` is the JSON of every
  content field (``seq`` included; keys sorted, no spaces, datetimes as
  ``YYYY-MM-DDTHH:MM:SS.ffffffZ``, floats rounded to 6 decimals before they are stored).
* The first record's ``prev_hash`` is :data:`GENESIS_HASH`.

:func:`verify` walks the chain in ``seq`` order and names the first bad record: an edited one
(its hash does not match its content), a deleted one (a gap in ``seq`` or a missing tail
according to the head), or a reordered one (a record whose ``seq`` or ``prev_hash`` is not the
one that must come next). With the anchor (:mod:`balancer.storage.anchor`) it also names
deleted newest records and a rewound head.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass, fields
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa

from balancer.errors import AuditChainError
from balancer.storage import anchor as anchor_mod
from balancer.storage.anchor import AnchorEntry
from balancer.storage.schema import GENESIS_HASH, audit_head, audit_records

#: the kinds of records
KIND_PLAN = "plan"
KIND_REQUEST = "request"
KIND_OUTCOME = "outcome"

#: ``conn.info`` key: the head (seq, hash) a transaction's appends advanced the chain to; the
#: store writes it to the anchor once the transaction has committed
HEAD_KEY = "balancer.audit_head"


@dataclass(frozen=True, slots=True, kw_only=True)
class AuditEntry:
    """What a caller appends; the chain fields are added by :func:`append`."""

    at: datetime
    kind: str
    who: str
    plan_id: str | None = None
    request_id: int | None = None
    vm: str | None = None
    source: str | None = None
    target: str | None = None
    priority_class: str | None = None
    reason: str | None = None
    rule: str | None = None
    policy_digest: str | None = None
    gain: float | None = None
    result: str | None = None
    duration_s: float | None = None
    downtime_ms: float | None = None
    data_copied_mib: float | None = None
    error: str | None = None
    detail: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class AuditRecord:
    seq: int
    at: datetime
    kind: str
    who: str
    plan_id: str | None
    request_id: int | None
    vm: str | None
    source: str | None
    target: str | None
    priority_class: str | None
    reason: str | None
    rule: str | None
    policy_digest: str | None
    gain: float | None
    result: str | None
    duration_s: float | None
    downtime_ms: float | None
    data_copied_mib: float | None
    error: str | None
    detail: str | None
    prev_hash: str
    hash: str

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["at"] = format_time(self.at)
        return d


_ENTRY_FIELDS = tuple(f.name for f in fields(AuditEntry))
_FLOAT_FIELDS = ("gain", "duration_s", "downtime_ms", "data_copied_mib")
COLUMNS = tuple(f.name for f in fields(AuditRecord))


def format_time(t: datetime) -> str:
    return t.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _rounded(entry: AuditEntry) -> dict[str, Any]:
    doc = {name: getattr(entry, name) for name in _ENTRY_FIELDS}
    for name in _FLOAT_FIELDS:
        if doc[name] is not None:
            doc[name] = round(float(doc[name]), 6)
    # the store keeps microseconds; so does the hash
    doc["at"] = entry.at.astimezone(UTC)
    return doc


def canonical(seq: int, content: Mapping[str, Any]) -> str:
    doc = {k: content[k] for k in _ENTRY_FIELDS}
    doc["at"] = format_time(doc["at"])
    doc["seq"] = seq
    return json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=True)


def chain_hash(prev_hash: str, seq: int, content: Mapping[str, Any]) -> str:
    return hashlib.sha256((prev_hash + "\n" + canonical(seq, content)).encode()).hexdigest()


def append(conn: sa.Connection, entry: AuditEntry) -> int:
    """Append one record inside the caller's transaction; returns its ``seq``.

    The head row is locked (``SELECT ... FOR UPDATE`` on PostgreSQL; SQLite transactions are
    ``BEGIN IMMEDIATE``), so concurrent writers extend the chain one after the other."""
    head = conn.execute(
        sa.select(audit_head.c.seq, audit_head.c.hash).where(audit_head.c.id == 1).with_for_update()
    ).one()
    seq = int(head.seq) + 1
    content = _rounded(entry)
    digest = chain_hash(head.hash, seq, content)
    conn.execute(
        sa.insert(audit_records).values(
            seq=seq,
            prev_hash=head.hash,
            hash=digest,
            outcome_of=entry.request_id if entry.kind == KIND_OUTCOME else None,
            **content,
        )
    )
    conn.execute(sa.update(audit_head).where(audit_head.c.id == 1).values(seq=seq, hash=digest))
    conn.info[HEAD_KEY] = (seq, digest)
    return seq


def _row_record(row: sa.Row[Any]) -> AuditRecord:
    m = row._mapping
    return AuditRecord(**{name: m[name] for name in COLUMNS})


def verify(
    conn: sa.Connection,
    anchor: Mapping[int, list[AnchorEntry]] | None = None,
    anchor_path: str = "",
) -> int:
    """Check the whole chain; returns the number of records, raises :class:`AuditChainError`
    naming the first bad record. With ``anchor`` (read *before* this transaction began, see
    :func:`balancer.storage.anchor.read_anchor`) every anchored record must have its anchored
    hash, and the chain must reach the last anchored record."""
    expected_seq = 1
    prev = GENESIS_HASH
    cols = [audit_records.c[name] for name in COLUMNS]
    rows = conn.execute(sa.select(*cols).order_by(audit_records.c.seq)).yield_per(1000)
    for row in rows:
        rec = _row_record(row)
        if rec.seq > expected_seq:
            raise AuditChainError(
                f"audit record {expected_seq} is missing (the chain jumps to {rec.seq})",
                record_id=expected_seq,
            )
        if rec.seq != expected_seq:
            raise AuditChainError(
                f"audit record {rec.seq} is out of order (expected {expected_seq})",
                record_id=rec.seq,
            )
        content = {name: getattr(rec, name) for name in _ENTRY_FIELDS}
        if chain_hash(rec.prev_hash, rec.seq, content) != rec.hash:
            raise AuditChainError(
                f"audit record {rec.seq} was altered: its content does not match its hash",
                record_id=rec.seq,
            )
        if rec.prev_hash != prev:
            raise AuditChainError(
                f"audit record {rec.seq} does not follow record {rec.seq - 1}: "
                "the chain was reordered or a record was replaced",
                record_id=rec.seq,
            )
        if anchor:
            anchor_mod.check_record(anchor, anchor_path, rec.seq, rec.hash)
        prev = rec.hash
        expected_seq += 1
    count = expected_seq - 1
    head = conn.execute(sa.select(audit_head.c.seq, audit_head.c.hash)).first()
    if anchor:
        anchor_mod.check_head(anchor, anchor_path, count, int(head.seq) if head else 0)
    if head is not None and (int(head.seq) != count or head.hash != prev):
        if int(head.seq) > count:
            raise AuditChainError(
                f"audit record {count + 1} is missing: the trail ends at {count} "
                f"but {head.seq} records were written",
                record_id=count + 1,
            )
        raise AuditChainError(
            f"the audit head does not match the last record {count}", record_id=count
        )
    return count


@dataclass(frozen=True, slots=True, kw_only=True)
class AuditQuery:
    since: datetime | None = None
    until: datetime | None = None
    vm: str | None = None
    host: str | None = None
    user: str | None = None
    kind: str | None = None
    request_id: int | None = None
    limit: int | None = None


def query(conn: sa.Connection, q: AuditQuery) -> Iterator[AuditRecord]:
    t = audit_records
    stmt = sa.select(*[t.c[name] for name in COLUMNS]).order_by(t.c.seq)
    if q.since is not None:
        stmt = stmt.where(t.c.at >= q.since)
    if q.until is not None:
        stmt = stmt.where(t.c.at < q.until)
    if q.vm is not None:
        stmt = stmt.where(t.c.vm == q.vm)
    if q.host is not None:
        stmt = stmt.where(sa.or_(t.c.source == q.host, t.c.target == q.host))
    if q.user is not None:
        stmt = stmt.where(t.c.who == q.user)
    if q.kind is not None:
        stmt = stmt.where(t.c.kind == q.kind)
    if q.request_id is not None:
        stmt = stmt.where(t.c.request_id == q.request_id)
    if q.limit is not None:
        stmt = stmt.limit(q.limit)
    for row in conn.execute(stmt):
        yield _row_record(row)


def export_json(records: list[AuditRecord]) -> str:
    return json.dumps([r.to_dict() for r in records], indent=2)


def export_csv(records: list[AuditRecord]) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(COLUMNS), lineterminator="\n")
    writer.writeheader()
    for r in records:
        writer.writerow({k: "" if v is None else v for k, v in r.to_dict().items()})
    return buf.getvalue()
