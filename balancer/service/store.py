"""The service's own tables, on the same database as the executor's journal and audit trail.

Maintenance requests and their per-VM progress, the administrative state of hosts,
recommendations, plans the service made, the move history (cooldown and ping-pong holds),
the imbalance history (dashboard), flags (operator pause, automation override), scheduled
task runs and rolling maintenances with their per-host progress.
Every change is written here before the service acts on it.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, fields
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Dialect
from sqlalchemy.exc import SQLAlchemyError

from balancer.errors import StorageError
from balancer.service.views import RollingHostView


class UTC_DT(sa.TypeDecorator[datetime]):
    """A UTC-aware datetime on SQLite and PostgreSQL alike."""

    impl = sa.DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime")
        return value.astimezone(UTC)

    def process_result_value(self, value: Any, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        assert isinstance(value, datetime)
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


metadata = sa.MetaData()

host_admin = sa.Table(
    "svc_host_admin",
    metadata,
    sa.Column("host", sa.String(200), primary_key=True),
    sa.Column("state", sa.String(40), nullable=False),
    sa.Column("since", UTC_DT, nullable=False),
    sa.Column("who", sa.String(200), nullable=False),
)

maintenance = sa.Table(
    "svc_maintenance",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("host", sa.String(200), nullable=False, index=True),
    sa.Column("state", sa.String(40), nullable=False),
    sa.Column("who", sa.String(200), nullable=False),
    sa.Column("created_at", UTC_DT, nullable=False),
    sa.Column("updated_at", UTC_DT, nullable=False),
    sa.Column("finished_at", UTC_DT, nullable=True),
    sa.Column("original_vms", sa.JSON, nullable=False),
    sa.Column("vms", sa.JSON, nullable=False),
    sa.Column("blockers", sa.JSON, nullable=False),
    sa.Column("message", sa.Text, nullable=False, default=""),
    sa.Column("plan_id", sa.String(80), nullable=True),
    sa.Column("exited_by", sa.String(200), nullable=True),
)

recommendations = sa.Table(
    "svc_recommendation",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("created_at", UTC_DT, nullable=False),
    sa.Column("updated_at", UTC_DT, nullable=False),
    sa.Column("plan_id", sa.String(80), nullable=False),
    sa.Column("vm", sa.String(200), nullable=False, index=True),
    sa.Column("source", sa.String(200), nullable=False),
    sa.Column("target", sa.String(200), nullable=False),
    sa.Column("reason", sa.String(200), nullable=False),
    sa.Column("gain", sa.Float, nullable=False),
    sa.Column("snapshot_digest", sa.String(80), nullable=False),
    sa.Column("policy_digest", sa.String(80), nullable=False),
    sa.Column("premise", sa.JSON, nullable=False),
    sa.Column("state", sa.String(40), nullable=False, index=True),
    sa.Column("decided_by", sa.String(200), nullable=True),
    sa.Column("decided_at", UTC_DT, nullable=True),
    sa.Column("migration_id", sa.Integer, nullable=True),
    sa.Column("note", sa.Text, nullable=False, default=""),
)

plans = sa.Table(
    "svc_plan",
    metadata,
    sa.Column("id", sa.String(80), primary_key=True),
    sa.Column("created_at", UTC_DT, nullable=False, index=True),
    sa.Column("kind", sa.String(40), nullable=False),
    sa.Column("status", sa.String(40), nullable=False),
    sa.Column("snapshot_digest", sa.String(80), nullable=False),
    sa.Column("policy_digest", sa.String(80), nullable=False),
    sa.Column("automation", sa.String(40), nullable=False),
    sa.Column("doc", sa.JSON, nullable=False),
)

move_history = sa.Table(
    "svc_move_history",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("at", UTC_DT, nullable=False, index=True),
    sa.Column("vm", sa.String(200), nullable=False, index=True),
    sa.Column("source", sa.String(200), nullable=False),
    sa.Column("target", sa.String(200), nullable=False),
    sa.Column("reason", sa.String(200), nullable=False),
)

history = sa.Table(
    "svc_history",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("at", UTC_DT, nullable=False, index=True),
    sa.Column("imbalance", sa.Float, nullable=False),
    sa.Column("max_cpu_load", sa.Float, nullable=False),
    sa.Column("max_memory_load", sa.Float, nullable=False),
)

flags = sa.Table(
    "svc_flags",
    metadata,
    sa.Column("key", sa.String(80), primary_key=True),
    sa.Column("value", sa.JSON, nullable=True),
    sa.Column("who", sa.String(200), nullable=False),
    sa.Column("at", UTC_DT, nullable=False),
)

task_runs = sa.Table(
    "svc_task_run",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("task_id", sa.String(200), nullable=False, index=True),
    sa.Column("at", UTC_DT, nullable=False),
    sa.Column("kind", sa.String(40), nullable=False),
    sa.Column("who", sa.String(200), nullable=False),
    sa.Column("result", sa.String(40), nullable=False),
    sa.Column("detail", sa.Text, nullable=False, default=""),
)


rollings = sa.Table(
    "svc_rolling",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("state", sa.String(40), nullable=False, index=True),
    sa.Column("who", sa.String(200), nullable=False),
    sa.Column("created_at", UTC_DT, nullable=False),
    sa.Column("updated_at", UTC_DT, nullable=False),
    sa.Column("finished_at", UTC_DT, nullable=True),
    sa.Column("at_a_time", sa.Integer, nullable=False),
    sa.Column("gate", sa.JSON, nullable=False),
    sa.Column("message", sa.Text, nullable=False, default=""),
)

rolling_hosts = sa.Table(
    "svc_rolling_host",
    metadata,
    sa.Column("rolling_id", sa.Integer, sa.ForeignKey("svc_rolling.id"), primary_key=True),
    sa.Column("host", sa.String(200), primary_key=True),
    sa.Column("position", sa.Integer, nullable=False),
    sa.Column("batch", sa.Integer, nullable=False),
    sa.Column("state", sa.String(40), nullable=False),
    sa.Column("since", UTC_DT, nullable=False),
    sa.Column("maintenance_id", sa.Integer, nullable=True),
    sa.Column("released_by", sa.String(200), nullable=True),
    sa.Column("blocker", sa.Text, nullable=False, default=""),
)


@dataclass(frozen=True, slots=True, kw_only=True)
class MaintenanceRow:
    id: int
    host: str
    state: str
    who: str
    created_at: datetime
    updated_at: datetime
    finished_at: datetime | None
    original_vms: list[str]
    vms: dict[str, dict[str, Any]]
    blockers: list[dict[str, str]]
    message: str
    plan_id: str | None
    exited_by: str | None


@dataclass(frozen=True, slots=True, kw_only=True)
class RecommendationRow:
    id: int
    created_at: datetime
    updated_at: datetime
    plan_id: str
    vm: str
    source: str
    target: str
    reason: str
    gain: float
    snapshot_digest: str
    policy_digest: str
    premise: dict[str, Any]
    state: str
    decided_by: str | None
    decided_at: datetime | None
    migration_id: int | None
    note: str


@dataclass(frozen=True, slots=True, kw_only=True)
class PlanRecord:
    id: str
    created_at: datetime
    kind: str
    status: str
    snapshot_digest: str
    policy_digest: str
    automation: str
    doc: dict[str, Any]


@dataclass(frozen=True, slots=True, kw_only=True)
class HistoryPoint:
    at: datetime
    imbalance: float
    max_cpu_load: float
    max_memory_load: float


@dataclass(frozen=True, slots=True, kw_only=True)
class MoveRecord:
    at: datetime
    vm: str
    source: str
    target: str
    reason: str


@dataclass(frozen=True, slots=True, kw_only=True)
class TaskRun:
    id: int
    task_id: str
    at: datetime
    kind: str
    who: str
    result: str
    detail: str


@dataclass(frozen=True, slots=True, kw_only=True)
class RollingRow:
    id: int
    state: str
    who: str
    created_at: datetime
    updated_at: datetime
    finished_at: datetime | None
    at_a_time: int
    gate: dict[str, Any]
    message: str


def _row(cls: Any, row: sa.Row[Any]) -> Any:
    m = row._mapping
    return cls(**{f.name: m[f.name] for f in fields(cls)})


#: maintenance request states
EVACUATING = "evacuating"
IN_MAINTENANCE = "maintenance"
EXITED = "exited"
MAINT_ACTIVE = frozenset({EVACUATING, IN_MAINTENANCE})

#: recommendation states
PENDING = "pending"
APPROVED = "approved"
REJECTED = "rejected"
EXPIRED = "expired"


class ServiceStore:
    """All the service's reads and writes; one transaction per method."""

    def __init__(self, engine: sa.Engine) -> None:
        self.engine = engine
        try:
            metadata.create_all(engine)
        except SQLAlchemyError as exc:
            raise StorageError(f"cannot create the service tables: {exc}") from exc

    @contextmanager
    def _tx(self) -> Iterator[sa.Connection]:
        try:
            with self.engine.begin() as conn:
                yield conn
        except SQLAlchemyError as exc:
            raise StorageError(f"service store: {str(exc).splitlines()[0]}") from exc

    # -- host administrative state -----------------------------------------------------------
    def host_states(self) -> dict[str, str]:
        with self._tx() as c:
            return {r.host: r.state for r in c.execute(sa.select(host_admin))}

    def host_admin(self) -> dict[str, tuple[str, str, datetime]]:
        """host -> (administrative state, who set it, since when)."""
        with self._tx() as c:
            return {r.host: (r.state, r.who, r.since) for r in c.execute(sa.select(host_admin))}

    def set_host_state(self, host: str, state: str | None, *, who: str, at: datetime) -> None:
        with self._tx() as c:
            c.execute(sa.delete(host_admin).where(host_admin.c.host == host))
            if state is not None:
                c.execute(sa.insert(host_admin).values(host=host, state=state, since=at, who=who))

    # -- maintenance -------------------------------------------------------------------------
    def add_maintenance(
        self, *, host: str, who: str, at: datetime, original_vms: list[str], state: str
    ) -> int:
        with self._tx() as c:
            res = c.execute(
                sa.insert(maintenance).values(
                    host=host,
                    state=state,
                    who=who,
                    created_at=at,
                    updated_at=at,
                    original_vms=original_vms,
                    vms={},
                    blockers=[],
                    message="",
                )
            )
            pk = res.inserted_primary_key
            assert pk is not None
            return int(pk[0])

    def update_maintenance(self, mid: int, *, at: datetime, **values: Any) -> None:
        with self._tx() as c:
            c.execute(
                sa.update(maintenance)
                .where(maintenance.c.id == mid)
                .values(updated_at=at, **values)
            )

    def maintenance_requests(
        self, *, host: str | None = None, active_only: bool = False, limit: int = 100
    ) -> list[MaintenanceRow]:
        stmt = sa.select(maintenance).order_by(maintenance.c.id.desc()).limit(limit)
        if host is not None:
            stmt = stmt.where(maintenance.c.host == host)
        if active_only:
            stmt = stmt.where(maintenance.c.state.in_(sorted(MAINT_ACTIVE)))
        with self._tx() as c:
            return [_row(MaintenanceRow, r) for r in c.execute(stmt)]

    def active_maintenance(self, host: str) -> MaintenanceRow | None:
        rows = self.maintenance_requests(host=host, active_only=True, limit=1)
        return rows[0] if rows else None

    # -- rolling maintenance -----------------------------------------------------------------
    def add_rolling(
        self,
        *,
        who: str,
        at: datetime,
        at_a_time: int,
        gate: dict[str, Any],
        hosts: list[str],
        state: str,
        host_state: str,
    ) -> int:
        """A rolling maintenance and its hosts (in order, batch by batch), in one transaction."""
        with self._tx() as c:
            res = c.execute(
                sa.insert(rollings).values(
                    state=state,
                    who=who,
                    created_at=at,
                    updated_at=at,
                    at_a_time=at_a_time,
                    gate=gate,
                    message="",
                )
            )
            pk = res.inserted_primary_key
            assert pk is not None
            rid = int(pk[0])
            c.execute(
                sa.insert(rolling_hosts),
                [
                    {
                        "rolling_id": rid,
                        "host": h,
                        "position": i,
                        "batch": i // at_a_time,
                        "state": host_state,
                        "since": at,
                        "blocker": "",
                    }
                    for i, h in enumerate(hosts)
                ],
            )
            return rid

    def update_rolling(self, rid: int, *, at: datetime, **values: Any) -> None:
        with self._tx() as c:
            c.execute(
                sa.update(rollings).where(rollings.c.id == rid).values(updated_at=at, **values)
            )

    def update_rolling_host(self, rid: int, host: str, **values: Any) -> None:
        with self._tx() as c:
            c.execute(
                sa.update(rolling_hosts)
                .where(rolling_hosts.c.rolling_id == rid, rolling_hosts.c.host == host)
                .values(**values)
            )

    def rollings(
        self, *, states: frozenset[str] | None = None, limit: int = 100
    ) -> list[RollingRow]:
        stmt = sa.select(rollings).order_by(rollings.c.id.desc()).limit(limit)
        if states is not None:
            stmt = stmt.where(rollings.c.state.in_(sorted(states)))
        with self._tx() as c:
            return [_row(RollingRow, r) for r in c.execute(stmt)]

    def rolling(self, rid: int) -> RollingRow | None:
        with self._tx() as c:
            r = c.execute(sa.select(rollings).where(rollings.c.id == rid)).first()
        return None if r is None else _row(RollingRow, r)

    def rolling_hosts(self, rid: int) -> list[RollingHostView]:
        stmt = (
            sa.select(rolling_hosts)
            .where(rolling_hosts.c.rolling_id == rid)
            .order_by(rolling_hosts.c.position)
        )
        with self._tx() as c:
            return [_row(RollingHostView, r) for r in c.execute(stmt)]

    # -- recommendations ---------------------------------------------------------------------
    def add_recommendation(self, *, at: datetime, **values: Any) -> int:
        with self._tx() as c:
            res = c.execute(
                sa.insert(recommendations).values(
                    created_at=at, updated_at=at, state=PENDING, note="", **values
                )
            )
            pk = res.inserted_primary_key
            assert pk is not None
            return int(pk[0])

    def recommendations(
        self, *, state: str | None = None, limit: int = 200
    ) -> list[RecommendationRow]:
        stmt = sa.select(recommendations).order_by(recommendations.c.id.desc()).limit(limit)
        if state is not None:
            stmt = stmt.where(recommendations.c.state == state)
        with self._tx() as c:
            return [_row(RecommendationRow, r) for r in c.execute(stmt)]

    def recommendation(self, rid: int) -> RecommendationRow | None:
        with self._tx() as c:
            r = c.execute(sa.select(recommendations).where(recommendations.c.id == rid)).first()
        return None if r is None else _row(RecommendationRow, r)

    def decide_recommendation(
        self, rid: int, *, state: str, at: datetime, who: str | None, note: str = ""
    ) -> bool:
        """Move a pending recommendation to ``state``; False if it was no longer pending."""
        with self._tx() as c:
            res = c.execute(
                sa.update(recommendations)
                .where(recommendations.c.id == rid, recommendations.c.state == PENDING)
                .values(state=state, decided_by=who, decided_at=at, updated_at=at, note=note)
            )
            return bool(res.rowcount)

    def link_recommendation(self, rid: int, migration_id: int, *, at: datetime) -> None:
        with self._tx() as c:
            c.execute(
                sa.update(recommendations)
                .where(recommendations.c.id == rid)
                .values(migration_id=migration_id, updated_at=at)
            )

    # -- plans -------------------------------------------------------------------------------
    def add_plan(self, rec: PlanRecord) -> None:
        with self._tx() as c:
            c.execute(
                sa.insert(plans).values(**{f.name: getattr(rec, f.name) for f in fields(rec)})
            )

    def plans(self, *, limit: int = 50) -> list[PlanRecord]:
        stmt = sa.select(plans).order_by(plans.c.created_at.desc()).limit(limit)
        with self._tx() as c:
            return [_row(PlanRecord, r) for r in c.execute(stmt)]

    def plan(self, plan_id: str) -> PlanRecord | None:
        with self._tx() as c:
            r = c.execute(sa.select(plans).where(plans.c.id == plan_id)).first()
        return None if r is None else _row(PlanRecord, r)

    # -- move history ------------------------------------------------------------------------
    def add_moves(self, moves: list[MoveRecord]) -> None:
        if not moves:
            return
        with self._tx() as c:
            c.execute(
                sa.insert(move_history),
                [{f.name: getattr(m, f.name) for f in fields(m)} for m in moves],
            )

    def moves_since(self, since: datetime) -> list[MoveRecord]:
        stmt = sa.select(move_history).where(move_history.c.at >= since).order_by(move_history.c.id)
        with self._tx() as c:
            return [_row(MoveRecord, r) for r in c.execute(stmt)]

    # -- history -----------------------------------------------------------------------------
    def add_history(self, p: HistoryPoint, *, keep_since: datetime) -> None:
        with self._tx() as c:
            c.execute(sa.insert(history).values(**{f.name: getattr(p, f.name) for f in fields(p)}))
            c.execute(sa.delete(history).where(history.c.at < keep_since))

    def history(self, since: datetime) -> list[HistoryPoint]:
        stmt = sa.select(history).where(history.c.at >= since).order_by(history.c.at)
        with self._tx() as c:
            return [_row(HistoryPoint, r) for r in c.execute(stmt)]

    # -- flags -------------------------------------------------------------------------------
    def flag(self, key: str) -> Mapping[str, Any] | None:
        with self._tx() as c:
            r = c.execute(sa.select(flags).where(flags.c.key == key)).first()
        if r is None or r.value is None:
            return None
        return {"value": r.value, "who": r.who, "at": r.at}

    def set_flag(self, key: str, value: Any, *, who: str, at: datetime) -> None:
        with self._tx() as c:
            c.execute(sa.delete(flags).where(flags.c.key == key))
            if value is not None:
                c.execute(sa.insert(flags).values(key=key, value=value, who=who, at=at))

    # -- scheduled task runs -----------------------------------------------------------------
    def add_task_run(
        self, *, task_id: str, at: datetime, kind: str, who: str, result: str, detail: str
    ) -> None:
        with self._tx() as c:
            c.execute(
                sa.insert(task_runs).values(
                    task_id=task_id, at=at, kind=kind, who=who, result=result, detail=detail
                )
            )

    def task_runs(self, *, limit: int = 100) -> list[TaskRun]:
        stmt = sa.select(task_runs).order_by(task_runs.c.id.desc()).limit(limit)
        with self._tx() as c:
            return [_row(TaskRun, r) for r in c.execute(stmt)]
