"""The durable journal: plans, requests and every state change, written before they are acted on.

:class:`Store` is the one object the executor, the CLI and the service use. Every method is one
transaction; a final outcome (the request's new state, its journal event and its audit record)
is written atomically, and only once: the state change is conditional on the request not being
final yet, and the audit table refuses a second outcome for the same request.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, fields, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.exc import SQLAlchemyError

from balancer.errors import AuditChainError, FencedError, InputError, StorageError
from balancer.storage import anchor as anchor_mod
from balancer.storage import audit as audit_mod
from balancer.storage.anchor import Anchor
from balancer.storage.audit import AuditEntry, AuditQuery, AuditRecord
from balancer.storage.db import make_engine, normalize_url, redact
from balancer.storage.schema import create_schema, journal, plans, requests

#: request states
QUEUED = "queued"
STARTING = "starting"
RUNNING = "running"
ABORTING = "aborting"
SUCCEEDED = "succeeded"
FAILED = "failed"
ABORTED = "aborted"
SKIPPED = "skipped"
SUPERSEDED = "superseded"

ACTIVE_STATES = frozenset({QUEUED, STARTING, RUNNING, ABORTING})
IN_FLIGHT_STATES = frozenset({STARTING, RUNNING, ABORTING})
FINAL_STATES = frozenset({SUCCEEDED, FAILED, ABORTED, SKIPPED, SUPERSEDED})


#: the SQLSTATE the fencing trigger raises (balancer/ha/fence.py): a write from an old epoch
FENCED_SQLSTATE = "BF001"


@dataclass(frozen=True, slots=True, kw_only=True)
class Fence:
    """The fencing token a leader's writes carry: the cluster and the epoch of its lease.
    Every transaction of a fenced store sets it (``balancer.fence``); on PostgreSQL with the
    fencing trigger installed, a write whose epoch no longer holds the lease is refused."""

    cluster: str
    epoch: int

    @property
    def setting(self) -> str:
        return f"{self.epoch}:{self.cluster}"


@dataclass(frozen=True, slots=True, kw_only=True)
class NewPlan:
    id: str
    who: str
    made_at: datetime
    snapshot_digest: str = ""
    policy_digest: str = ""
    expected_gain: float = 0.0
    detail: str = ""


@dataclass(frozen=True, slots=True, kw_only=True)
class NewRequest:
    vm: str
    source: str
    target: str
    priority: int
    priority_class: str
    who: str
    reason: str
    rule: str | None = None
    gain: float = 0.0
    policy_digest: str = ""
    allow_retry: bool = False
    preempt: bool = False
    plan_id: str | None = None
    step: int | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class RequestRow:
    id: int
    plan_id: str | None
    step: int | None
    vm: str
    source: str
    target: str
    requested_target: str
    priority: int
    priority_class: str
    who: str
    reason: str
    rule: str | None
    gain: float
    policy_digest: str
    allow_retry: bool
    preempt: bool
    state: str
    attempt: int
    job_id: str | None
    created_at: datetime
    started_at: datetime | None
    updated_at: datetime
    ended_at: datetime | None
    duration_s: float | None
    downtime_ms: float | None
    data_copied_mib: float | None
    skip_reason: str | None
    error: str | None
    abort_reason: str | None

    @property
    def final(self) -> bool:
        return self.state in FINAL_STATES


@dataclass(frozen=True, slots=True, kw_only=True)
class JournalEvent:
    id: int
    request_id: int
    at: datetime
    event: str
    source: str | None
    target: str | None
    job_id: str | None
    fraction: float | None
    detail: str


@dataclass(frozen=True, slots=True, kw_only=True)
class Outcome:
    """The final outcome of a request, as written to the journal and the audit trail."""

    result: str  # one of FINAL_STATES
    duration_s: float | None = None
    downtime_ms: float | None = None
    data_copied_mib: float | None = None
    error: str | None = None
    skip_reason: str | None = None
    detail: str = ""


@dataclass(frozen=True, slots=True, kw_only=True)
class PlanRow:
    id: str
    who: str
    created_at: datetime
    made_at: datetime
    snapshot_digest: str
    policy_digest: str
    moves: int
    expected_gain: float
    state: str
    detail: str


_REQ_FIELDS = tuple(f.name for f in fields(RequestRow))
_EV_FIELDS = tuple(f.name for f in fields(JournalEvent))
_PLAN_FIELDS = tuple(f.name for f in fields(PlanRow))


def _req(row: sa.Row[Any]) -> RequestRow:
    m = row._mapping
    return RequestRow(**{k: m[k] for k in _REQ_FIELDS})


@dataclass(frozen=True, slots=True, kw_only=True)
class AuditVerdict:
    """The result of the last verification of the audit chain (the service's metric)."""

    ok: bool
    records: int
    at: datetime
    error: str | None = None


class Store:
    """The journal and audit store over one SQLAlchemy engine (SQLite or PostgreSQL)."""

    def __init__(self, engine: sa.Engine, *, create: bool = True) -> None:
        self.engine = engine
        self.url = redact(engine.url.render_as_string(hide_password=False))
        #: the fencing token every transaction carries (None: an unfenced writer)
        self.fence: Fence | None = None
        #: where the chain head is written as it advances (None: no anchor)
        self.anchor: Anchor | None = None
        #: the last :meth:`check_audit` result
        self.audit_verdict: AuditVerdict | None = None
        try:
            if create:
                create_schema(engine)
            else:
                names = set(sa.inspect(engine).get_table_names())
                missing = sorted({"audit_records", "audit_head"} - names)
                if missing:
                    raise InputError(
                        f"{self.url}: not a balancer store (no table {missing[0]})",
                        subject=self.url,
                    )
        except SQLAlchemyError as exc:
            raise StorageError(f"cannot open the store {self.url}: {_first_line(exc)}") from exc

    @classmethod
    def open(cls, url: str | None = None, *, anchor: str | Path | None = None) -> Store:
        """Open (and create, if needed) the store at ``url`` (see :mod:`balancer.storage.db`);
        with ``anchor``, every advance of the audit chain is also written to that file."""
        store = cls(make_engine(url))
        if anchor is not None:
            store.anchor = Anchor(anchor)
        return store

    @classmethod
    def open_existing(cls, url: str | None = None) -> Store:
        """Open a store that must exist already (``audit list|verify|export``): an SQLite file
        that does not exist is refused (:class:`InputError`, exit 2) and never created, nor its
        directory; neither is a database without the audit tables given any."""
        full = normalize_url(url)
        path = sqlite_file(full)
        if path is not None and not Path(path).is_file():
            what = "does not exist" if not Path(path).exists() else "is not a regular file"
            raise InputError(f"{path}: the database {what} (it is not created)", subject=path)
        return cls(make_engine(full), create=False)

    def close(self) -> None:
        self.engine.dispose()
        if self.anchor is not None:
            self.anchor.close()

    def fenced(self, fence: Fence | None) -> Store:
        """The same store (same engine, no schema work) whose every transaction carries
        ``fence``; writes from an epoch that lost the lease raise :class:`FencedError`."""
        other = Store.__new__(Store)
        other.engine = self.engine
        other.url = self.url
        other.fence = fence
        other.anchor = self.anchor
        other.audit_verdict = None
        return other

    # -- transactions ------------------------------------------------------------------------
    def _tx(self) -> AbstractContextManager[sa.Connection]:
        return _transaction(self)

    # -- plans -------------------------------------------------------------------------------
    def plan(self, plan_id: str) -> PlanRow | None:
        with self._tx() as conn:
            row = conn.execute(sa.select(plans).where(plans.c.id == plan_id)).first()
        if row is None:
            return None
        return PlanRow(**{k: row._mapping[k] for k in _PLAN_FIELDS})

    def add_plan(
        self,
        plan: NewPlan,
        reqs: Sequence[NewRequest],
        *,
        at: datetime,
        superseded: str | None = None,
    ) -> list[int]:
        """Record a plan, its decision record and all its requests (queued, or at once
        superseded with the reason ``superseded``) in one transaction."""
        with self._tx() as conn:
            conn.execute(
                sa.insert(plans).values(
                    id=plan.id,
                    who=plan.who,
                    created_at=at,
                    made_at=plan.made_at,
                    snapshot_digest=plan.snapshot_digest,
                    policy_digest=plan.policy_digest,
                    moves=len(reqs),
                    expected_gain=plan.expected_gain,
                    state="superseded" if superseded else "accepted",
                    detail=superseded or plan.detail,
                )
            )
            audit_mod.append(
                conn,
                AuditEntry(
                    at=at,
                    kind=audit_mod.KIND_PLAN,
                    who=plan.who,
                    plan_id=plan.id,
                    policy_digest=plan.policy_digest,
                    gain=plan.expected_gain,
                    result="superseded" if superseded else "accepted",
                    detail=superseded
                    or f"{len(reqs)} moves; snapshot {plan.snapshot_digest[:12] or '-'}",
                ),
            )
            ids = [self._insert_request(conn, replace(r, plan_id=plan.id), at) for r in reqs]
            if superseded:
                for rid in ids:
                    _finish(conn, rid, Outcome(result=SUPERSEDED, error=superseded), at)
        return ids

    # -- requests ----------------------------------------------------------------------------
    def add_request(self, req: NewRequest, *, at: datetime) -> int:
        with self._tx() as conn:
            return self._insert_request(conn, req, at)

    @staticmethod
    def _insert_request(conn: sa.Connection, r: NewRequest, at: datetime) -> int:
        res = conn.execute(
            sa.insert(requests).values(
                plan_id=r.plan_id,
                step=r.step,
                vm=r.vm,
                source=r.source,
                target=r.target,
                requested_target=r.target,
                priority=r.priority,
                priority_class=r.priority_class,
                who=r.who,
                reason=r.reason,
                rule=r.rule,
                gain=r.gain,
                policy_digest=r.policy_digest,
                allow_retry=r.allow_retry,
                preempt=r.preempt,
                state=QUEUED,
                attempt=1,
                created_at=at,
                updated_at=at,
            )
        )
        pk = res.inserted_primary_key
        assert pk is not None
        rid = int(pk[0])
        conn.execute(
            sa.insert(journal).values(
                request_id=rid, at=at, event=QUEUED, source=r.source, target=r.target, detail=""
            )
        )
        audit_mod.append(
            conn, _request_entry(r, rid, at=at, kind=audit_mod.KIND_REQUEST, result=QUEUED)
        )
        return rid

    def transition(
        self,
        request_id: int,
        event: str,
        *,
        at: datetime,
        expect: Iterable[str],
        state: str | None = None,
        detail: str = "",
        fraction: float | None = None,
        **values: Any,
    ) -> bool:
        """Write a journal event and (optionally) a new state, when the request is in one of
        ``expect``. Returns False (and writes nothing) otherwise."""
        with self._tx() as conn:
            return _transition(
                conn,
                request_id,
                event,
                at=at,
                expect=frozenset(expect),
                state=state,
                detail=detail,
                fraction=fraction,
                values=values,
            )

    def finish(self, request_id: int, outcome: Outcome, *, at: datetime) -> bool:
        """The request's final outcome: state, journal event and audit record, exactly once."""
        if outcome.result not in FINAL_STATES:
            raise ValueError(f"not a final outcome: {outcome.result}")
        with self._tx() as conn:
            return _finish(conn, request_id, outcome, at)

    def request(self, request_id: int) -> RequestRow:
        with self._tx() as conn:
            row = conn.execute(sa.select(requests).where(requests.c.id == request_id)).first()
        if row is None:
            raise StorageError(f"no request {request_id}", subject=str(request_id))
        return _req(row)

    def requests(
        self, *, plan_id: str | None = None, states: Iterable[str] | None = None
    ) -> list[RequestRow]:
        stmt = sa.select(requests).order_by(requests.c.id)
        if plan_id is not None:
            stmt = stmt.where(requests.c.plan_id == plan_id)
        if states is not None:
            stmt = stmt.where(requests.c.state.in_(sorted(states)))
        with self._tx() as conn:
            return [_req(r) for r in conn.execute(stmt)]

    def unfinished(self) -> list[RequestRow]:
        return self.requests(states=ACTIVE_STATES)

    def events(self, request_id: int | None = None) -> list[JournalEvent]:
        stmt = sa.select(journal).order_by(journal.c.id)
        if request_id is not None:
            stmt = stmt.where(journal.c.request_id == request_id)
        with self._tx() as conn:
            return [
                JournalEvent(**{k: r._mapping[k] for k in _EV_FIELDS}) for r in conn.execute(stmt)
            ]

    # -- audit -------------------------------------------------------------------------------
    def verify(self, anchor: str | Path | None = None) -> int:
        """Verify the audit chain (and, with ``anchor``, that it reaches the anchored head);
        raises :class:`~balancer.errors.AuditChainError`."""
        entries = anchor_mod.read_anchor(anchor) if anchor is not None else None
        with self._tx() as conn:
            return audit_mod.verify(conn, entries, str(anchor or ""))

    def check_audit(self, anchor: str | Path | None = None) -> AuditVerdict:
        """:meth:`verify` for the service's periodic job: the result is kept in
        :attr:`audit_verdict` (and returned); a bad chain is logged by the caller, not raised."""
        at = datetime.now(UTC)
        if anchor is not None and not Path(anchor).exists():
            anchor = None  # nothing anchored yet (a new store): the chain alone
        try:
            verdict = AuditVerdict(ok=True, records=self.verify(anchor), at=at)
        except (AuditChainError, InputError) as exc:
            verdict = AuditVerdict(ok=False, records=0, at=at, error=str(exc))
        self.audit_verdict = verdict
        return verdict

    def audit(self, q: AuditQuery | None = None) -> list[AuditRecord]:
        with self._tx() as conn:
            return list(audit_mod.query(conn, q or AuditQuery()))


def _transition(
    conn: sa.Connection,
    request_id: int,
    event: str,
    *,
    at: datetime,
    expect: frozenset[str],
    state: str | None,
    detail: str,
    fraction: float | None,
    values: dict[str, Any],
) -> bool:
    new: dict[str, Any] = {"updated_at": at, **values}
    if state is not None:
        new["state"] = state
    res = conn.execute(
        sa.update(requests)
        .where(requests.c.id == request_id, requests.c.state.in_(sorted(expect)))
        .values(**new)
    )
    if res.rowcount != 1:
        return False
    row = conn.execute(
        sa.select(requests.c.source, requests.c.target, requests.c.job_id).where(
            requests.c.id == request_id
        )
    ).one()
    conn.execute(
        sa.insert(journal).values(
            request_id=request_id,
            at=at,
            event=event,
            source=row.source,
            target=row.target,
            job_id=row.job_id,
            fraction=fraction,
            detail=detail,
        )
    )
    return True


def _finish(conn: sa.Connection, request_id: int, outcome: Outcome, at: datetime) -> bool:
    ok = _transition(
        conn,
        request_id,
        outcome.result,
        at=at,
        expect=ACTIVE_STATES,
        state=outcome.result,
        detail=outcome.detail or (outcome.error or ""),
        fraction=None,
        values={
            "ended_at": at,
            "duration_s": outcome.duration_s,
            "downtime_ms": outcome.downtime_ms,
            "data_copied_mib": outcome.data_copied_mib,
            "error": outcome.error,
            "skip_reason": outcome.skip_reason,
        },
    )
    if not ok:
        return False
    r = _req(conn.execute(sa.select(requests).where(requests.c.id == request_id)).one())
    audit_mod.append(
        conn,
        _request_entry(
            r,
            r.id,
            at=at,
            kind=audit_mod.KIND_OUTCOME,
            result=outcome.result,
            duration_s=outcome.duration_s,
            downtime_ms=outcome.downtime_ms,
            data_copied_mib=outcome.data_copied_mib,
            error=outcome.error,
            detail=outcome.skip_reason or outcome.detail or None,
        ),
    )
    return True


def _request_entry(
    r: NewRequest | RequestRow,
    request_id: int,
    *,
    at: datetime,
    kind: str,
    result: str,
    **outcome: Any,
) -> AuditEntry:
    """The audit record of one request (who, what, why), with ``outcome`` fields if any."""
    return AuditEntry(
        at=at,
        kind=kind,
        who=r.who,
        plan_id=r.plan_id,
        request_id=request_id,
        vm=r.vm,
        source=r.source,
        target=r.target,
        priority_class=r.priority_class,
        reason=r.reason,
        rule=r.rule,
        policy_digest=r.policy_digest,
        gain=r.gain,
        result=result,
        **outcome,
    )


def _first_line(exc: BaseException) -> str:
    text = str(getattr(exc, "orig", None) or exc)
    return text.strip().splitlines()[0] if text.strip() else type(exc).__name__


@contextmanager
def _transaction(store: Store) -> Iterator[sa.Connection]:
    """One transaction; database errors become :class:`StorageError` (one line, the cause kept)."""
    fence = store.fence
    head: tuple[int, str] | None = None
    try:
        with store.engine.begin() as conn:
            conn.info.pop(audit_mod.HEAD_KEY, None)
            if fence is not None:
                conn.execute(
                    sa.text("SELECT set_config('balancer.fence', :f, true)"), {"f": fence.setting}
                )
            yield conn
            head = conn.info.pop(audit_mod.HEAD_KEY, None)
    except SQLAlchemyError as exc:
        orig = getattr(exc, "orig", None)
        if fence is not None and getattr(orig, "sqlstate", None) == FENCED_SQLSTATE:
            raise FencedError(
                f"store {store.url}: write refused: {_first_line(exc)}",
                cluster=fence.cluster,
                epoch=fence.epoch,
            ) from exc
        raise StorageError(f"store {store.url}: {_first_line(exc)}") from exc
    if head is not None and store.anchor is not None:  # committed: anchor the new head
        store.anchor.advance(*head)


def sqlite_file(url: str) -> str | None:
    """The file of an ``sqlite:///path`` URL (None for another database, memory or a URI)."""
    try:
        parsed = sa.engine.make_url(url)
    except sa.exc.ArgumentError:
        return None
    db = parsed.database
    if parsed.get_backend_name() != "sqlite" or not db or db == ":memory:":
        return None
    return None if db.startswith("file:") else db
