"""A retried mandatory move goes only where the policy in force allows: never to a host a
``vm_host must_not`` rule forbids or the headroom keeps free (the retry asks the optimizer's
assistant, the same ranking `balancer assist` shows)."""

from __future__ import annotations

from dataclasses import replace

from balancer.executor import MigrationRequest, PriorityClass
from balancer.model import Snapshot
from balancer.plan import MoveReason
from policies.model import Resources, RuleMode
from tests.executor.helpers import rig
from tests.factories import make_host, make_snapshot, make_vm
from tests.optimizer.helpers import policy, vm_host

GIB = 1024


def _cluster() -> Snapshot:
    hosts = [make_host(f"h{i}", memory_mib=64 * GIB) for i in range(1, 6)]
    vms = [
        make_vm("a", "h1", memory_mib=8 * GIB),
        # h3: 52 GiB of 64 used: a fits physically (60 GiB) but not under 10 % memory headroom
        make_vm("big3", "h3", memory_mib=52 * GIB),
        # h5: half full, allowed
        make_vm("half5", "h5", memory_mib=32 * GIB),
    ]  # h2: the first target (it fails); h4: empty, the most free memory, but forbidden
    return make_snapshot(hosts, vms)


def _evacuation(vm: str, src: str, dst: str) -> MigrationRequest:
    return MigrationRequest(
        vm=vm,
        source=src,
        target=dst,
        priority=PriorityClass.EVACUATION,
        reason=MoveReason.MAINTENANCE,
        allow_retry=True,
    )


def test_retry_respects_must_not_and_headroom(db_url: str) -> None:
    pol = replace(
        policy(rules=(vm_host("not-h4", ("a",), ("h4",), RuleMode.MUST_NOT),)),
        headroom=Resources(cpu=0.10, memory=0.10),
    )
    r = rig(_cluster(), db_url, policy=pol)
    r.sim.inject_failure("a", at_fraction=0.3, message="connection reset")
    rid = r.ex.submit(_evacuation("a", "h1", "h2"))
    assert r.ex.run()
    out = r.store.request(rid)
    assert (out.state, out.target, out.attempt) == ("succeeded", "h5", 2), out
    assert r.sim.locate("a") == "h5"


def test_no_allowed_host_means_no_retry(db_url: str) -> None:
    # every other host is forbidden: the failed attempt is final, the VM stays on its source
    pol = policy(rules=(vm_host("only-h1-h2", ("a",), ("h1", "h2"), RuleMode.MUST),))
    r = rig(_cluster(), db_url, policy=pol)
    r.sim.inject_failure("a", at_fraction=0.3, message="connection reset")
    rid = r.ex.submit(_evacuation("a", "h1", "h2"))
    assert r.ex.run()
    out = r.store.request(rid)
    assert (out.state, out.attempt) == ("failed", 1), out
    assert out.error == "connection reset"
    assert r.sim.locate("a") == "h1"
