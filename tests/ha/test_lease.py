"""Leases and fencing against a real PostgreSQL server (tests/ha/conftest.py, built on
tests/pg.py)."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime

import pytest

from balancer.errors import FencedError, StorageError
from balancer.ha.fence import install_fencing
from balancer.ha.lease import LeaseStore
from balancer.storage import Fence, NewRequest, Outcome, Store
from tests.ha.harness import Postgres, wait_for

pytestmark = pytest.mark.postgres


def _req(vm: str = "vm1") -> NewRequest:
    return NewRequest(
        vm=vm,
        source="h1",
        target="h2",
        priority=30,
        priority_class="balance",
        who="test",
        reason="balance",
    )


@pytest.fixture
def stores(ha_postgres: Postgres) -> Iterator[tuple[Store, LeaseStore]]:
    store = Store.open(ha_postgres.create_database())
    install_fencing(store.engine)
    yield store, LeaseStore(store.engine)
    store.close()


def _wait_lapsed(leases: LeaseStore, cluster: str) -> None:
    """Until the database's clock says ``cluster``'s lease has expired."""
    wait_for(
        lambda: not next(x for x in leases.leases() if x.cluster == cluster).valid,
        10.0,
        f"{cluster}'s lease to lapse",
    )


def test_acquire_is_exclusive_and_epochs_only_grow(stores: tuple[Store, LeaseStore]) -> None:
    _, leases = stores
    a = leases.acquire("c1", "a", 1.0)
    assert a is not None and a.epoch == 1
    assert leases.acquire("c1", "b", 1.0) is None  # held by a
    assert leases.acquire("c2", "b", 1.0) is not None  # each cluster on its own
    renewed = leases.renew(a, 1.0)
    assert renewed is not None and renewed.epoch == 1 and renewed.expires_at >= a.expires_at
    _wait_lapsed(leases, "c1")
    assert leases.renew(a, 1.0) is None  # a lapsed term is never revived
    b = leases.acquire("c1", "b", 5.0)
    assert b is not None and b.epoch == 2
    assert leases.release(a) is False
    assert leases.release(b) is True
    c = leases.acquire("c1", "a", 5.0)  # released: free at once, a new epoch
    assert c is not None and c.epoch == 3
    [l1, _] = leases.leases()
    assert l1.cluster == "c1" and l1.holder == "a" and l1.epoch == 3 and l1.valid


def test_racing_acquirers_get_one_lease(stores: tuple[Store, LeaseStore]) -> None:
    from concurrent.futures import ThreadPoolExecutor

    _, leases = stores
    with ThreadPoolExecutor(8) as pool:
        got = list(pool.map(lambda i: leases.acquire("race", f"i{i}", 5.0), range(8)))
    assert sum(t is not None for t in got) == 1


def test_old_epoch_writes_are_refused(stores: tuple[Store, LeaseStore]) -> None:
    store, leases = stores
    now = datetime.now(UTC)
    t1 = leases.acquire("c1", "a", 1.0)
    assert t1 is not None
    old = store.fenced(Fence(cluster="c1", epoch=t1.epoch))
    rid = old.add_request(_req(), at=now)  # the leader writes, stamped with its epoch
    with store.engine.connect() as conn:
        import sqlalchemy as sa

        stamped = conn.execute(sa.text("SELECT epoch FROM journal")).scalars().all()
    assert stamped == [t1.epoch]
    _wait_lapsed(leases, "c1")
    # expired, nobody took over yet: still refused (the lease is the database's, not ours)
    with pytest.raises(FencedError) as err:
        old.transition(rid, "starting", at=now, expect={"queued"}, state="starting")
    assert err.value.cluster == "c1" and err.value.epoch == t1.epoch
    assert isinstance(err.value, StorageError)
    t2 = leases.acquire("c1", "b", 10.0)
    assert t2 is not None and t2.epoch == t1.epoch + 1
    new = store.fenced(Fence(cluster="c1", epoch=t2.epoch))
    with pytest.raises(FencedError):
        old.finish(rid, Outcome(result="skipped"), at=now)
    assert new.transition(rid, "starting", at=now, expect={"queued"}, state="starting")
    with pytest.raises(FencedError):  # a paused old leader cannot start it again
        old.transition(rid, "started", at=now, expect={"starting"}, state="running")
    assert store.request(rid).state == "starting"
    # unfenced writers (a standby taking a request, the command line) are not fenced
    store.add_request(_req("vm2"), at=now)
    assert store.verify() == 2  # two requests; the refused outcome left no record
