"""The journal and the hash-chained audit trail, on SQLite and on a real PostgreSQL server."""

from __future__ import annotations

import sqlite3
import threading
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest
import sqlalchemy as sa

from balancer.errors import AuditChainError, StorageError
from balancer.storage import NewPlan, NewRequest, Outcome, Store, normalize_url
from balancer.storage import audit as audit_mod
from balancer.storage.audit import AuditEntry, AuditQuery
from balancer.storage.schema import audit_records

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


def _req(vm: str, source: str = "h1", target: str = "h2", who: str = "balancer") -> NewRequest:
    return NewRequest(
        vm=vm,
        source=source,
        target=target,
        priority=30,
        priority_class="balance",
        who=who,
        reason="balance",
        gain=0.25,
        policy_digest="p" * 64,
    )


def _fill(store: Store, n: int = 4) -> list[int]:
    ids = store.add_plan(
        NewPlan(id="plan-1", who="balancer", made_at=T0, snapshot_digest="s" * 64),
        [_req(f"vm{i}", target=f"h{2 + i % 2}") for i in range(n)],
        at=T0,
    )
    for k, rid in enumerate(ids):
        at = T0 + timedelta(seconds=10 + k)
        assert store.transition(rid, "starting", at=at, expect={"queued"}, state="starting")
        assert store.transition(
            rid, "started", at=at, expect={"starting"}, state="running", job_id=f"j{rid}"
        )
        assert store.finish(
            rid,
            Outcome(result="succeeded", duration_s=4.5, downtime_ms=31.25, data_copied_mib=4100.5),
            at=at + timedelta(seconds=5),
        )
    return ids


@pytest.fixture
def store(db_url: str) -> Iterator[Store]:
    s = Store.open(db_url)
    yield s
    s.close()


def test_chain_verifies_and_records_who_what_why_outcome(store: Store) -> None:
    ids = _fill(store)
    # one plan record, one request and one outcome record per request
    assert store.verify() == 1 + 2 * len(ids)
    outcomes = store.audit(AuditQuery(kind="outcome"))
    assert [r.request_id for r in outcomes] == ids
    o = outcomes[0]
    assert (o.who, o.plan_id, o.vm, o.source, o.target) == ("balancer", "plan-1", "vm0", "h1", "h2")
    assert (o.priority_class, o.reason, o.policy_digest, o.gain) == (
        "balance",
        "balance",
        "p" * 64,
        0.25,
    )
    assert (o.result, o.duration_s, o.downtime_ms, o.data_copied_mib) == (
        "succeeded",
        4.5,
        31.25,
        4100.5,
    )
    assert o.at == T0 + timedelta(seconds=15) and o.at.tzinfo is not None


def test_exactly_one_outcome_per_request(store: Store) -> None:
    (rid,) = store.add_plan(NewPlan(id="p", who="balancer", made_at=T0), [_req("a")], at=T0)
    assert store.finish(rid, Outcome(result="skipped", skip_reason="vm_moved"), at=T0)
    assert not store.finish(rid, Outcome(result="succeeded"), at=T0)
    assert not store.transition(rid, "starting", at=T0, expect={"queued"}, state="starting")
    # even written by hand, the database refuses a second outcome for the request
    with pytest.raises(StorageError), store._tx() as conn:
        audit_mod.append(
            conn, AuditEntry(at=T0, kind="outcome", who="x", request_id=rid, result="failed")
        )
    assert store.verify() == 3
    assert len(store.audit(AuditQuery(kind="outcome", request_id=rid))) == 1


def test_every_state_change_is_journaled(store: Store) -> None:
    (rid,) = _fill(store, 1)
    assert [e.event for e in store.events(rid)] == ["queued", "starting", "started", "succeeded"]
    assert store.events(rid)[2].job_id == f"j{rid}"


def test_queries_filter_by_time_vm_host_user(store: Store) -> None:
    _fill(store, 4)
    store.add_request(_req("manual", source="h7", target="h8", who="alice"), at=T0 + timedelta(1))
    assert {r.vm for r in store.audit(AuditQuery(user="alice"))} == {"manual"}
    assert {r.vm for r in store.audit(AuditQuery(host="h3"))} == {"vm1", "vm3"}
    assert len(store.audit(AuditQuery(vm="vm2"))) == 2
    late = store.audit(AuditQuery(since=T0 + timedelta(seconds=16)))
    assert [r.vm for r in late] == ["vm1", "vm2", "vm3", "manual"]
    assert store.audit(AuditQuery(until=T0 + timedelta(seconds=1)))[-1].kind == "request"


def test_concurrent_appends_keep_one_chain(store: Store) -> None:
    errors: list[BaseException] = []

    def worker(k: int) -> None:
        try:
            for i in range(15):
                store.add_request(_req(f"t{k}-{i}"), at=T0)
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not errors
    assert store.verify() == 60


def test_postgres_urls_use_psycopg3() -> None:
    assert normalize_url("postgresql://u@h/db") == "postgresql+psycopg://u@h/db"
    assert normalize_url("postgres://u@h/db") == "postgresql+psycopg://u@h/db"
    assert normalize_url("sqlite:///x.db") == "sqlite:///x.db"


def test_default_store_is_sqlite_under_state_dir(
    tmp_path: object, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("BALANCER_DB", raising=False)
    monkeypatch.setenv("BALANCER_STATE_DIR", str(tmp_path))
    assert normalize_url(None) == f"sqlite:///{tmp_path}/balancer.db"


def test_bad_url_is_a_storage_error() -> None:
    with pytest.raises(StorageError):
        Store.open("mysql://nobody@nowhere/x")


# -- tampering, on a copy of the store ---------------------------------------------------------


def _copy_store(store: Store, db_url: str) -> str:
    """A copy of the whole store: SQLite through the backup API, PostgreSQL as a template."""
    store.close()
    if db_url.startswith("sqlite"):
        src = db_url.removeprefix("sqlite:///")
        dst = src + f".copy-{uuid.uuid4().hex[:6]}"
        with sqlite3.connect(src) as a, sqlite3.connect(dst) as b:
            a.backup(b)
        return f"sqlite:///{dst}"
    import psycopg

    base, name = db_url.rsplit("/", 1)
    copy = f"{name}_c{uuid.uuid4().hex[:6]}"
    with psycopg.connect(f"{base}/postgres", autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{copy}" TEMPLATE "{name}"')
    return f"{base}/{copy}"


def _tamper(url: str, *statements: str) -> Store:
    copy = Store.open(url)
    with copy.engine.begin() as conn:
        for s in statements:
            conn.execute(sa.text(s))
    return copy


def _swap_sql(a: int, b: int) -> list[str]:
    cols = [c.name for c in audit_records.columns if c.name not in ("seq", "outcome_of")]
    sets_a = ", ".join(f"{c} = (SELECT {c} FROM audit_records WHERE seq = {b})" for c in cols)
    return [
        "CREATE TABLE tmp_swap AS SELECT * FROM audit_records WHERE seq = " + str(a),
        f"UPDATE audit_records SET outcome_of = NULL WHERE seq IN ({a}, {b})",
        f"UPDATE audit_records SET {sets_a} WHERE seq = {a}",
        "UPDATE audit_records SET "
        + ", ".join(f"{c} = (SELECT {c} FROM tmp_swap)" for c in cols)
        + f" WHERE seq = {b}",
        "DROP TABLE tmp_swap",
    ]


@pytest.mark.parametrize(
    ("case", "bad"),
    [
        ("edited", 5),
        ("edited_hash_too", 5),
        ("deleted", 5),
        ("deleted_tail", 9),
        ("swapped", 4),
        ("renumbered", 4),
    ],
)
def test_verify_names_the_first_bad_record(store: Store, db_url: str, case: str, bad: int) -> None:
    _fill(store, 4)
    assert store.verify() == 9
    url = _copy_store(store, db_url)
    stmts = {
        "edited": ["UPDATE audit_records SET target = 'h9' WHERE seq = 5"],
        # an editor who also recomputes the record's own hash breaks the link to the next one
        "edited_hash_too": ["UPDATE audit_records SET target = 'h9', hash = 'f' WHERE seq = 5"],
        "deleted": ["DELETE FROM audit_records WHERE seq = 5"],
        "deleted_tail": ["DELETE FROM audit_records WHERE seq = 9"],
        "swapped": _swap_sql(4, 6),
        "renumbered": [
            "UPDATE audit_records SET seq = 1000 WHERE seq = 4",
            "UPDATE audit_records SET seq = 4 WHERE seq = 6",
            "UPDATE audit_records SET seq = 6 WHERE seq = 1000",
        ],
    }[case]
    copy = _tamper(url, *stmts)
    try:
        with pytest.raises(AuditChainError) as err:
            copy.verify()
        if case == "edited_hash_too":
            assert err.value.record_id in (5, 6)
        else:
            assert err.value.record_id == bad, str(err.value)
        assert str(err.value.record_id) in str(err.value)
    finally:
        copy.close()
    # the original is untouched
    assert Store.open(db_url).verify() == 9
