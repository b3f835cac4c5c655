"""The benchmark scenario: a generated cluster (balancer.sim.generator) plus anti-affinity
groups and one host entering maintenance, as a Policy and a modified Snapshot."""

from __future__ import annotations

import random
from dataclasses import dataclass

from balancer.model import HostState, Snapshot
from balancer.sim.generator import GeneratorSpec, generate
from policies.model import Limits, Policy, Rule, RuleKind, Selector

#: one anti-affinity group of this many VMs per two hosts
GROUP_SIZE = 3


@dataclass(frozen=True, slots=True, kw_only=True)
class Scenario:
    name: str
    snapshot: Snapshot
    policy: Policy
    maintenance_host: str
    groups: int


def build_scenario(hosts: int, vms: int, *, seed: int = 1, threshold: int = 4) -> Scenario:
    snap = generate(GeneratorSpec(hosts=hosts, vms=vms, seed=seed))
    rng = random.Random(seed * 7919 + hosts)
    # a host that is not among the busiest enters maintenance
    by_load = sorted(snap.loads().values(), key=lambda load: (load.cpu_load, load.host))
    maintenance = by_load[len(by_load) // 2].host
    snap = snap.with_host_state(maintenance, HostState.ENTERING_MAINTENANCE)
    # anti-affinity groups whose members start on distinct hosts (a constraint, not a repair)
    names = [v.name for v in snap.vms]
    rng.shuffle(names)
    host_of = snap.placement()
    rules: list[Rule] = []
    used: set[str] = set()
    pool = iter(names)
    for g in range(max(1, hosts // 2)):
        members: list[str] = []
        hosts_used: set[str] = set()
        for name in pool:
            if name in used or host_of[name] in hosts_used:
                continue
            members.append(name)
            hosts_used.add(host_of[name])
            used.add(name)
            if len(members) == GROUP_SIZE:
                break
        if len(members) < 2:
            break
        rules.append(
            Rule(
                name=f"spread-{g + 1:03d}",
                kind=RuleKind.ANTI_AFFINITY,
                vms=Selector(names=frozenset(members)),
            )
        )
    policy = Policy(
        threshold=threshold,
        rules=tuple(rules),
        limits=Limits(moves_per_cycle=10_000, concurrent_per_host=4, concurrent_total=32),
    )
    return Scenario(
        name=f"{hosts}x{vms}",
        snapshot=snap,
        policy=policy,
        maintenance_host=maintenance,
        groups=len(rules),
    )
