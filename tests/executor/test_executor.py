"""The executor on the simulated cluster with a manual clock (instant, deterministic), on SQLite
and on a real PostgreSQL server."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import timedelta

import pytest

from balancer.executor import (
    Executor,
    ExecutorConfig,
    MigrationRequest,
    PriorityClass,
    Result,
    SkipReason,
)
from balancer.model import HostState, Snapshot
from balancer.plan import MoveReason
from balancer.port import MigrationOptions
from balancer.sim.cluster import SimulatedCluster
from policies.model import Policy, Rule, RuleKind, Selector
from tests.executor.helpers import (
    assert_journal_matches_cluster,
    assert_limits,
    assert_one_outcome_each,
    intervals,
    make_plan,
    max_overlap,
    rig,
    start_order,
)
from tests.factories import make_host, make_snapshot, make_vm, small_cluster


def req(
    vm: str, src: str, dst: str, prio: PriorityClass = PriorityClass.BALANCE, **kw: object
) -> MigrationRequest:
    return MigrationRequest(
        vm=vm,
        source=src,
        target=dst,
        priority=prio,
        reason=MoveReason.MANUAL,
        **kw,  # type: ignore[arg-type]
    )


# -- priority -----------------------------------------------------------------------------------


def test_priority_order_under_contention(db_url: str) -> None:
    r = rig(small_cluster(3, 4), db_url, concurrent_total=1)
    ex = r.ex
    low = ex.submit(req("vm1", "h1", "h2", PriorityClass.MANUAL_LOW))
    bal = ex.submit(req("vm2", "h1", "h3", PriorityClass.BALANCE))
    evac = ex.submit(req("vm5", "h2", "h3", PriorityClass.EVACUATION))
    rule = ex.submit(req("vm9", "h3", "h1", PriorityClass.RULE_REPAIR))
    high = ex.submit(req("vm10", "h3", "h2", PriorityClass.MANUAL_HIGH))
    normal = ex.submit(req("vm3", "h1", "h2", PriorityClass.MANUAL_NORMAL))
    bal2 = ex.submit(req("vm4", "h1", "h3", PriorityClass.BALANCE))
    assert ex.run()
    assert start_order(r.store) == [evac, rule, high, bal, bal2, normal, low]
    assert_one_outcome_each(r.store)
    assert all(x.result is Result.SUCCEEDED for x in ex.results([low, bal, evac, rule]))


def test_higher_class_overtakes_queued_work_but_not_work_in_flight(db_url: str) -> None:
    r = rig(small_cluster(3, 4), db_url, concurrent_total=1)
    a = r.ex.submit(req("vm1", "h1", "h2"))
    b = r.ex.submit(req("vm2", "h1", "h2"))
    r.ex.tick()
    assert [v.request_id for v in r.ex.status().running] == [a]
    e = r.ex.submit(req("vm5", "h2", "h3", PriorityClass.EVACUATION))
    assert r.ex.run()
    assert start_order(r.store) == [a, e, b]
    assert "aborting" not in {ev.event for ev in r.store.events(a)}
    assert_one_outcome_each(r.store)


def test_preemption_only_when_asked_and_the_victim_is_requeued(db_url: str) -> None:
    r = rig(small_cluster(3, 4), db_url, concurrent_total=1)
    a = r.ex.submit(req("vm1", "h1", "h2"))
    r.ex.tick()
    r.clock.advance(1.0)
    e = r.ex.submit(req("vm5", "h2", "h3", PriorityClass.EVACUATION, preempt=True))
    assert r.ex.run()
    events = [ev.event for ev in r.store.events(a)]
    assert events.count("starting") == 2 and "requeued" in events
    assert start_order(r.store) == [a, e, a]
    assert [x.result for x in r.ex.results([a, e])] == [Result.SUCCEEDED, Result.SUCCEEDED]
    assert_one_outcome_each(r.store)
    assert_limits(r.store, ["h1", "h2", "h3"], per_host=2, total=1)


# -- limits and streaming -----------------------------------------------------------------------


def test_per_host_and_total_limits_never_exceeded(db_url: str) -> None:
    snap = small_cluster(4, 5)
    hosts = [h.name for h in snap.hosts]
    moves = [
        (v.name, v.host, hosts[(hosts.index(v.host) + 1 + i % 3) % 4])
        for i, v in enumerate(snap.vms)
    ]
    r = rig(snap, db_url, concurrent_per_host=2, concurrent_total=3)
    sub = r.ex.submit_plan(make_plan(moves))
    assert r.ex.run()
    assert all(x.result is Result.SUCCEEDED for x in r.ex.results(sub.request_ids))
    ivs = assert_limits(r.store, hosts, per_host=2, total=3)
    assert max_overlap(ivs) == 3  # the slots were used, not left empty
    assert_one_outcome_each(r.store)
    assert_journal_matches_cluster(r.store, snap, r.sim)


def test_streaming_fills_a_free_slot_at_once(db_url: str) -> None:
    hosts = [make_host(f"h{i}") for i in range(1, 7)]
    big = make_vm("big", "h1", memory_mib=40960)
    small = [make_vm(f"s{i}", "h2", memory_mib=1024) for i in range(4)]
    snap = make_snapshot(hosts, [big, *small])
    plan = make_plan([("big", "h1", "h6")] + [(f"s{i}", "h2", f"h{3 + i % 3}") for i in range(4)])
    r = rig(snap, db_url, concurrent_per_host=8, concurrent_total=2)
    r.ex.submit_plan(plan)
    assert r.ex.run()
    ivs = {iv.vm: iv for iv in intervals(r.store)}
    for i in range(1, 4):
        # the next small one starts in the very tick the previous one ended
        assert ivs[f"s{i}"].start == ivs[f"s{i - 1}"].end
        # ... while the big one is still running: no waiting for a whole batch
        assert ivs["big"].start < ivs[f"s{i}"].start < ivs["big"].end
    assert_one_outcome_each(r.store)


def test_steps_of_a_plan_keep_their_order(db_url: str) -> None:
    snap = small_cluster(3, 4)
    plan = make_plan(
        [
            ("vm1", "h1", "h2", 0),
            ("vm2", "h1", "h3", 0),
            ("vm3", "h1", "h2", 1),
            ("vm3", "h2", "h3", 2),
        ]
    )
    r = rig(snap, db_url, concurrent_per_host=4, concurrent_total=4)
    r.ex.submit_plan(plan)
    assert r.ex.run()
    ivs = intervals(r.store)
    step0_end = max(iv.end for iv in ivs if iv.vm in ("vm1", "vm2"))
    vm3 = sorted((iv for iv in ivs if iv.vm == "vm3"), key=lambda iv: iv.start)
    assert vm3[0].start >= step0_end and vm3[1].start >= vm3[0].end
    assert r.sim.locate("vm3") == "h3"
    assert_journal_matches_cluster(r.store, snap, r.sim)


def test_no_two_members_of_an_anti_affinity_group_move_at_once(db_url: str) -> None:
    hosts = [make_host(f"h{i}") for i in range(1, 7)]
    vms = [
        make_vm("web1", "h1"),
        make_vm("web2", "h2"),
        make_vm("web3", "h3"),
        make_vm("db1", "h1"),
    ]
    policy = Policy(
        rules=(
            Rule(
                name="web-spread",
                kind=RuleKind.ANTI_AFFINITY,
                vms=Selector(names=frozenset({"web1", "web2", "web3"})),
            ),
        )
    )
    snap = make_snapshot(hosts, vms)
    plan = make_plan(
        [("web1", "h1", "h4"), ("web2", "h2", "h5"), ("web3", "h3", "h6"), ("db1", "h1", "h5")]
    )
    r = rig(snap, db_url, policy=policy, concurrent_per_host=4, concurrent_total=8)
    r.ex.submit_plan(plan)
    assert r.ex.run()
    ivs = intervals(r.store)
    web = [iv for iv in ivs if iv.vm.startswith("web")]
    assert max_overlap(web) == 1
    assert max_overlap(ivs) == 2  # db1 is not in the group: it moved alongside
    assert all(x.result is Result.SUCCEEDED for x in r.ex.recent_results())


# -- the pre-start re-check ---------------------------------------------------------------------


def test_recheck_skips_stale_moves_with_a_typed_reason(db_url: str) -> None:
    hosts = [
        make_host("h1"),
        make_host("h2"),
        make_host("h3"),
        make_host("old", cpu_features={"sse4_2"}),
        make_host("tiny", memory_mib=8192),
    ]
    vms = [
        make_vm("a", "h1"),
        make_vm("b", "h1"),
        make_vm("c", "h1", cpu_features={"avx2"}),
        make_vm("d", "h1", memory_mib=6144),
        make_vm("filler", "tiny", memory_mib=4096),
        make_vm("e", "h2"),
        make_vm("f", "h1"),
    ]
    r = rig(make_snapshot(hosts, vms), db_url)
    ids = {
        "moved": r.ex.submit(req("a", "h2", "h3")),  # a runs on h1
        "maint": r.ex.submit(req("b", "h1", "h3")),
        "cpu": r.ex.submit(req("c", "h1", "old")),
        "room": r.ex.submit(req("d", "h1", "tiny")),
        "there": r.ex.submit(req("e", "h1", "h2")),  # e runs on h2 already
        "gone": r.ex.submit(req("nosuch", "h1", "h2")),
        "unknown": r.ex.submit(req("f", "h1", "h9")),
    }
    r.sim.set_host_state("h3", HostState.MAINTENANCE)
    assert r.ex.run()
    got = {k: r.store.request(v).skip_reason for k, v in ids.items()}
    assert got == {
        "moved": SkipReason.VM_MOVED,
        "maint": SkipReason.TARGET_NOT_ACTIVE,
        "cpu": SkipReason.CPU_INCOMPATIBLE,
        "room": SkipReason.NO_ROOM,
        "there": SkipReason.ALREADY_ON_TARGET,
        "gone": SkipReason.VM_GONE,
        "unknown": SkipReason.TARGET_UNKNOWN,
    }
    assert all(r.store.request(v).state == "skipped" for v in ids.values())
    assert not r.sim.jobs()  # nothing was started
    assert_one_outcome_each(r.store)


def test_a_move_that_went_stale_while_queued_is_skipped_just_before_it_starts(
    db_url: str,
) -> None:
    r = rig(small_cluster(3, 4), db_url, concurrent_total=1)
    first = r.ex.submit(req("vm1", "h1", "h2"))
    second = r.ex.submit(req("vm2", "h1", "h3"))
    r.ex.tick()
    r.sim.set_host_state("h3", HostState.QUARANTINED)  # while the second waits for its slot
    assert r.ex.run()
    assert r.store.request(first).state == "succeeded"
    s = r.store.request(second)
    assert (s.state, s.skip_reason) == ("skipped", "target_not_active")
    assert "quarantined" in (s.error or "")


def test_memory_of_migrations_in_flight_counts_against_the_target(db_url: str) -> None:
    hosts = [make_host("h1"), make_host("small", memory_mib=6144)]
    vms = [make_vm("a", "h1"), make_vm("b", "h1")]
    r = rig(make_snapshot(hosts, vms), db_url, concurrent_per_host=4)
    a = r.ex.submit(req("a", "h1", "small"))
    b = r.ex.submit(req("b", "h1", "small"))
    assert r.ex.run()
    assert r.store.request(a).state == "succeeded"
    assert (r.store.request(b).state, r.store.request(b).skip_reason) == ("skipped", "no_room")


# -- stall, time limit, verification ------------------------------------------------------------


def test_stall_is_aborted(db_url: str) -> None:
    r = rig(small_cluster(2, 2), db_url, stall_timeout_s=5.0)
    r.sim.inject_stall("vm1", at_fraction=0.3)
    rid = r.ex.submit(req("vm1", "h1", "h2"))
    assert r.ex.run()
    out = r.store.request(rid)
    assert out.state == "aborted" and out.abort_reason == "stall"
    assert out.error and out.error.startswith("stall")
    assert r.sim.locate("vm1") == "h1"
    # it was aborted about 5 s after it stopped moving, not at once and not never
    assert out.ended_at is not None and out.started_at is not None
    assert 5.0 <= (out.ended_at - out.started_at).total_seconds() <= 0.3 * 4.6 + 5.0 + 1.5
    assert_one_outcome_each(r.store)


def test_time_limit_is_aborted(db_url: str) -> None:
    r = rig(small_cluster(2, 2), db_url, time_limit_s=2.0)
    rid = r.ex.submit(req("vm1", "h1", "h2"))
    assert r.ex.run()
    out = r.store.request(rid)
    assert (out.state, out.abort_reason) == ("aborted", "time_limit")
    assert r.sim.locate("vm1") == "h1"
    events = [e.event for e in r.store.events(rid)]
    assert events.index("aborting") < events.index("aborted")


class _LyingPort(SimulatedCluster):
    """Reports success but the VM stays where it was (a verification must catch it)."""

    def locate(self, vm: str) -> str | None:
        return "h1"


def test_success_is_verified_with_locate(db_url: str) -> None:
    from balancer.sim.clock import ManualClock

    clock = ManualClock()
    snap = small_cluster(2, 2)
    r = rig(snap, db_url, clock=clock, sim=_LyingPort(snap, clock=clock))
    rid = r.ex.submit(req("vm1", "h1", "h2"))
    assert r.ex.run()
    out = r.store.request(rid)
    assert out.state == "failed" and "verification failed" in (out.error or "")


# -- retry --------------------------------------------------------------------------------------


def test_failed_migration_is_retried_once_on_the_next_target(db_url: str) -> None:
    calls: list[tuple[str, frozenset[str]]] = []

    def chooser(
        snap: Snapshot, vm: str, exclude: frozenset[str], reserved: Mapping[str, int]
    ) -> str | None:
        calls.append((vm, exclude))
        return "h3"

    r = rig(small_cluster(3, 2), db_url)
    r.ex.chooser = chooser
    r.sim.inject_failure("vm1", at_fraction=0.5, message="connection reset")
    rid = r.ex.submit(req("vm1", "h1", "h2", allow_retry=True))
    assert r.ex.run()
    out = r.store.request(rid)
    assert (out.state, out.target, out.requested_target, out.attempt) == (
        "succeeded",
        "h3",
        "h2",
        2,
    )
    assert calls == [("vm1", frozenset({"h1", "h2"}))]
    assert r.sim.locate("vm1") == "h3"
    assert "retrying" in [e.event for e in r.store.events(rid)]
    (rec,) = [a for a in r.store.audit() if a.kind == "outcome"]
    assert "connection reset" in (rec.detail or "") and rec.target == "h3"
    assert_one_outcome_each(r.store)


def test_default_chooser_takes_the_host_with_most_free_memory(db_url: str) -> None:
    hosts = [make_host("h1"), make_host("h2"), make_host("h3"), make_host("h4")]
    vms = [make_vm("a", "h1"), make_vm("x", "h3", memory_mib=65536)]
    r = rig(make_snapshot(hosts, vms), db_url)
    r.sim.inject_failure("a", at_fraction=0.2)
    rid = r.ex.submit(req("a", "h1", "h2", allow_retry=True))
    assert r.ex.run()
    assert r.store.request(rid).target == "h4"


def test_no_retry_unless_the_request_allows_it(db_url: str) -> None:
    r = rig(small_cluster(3, 2), db_url)
    r.sim.inject_failure("vm1", at_fraction=0.5, message="connection reset")
    rid = r.ex.submit(req("vm1", "h1", "h2"))
    assert r.ex.run()
    out = r.store.request(rid)
    assert (out.state, out.attempt, out.error) == ("failed", 1, "connection reset")
    assert r.sim.locate("vm1") == "h1"


# -- cancellation -------------------------------------------------------------------------------


def test_cancel_queued_and_running_work(db_url: str) -> None:
    r = rig(small_cluster(3, 4), db_url, concurrent_total=1)
    a = r.ex.submit(req("vm1", "h1", "h2"))
    b = r.ex.submit(req("vm2", "h1", "h3"))
    r.ex.tick()
    r.clock.advance(1.0)
    assert r.ex.cancel(b, who="alice")
    assert r.ex.cancel(a, who="alice")
    assert not r.ex.cancel(b)
    assert r.ex.run()
    qa, qb = r.store.request(a), r.store.request(b)
    assert (qb.state, qb.skip_reason, qb.error) == ("skipped", "cancelled", "cancelled by alice")
    assert (qa.state, qa.abort_reason) == ("aborted", "cancelled")
    assert r.sim.locate("vm1") == "h1" and r.sim.locate("vm2") == "h1"
    assert_one_outcome_each(r.store)


def test_cancel_a_whole_plan_and_abort_all(db_url: str) -> None:
    r = rig(small_cluster(3, 4), db_url, concurrent_total=2)
    sub = r.ex.submit_plan(make_plan([(f"vm{i}", "h1", "h2") for i in range(1, 5)]))
    r.ex.tick()
    assert r.ex.cancel_plan(sub.plan_id) == 4
    assert r.ex.run()
    assert {x.result for x in r.ex.results(sub.request_ids)} == {Result.ABORTED, Result.SKIPPED}
    other = r.ex.submit(req("vm5", "h2", "h3"))
    r.ex.tick()
    r.ex.abort_all(who="ops")
    assert r.ex.run()
    assert r.store.request(other).state == "aborted"
    assert_one_outcome_each(r.store)


# -- superseded plans ---------------------------------------------------------------------------


def test_plan_older_than_its_snapshot_by_more_than_the_limit_is_superseded(db_url: str) -> None:
    r = rig(small_cluster(3, 2), db_url, max_plan_age_s=600)
    plan = make_plan([("vm1", "h1", "h2"), ("vm2", "h1", "h3")])
    sub = r.ex.submit_plan(plan, made_at=r.clock.now() - timedelta(seconds=601))
    assert sub.superseded and "older" in sub.superseded
    assert r.ex.idle
    assert {x.result for x in r.ex.results(sub.request_ids)} == {Result.SUPERSEDED}
    assert not r.sim.jobs()
    assert r.store.plan(sub.plan_id).state == "superseded"  # type: ignore[union-attr]
    assert_one_outcome_each(r.store)


def test_plan_that_ages_in_the_queue_is_superseded_for_the_rest(db_url: str) -> None:
    r = rig(small_cluster(3, 4), db_url, max_plan_age_s=8, concurrent_total=1)
    sub = r.ex.submit_plan(make_plan([(f"vm{i}", "h1", "h2") for i in range(1, 5)]))
    assert r.ex.run()
    results = [x.result for x in r.ex.results(sub.request_ids)]
    assert results[0] is Result.SUCCEEDED and results[-1] is Result.SUPERSEDED


def test_superseding_a_plan_finishes_its_queued_moves_and_lets_the_running_one_finish(
    db_url: str,
) -> None:
    """What the service does when a move outside the balancer breaks a plan's premises."""
    r = rig(small_cluster(3, 4), db_url, concurrent_total=1)
    sub = r.ex.submit_plan(make_plan([(f"vm{i}", "h1", "h2") for i in range(1, 4)]))
    r.ex.tick()  # the first starts, the others wait
    superseded = r.ex.supersede_queued(sub.plan_id, "superseded: vm4 moved h1 -> h2 outside")
    assert superseded == list(sub.request_ids[1:])
    assert r.ex.run()
    results = [x.result for x in r.ex.results(sub.request_ids)]
    assert results == [Result.SUCCEEDED, Result.SUPERSEDED, Result.SUPERSEDED]
    assert "vm4 moved" in (r.store.request(sub.request_ids[1]).error or "")
    assert r.ex.supersede_queued(sub.plan_id, "again") == []
    assert_one_outcome_each(r.store)


def test_plan_whose_premises_changed_is_superseded(db_url: str) -> None:
    snap = small_cluster(3, 2)
    r = rig(snap, db_url)
    # with the plan's snapshot: a host changed state since
    r.sim.set_host_state("h3", HostState.MAINTENANCE)
    sub = r.ex.submit_plan(make_plan([("vm1", "h1", "h2")]), plan_snapshot=snap)
    assert sub.superseded and "premises" in sub.superseded
    # without it: a VM is no longer on the source of its first move
    sub2 = r.ex.submit_plan(make_plan([("vm3", "h1", "h2")]))
    assert sub2.superseded and "vm3 runs on h2" in sub2.superseded
    assert not r.sim.jobs()


def test_the_same_plan_submitted_twice_runs_once(db_url: str) -> None:
    r = rig(small_cluster(3, 2), db_url)
    plan = make_plan([("vm1", "h1", "h2")])
    first = r.ex.submit_plan(plan)
    assert r.ex.run()
    again = r.ex.submit_plan(plan)
    assert again.resumed and again.request_ids == first.request_ids
    assert r.ex.run()
    assert len(r.sim.jobs()) == 1


# -- recovery -----------------------------------------------------------------------------------


def test_recovery_records_the_real_outcome_and_resumes_the_queue(db_url: str) -> None:
    snap = small_cluster(3, 4)
    r = rig(snap, db_url, concurrent_total=2)
    sub = r.ex.submit_plan(make_plan([(f"vm{i}", "h1", "h2") for i in range(1, 5)]))
    r.ex.tick()
    assert len(r.ex.status().running) == 2
    # the balancer dies here; the hypervisors carry on
    r.clock.advance(30)
    ex2 = Executor(r.sim, r.store, clock=r.clock, config=r.ex.config)
    recovered = ex2.recover()
    assert [x.result for x in recovered] == [Result.SUCCEEDED, Result.SUCCEEDED]
    # the real job figures, not the time the balancer was away
    assert all(x.duration_s is not None and x.duration_s < 6 for x in recovered)
    assert len(ex2.status().queued) == 2
    assert ex2.run()
    assert {x.result for x in ex2.results(sub.request_ids)} == {Result.SUCCEEDED}
    assert len(r.sim.jobs()) == 4  # nothing done twice
    assert_one_outcome_each(r.store)
    assert_journal_matches_cluster(r.store, snap, r.sim)


def test_recovery_adopts_a_migration_started_but_not_written_down(db_url: str) -> None:
    snap = small_cluster(3, 2)
    r = rig(snap, db_url)
    rid = r.ex.submit(req("vm1", "h1", "h2"))
    now = r.clock.now()
    # killed between asking the hypervisor and writing the job id down
    assert r.store.transition(
        rid, "starting", at=now, expect={"queued"}, state="starting", started_at=now
    )
    r.sim.start_migration("vm1", "h1", "h2", MigrationOptions())
    r.clock.advance(1.0)
    ex2 = Executor(r.sim, r.store, clock=r.clock, config=r.ex.config)
    ex2.recover()
    assert [v.request_id for v in ex2.status().running] == [rid]
    assert ex2.run()
    assert r.store.request(rid).state == "succeeded"
    assert len(r.sim.jobs()) == 1
    assert_one_outcome_each(r.store)


def test_recovery_requeues_a_migration_that_never_started(db_url: str) -> None:
    r = rig(small_cluster(3, 2), db_url)
    rid = r.ex.submit(req("vm1", "h1", "h2"))
    now = r.clock.now()
    assert r.store.transition(
        rid, "starting", at=now, expect={"queued"}, state="starting", started_at=now
    )
    ex2 = Executor(r.sim, r.store, clock=r.clock, config=r.ex.config)
    ex2.recover()
    assert [v.request_id for v in ex2.status().queued] == [rid]
    assert ex2.run()
    assert r.store.request(rid).state == "succeeded"
    assert len(r.sim.jobs()) == 1
    assert "requeued" in [e.event for e in r.store.events(rid)]


def test_recovery_of_a_failed_job_while_down(db_url: str) -> None:
    r = rig(small_cluster(3, 2), db_url)
    r.sim.inject_failure("vm1", at_fraction=0.4, message="disk error")
    rid = r.ex.submit(req("vm1", "h1", "h2"))
    r.ex.tick()
    r.clock.advance(30)
    ex2 = Executor(r.sim, r.store, clock=r.clock, config=r.ex.config)
    ex2.recover()
    assert ex2.run()
    out = r.store.request(rid)
    assert (out.state, out.error) == ("failed", "disk error")
    assert_one_outcome_each(r.store)


def test_config_from_policy() -> None:
    from policies.model import Limits, MigrationSettings

    p = Policy(
        limits=Limits(concurrent_per_host=3, concurrent_total=5),
        migration=MigrationSettings(stall_timeout_s=12, time_limit_s=99, bandwidth_mib_s=500),
    )
    cfg = ExecutorConfig.from_policy(p, poll_interval_s=0.25)
    assert (cfg.concurrent_per_host, cfg.concurrent_total) == (3, 5)
    assert (cfg.stall_timeout_s, cfg.time_limit_s, cfg.poll_interval_s) == (12, 99, 0.25)
    assert cfg.options.bandwidth_mib_s == 500
    with pytest.raises(ValueError):
        ExecutorConfig(concurrent_total=0)
