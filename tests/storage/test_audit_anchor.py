"""The audit anchor (the chain head written outside the database) and stores that must exist:
truncation with a rewound head passes the chain check alone but not the anchor; an edited
record still fails; ``audit list|verify|export`` never create a database."""

from __future__ import annotations

import shutil
import threading
from pathlib import Path

import pytest
import sqlalchemy as sa
from click.testing import CliRunner

from balancer.cli import cli
from balancer.errors import AuditChainError, InputError, StorageError
from balancer.storage import NewPlan, Store
from balancer.storage.anchor import Anchor, read_anchor
from balancer.storage.schema import audit_records
from tests.storage.test_audit_chain import T0, _copy_store, _fill, _req

REWIND = "UPDATE audit_head SET seq = {n}, hash = (SELECT hash FROM audit_records WHERE seq = {n})"


def _hashes(store: Store) -> dict[int, str]:
    with store.engine.begin() as conn:
        rows = conn.execute(sa.select(audit_records.c.seq, audit_records.c.hash)).all()
    return {int(r.seq): str(r.hash) for r in rows}


def _truncate(url: str, keep: int) -> None:
    """Delete the records after ``keep`` and rewind the head to ``keep``: a valid shorter chain."""
    s = Store.open(url)
    try:
        with s.engine.begin() as conn:
            conn.execute(sa.text(f"DELETE FROM audit_records WHERE seq > {keep}"))
            conn.execute(sa.text(REWIND.format(n=keep)))
    finally:
        s.close()


def test_each_committed_advance_is_anchored(db_url: str, tmp_path: Path) -> None:
    anchor = tmp_path / "audit.anchor"
    store = Store.open(db_url, anchor=anchor)
    try:
        _fill(store, 4)
        entries = read_anchor(anchor)
        hashes = _hashes(store)
        # one line per transaction that appended: the plan's (records 1-5), then each outcome
        assert sorted(entries) == [5, 6, 7, 8, 9]
        assert all(e.hash == hashes[seq] for seq, es in entries.items() for e in es)
        assert store.verify(anchor) == 9
        # a transaction that fails writes nothing to the anchor (plan-1 exists already)
        size = anchor.stat().st_size
        with pytest.raises(StorageError):
            store.add_plan(NewPlan(id="plan-1", who="x", made_at=T0), [_req("vm9")], at=T0)
        assert anchor.stat().st_size == size
    finally:
        store.close()


def test_several_writers_keep_whole_lines_and_a_deleted_file_comes_back(tmp_path: Path) -> None:
    """Two writers on one file (two instances, or threads): O_APPEND keeps every line whole;
    each line opens the file, so a rotated or deleted anchor is created again."""
    path = tmp_path / "audit.anchor"
    writers = [Anchor(path, use_syslog=False), Anchor(path, use_syslog=False)]

    def write(k: int) -> None:
        for seq in range(1 + k, 101, 2):
            writers[k].advance(seq, f"{seq:064x}")

    threads = [threading.Thread(target=write, args=(k,)) for k in (0, 1)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    entries = read_anchor(path)
    assert sorted(entries) == list(range(1, 101))
    assert all(e.hash == f"{seq:064x}" for seq, es in entries.items() for e in es)
    path.unlink()
    writers[0].advance(101, "a" * 64)
    assert sorted(read_anchor(path)) == [101]
    assert writers[0].failures == 0
    # an anchor that cannot be written is counted and logged, never raised
    bad = Anchor(tmp_path / "no" / "dir" / "audit.anchor", use_syslog=False)
    bad.advance(1, "a" * 64)
    assert bad.failures == 1


def test_truncation_with_a_rewound_head_is_caught_by_the_anchor(
    db_url: str, tmp_path: Path
) -> None:
    anchor = tmp_path / "audit.anchor"
    store = Store.open(db_url, anchor=anchor)
    _fill(store, 4)
    url = _copy_store(store, db_url)
    _truncate(url, 7)
    copy = Store.open(url)
    try:
        assert copy.verify() == 7  # the chain alone cannot tell: what is left is valid
        with pytest.raises(AuditChainError) as err:
            copy.verify(anchor)
        msg = str(err.value)
        assert "truncated" in msg and "record 9" in msg and "has 7 records" in msg, msg
        assert "audit_head says 7" in msg and "8..9" in msg, msg
        assert err.value.record_id == 8
    finally:
        copy.close()


def test_a_rewritten_tail_does_not_match_its_anchor(db_url: str, tmp_path: Path) -> None:
    """Truncate, then let new records reach the old length: the anchored hashes differ."""
    anchor = tmp_path / "audit.anchor"
    store = Store.open(db_url, anchor=anchor)
    _fill(store, 4)
    url = _copy_store(store, db_url)
    _truncate(url, 7)
    copy_anchor = tmp_path / "copy.anchor"
    shutil.copy(anchor, copy_anchor)
    copy = Store.open(url, anchor=copy_anchor)
    try:
        copy.add_plan(NewPlan(id="plan-2", who="mallory", made_at=T0), [_req("vm8")], at=T0)
        assert copy.verify() == 9
        with pytest.raises(AuditChainError) as err:
            copy.verify(copy_anchor)
        assert "audit record 8 is not the one anchored" in str(err.value), str(err.value)
        assert err.value.record_id == 8
    finally:
        copy.close()


def test_an_edited_middle_record_still_fails(db_url: str, tmp_path: Path) -> None:
    anchor = tmp_path / "audit.anchor"
    store = Store.open(db_url, anchor=anchor)
    _fill(store, 4)
    url = _copy_store(store, db_url)
    copy = Store.open(url)
    try:
        with copy.engine.begin() as conn:
            conn.execute(sa.text("UPDATE audit_records SET target = 'h9' WHERE seq = 5"))
        for a in (None, anchor):
            with pytest.raises(AuditChainError) as err:
                copy.verify(a)
            assert err.value.record_id == 5 and "altered" in str(err.value)
    finally:
        copy.close()


@pytest.mark.parametrize(
    ("content", "where"),
    [
        (b"1 " + b"a" * 64 + b" 2026-01-01T00:00:00Z", ":1: the last line is cut short"),
        (b"1 " + b"a" * 64 + b" t\nseven " + b"a" * 64 + b" t\n", ":2: not an anchor line"),
        (b"1 \xff\n", ":1: not an anchor line (non-ASCII"),
        (b"0 " + b"a" * 64 + b" t\n", ":1: not an anchor line"),
    ],
)
def test_a_malformed_anchor_is_refused_naming_the_line(
    tmp_path: Path, content: bytes, where: str
) -> None:
    p = tmp_path / "bad.anchor"
    p.write_bytes(content)
    with pytest.raises(InputError) as err:
        read_anchor(p)
    assert str(err.value).startswith(f"{p}{where}"), str(err.value)


def test_missing_anchor_file_is_refused(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="does not exist"):
        read_anchor(tmp_path / "none.anchor")
    with pytest.raises(InputError, match="not a regular file"):
        read_anchor(tmp_path)


def _cli(*args: str) -> tuple[int, str, str]:
    r = CliRunner().invoke(cli, list(args))
    assert r.exception is None or isinstance(r.exception, SystemExit), r.exception
    return r.exit_code, r.stdout, r.stderr


def test_cli_verify_with_the_anchor(sqlite_url: str, tmp_path: Path) -> None:
    anchor = tmp_path / "audit.anchor"
    store = Store.open(sqlite_url, anchor=anchor)
    _fill(store, 4)
    store.close()
    code, out, _ = _cli("audit", "verify", "--db", sqlite_url, "--anchor", str(anchor))
    assert code == 0 and "9 records, reaches the anchor" in out
    _truncate(sqlite_url, 6)
    code, out, _ = _cli("audit", "verify", "--db", sqlite_url)
    assert (code, out.strip()) == (0, "audit trail ok: 6 records")
    code, out, err = _cli("audit", "verify", "--db", sqlite_url, "--anchor", str(anchor))
    assert code == AuditChainError.exit_code and out == ""
    assert err.count("\n") == 1 and "anchors record 9" in err and "has 6 records" in err, err
    code, _, err = _cli("audit", "verify", "--db", sqlite_url, "--anchor", str(tmp_path / "x"))
    assert code == 2 and "x: the anchor file does not exist" in err


@pytest.mark.parametrize("command", [["verify"], ["list"], ["export", "--format", "csv"]])
def test_audit_commands_refuse_a_missing_database(tmp_path: Path, command: list[str]) -> None:
    missing = tmp_path / "no" / "such" / "balancer.db"
    code, out, err = _cli("audit", *command, "--db", f"sqlite:///{missing}")
    assert code == 2 and out == ""
    assert err == f"error: {missing}: the database does not exist (it is not created)\n"
    assert not (tmp_path / "no").exists()
    # also the default store under $BALANCER_STATE_DIR
    r = CliRunner(env={"BALANCER_STATE_DIR": str(tmp_path / "state"), "BALANCER_DB": ""}).invoke(
        cli, ["audit", *command]
    )
    assert r.exit_code == 2 and "the database does not exist" in r.stderr
    assert not (tmp_path / "state").exists()


def test_audit_commands_refuse_a_database_that_is_not_a_store(tmp_path: Path) -> None:
    other = tmp_path / "other.db"
    eng = sa.create_engine(f"sqlite:///{other}")
    with eng.begin() as conn:
        conn.execute(sa.text("CREATE TABLE t (x INTEGER)"))
    eng.dispose()
    code, _, err = _cli("audit", "verify", "--db", f"sqlite:///{other}")
    assert code == 2 and "not a balancer store (no table audit_head)" in err, err
    assert sa.inspect(sa.create_engine(f"sqlite:///{other}")).get_table_names() == ["t"]


def test_export_output_never_creates_directories(sqlite_url: str, tmp_path: Path) -> None:
    store = Store.open(sqlite_url)
    _fill(store, 1)
    store.close()
    target = tmp_path / "nonexistent" / "dir" / "x.json"
    code, _, err = _cli("audit", "export", "--db", sqlite_url, "-o", str(target))
    assert code == 2 and f"{target}: the directory" in err and "does not exist" in err
    assert not (tmp_path / "nonexistent").exists()
    ok = tmp_path / "x.csv"
    code, _, _ = _cli("audit", "export", "--db", sqlite_url, "--format", "csv", "-o", str(ok))
    assert code == 0 and ok.read_text().count("\n") == 1 + 3
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".x.csv")] == []
