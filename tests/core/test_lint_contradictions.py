"""Each contradiction class of the policy lint: alone where the class allows it, against a
snapshot, through ``balancer policy check`` (exit 2, the rules named), and ``balancer plan``
on the same files names the same rules (exit 3)."""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import pytest
from click.testing import CliRunner

from balancer.cli import cli
from balancer.model import HostState, Snapshot
from balancer.plan import CauseKind, PlanStatus
from balancer.planner import make_plan
from balancer.snapshot_io import dump_snapshot
from policies.lint import Severity, lint
from policies.loader import load_policy
from tests.factories import make_host, make_snapshot, make_vm

BIG_MIB = 70_000  # two of them exceed a 128 GiB host


def cluster() -> Snapshot:
    hosts = [
        make_host("h1", labels={"rack": "a"}),
        make_host("h2", labels={"rack": "a"}),
        make_host("h3", state=HostState.MAINTENANCE),
        make_host("h4", cpu_features={"sse4_2"}),
    ]
    vms = [
        make_vm("v1", "h1"),
        make_vm("v2", "h2"),
        make_vm("v3", "h1"),
        make_vm("v4", "h2"),
        make_vm("v5", "h1", cpu_features={"avx2"}),
        make_vm("v6", "h2"),
        make_vm("v7", "h1", memory_mib=BIG_MIB),
        make_vm("v8", "h2", memory_mib=BIG_MIB),
    ]
    return make_snapshot(hosts, vms)


@dataclass(frozen=True)
class Case:
    id: str
    rules: str
    #: error code -> rule names, against the snapshot
    expect: dict[str, frozenset[str]]
    #: the same without a snapshot (None: the class needs hosts)
    alone: dict[str, frozenset[str]] | None = None
    kind: CauseKind = CauseKind.RULE


def fs(*names: str) -> frozenset[str]:
    return frozenset(names)


CASES = [
    Case(
        "two_must_rules_disjoint_hosts",
        "  - {name: pin-a, kind: vm_host, mode: must, vms: [v1], hosts: [h1]}\n"
        "  - {name: pin-b, kind: vm_host, mode: must, vms: [v1], hosts: [h2]}\n",
        {"vm_host_disjoint": fs("pin-a", "pin-b")},
        {"vm_host_disjoint": fs("pin-a", "pin-b")},
    ),
    Case(
        "affinity_plus_must_on_disjoint_hosts",
        "  - {name: together, kind: affinity, vms: [v1, v2]}\n"
        "  - {name: p1, kind: vm_host, mode: must, vms: [v1], hosts: [h1]}\n"
        "  - {name: p2, kind: vm_host, mode: must, vms: [v2], hosts: [h2]}\n",
        {"affinity_hosts_disjoint": fs("together", "p1", "p2")},
        {"affinity_hosts_disjoint": fs("together", "p1", "p2")},
    ),
    Case(
        "transitive_affinity_against_anti_affinity",
        "  - {name: ab, kind: affinity, vms: [v1, v2]}\n"
        "  - {name: bc, kind: affinity, vms: [v2, v3]}\n"
        "  - {name: unrelated, kind: affinity, vms: [v4, v6]}\n"
        "  - {name: ac-apart, kind: anti_affinity, vms: [v1, v3]}\n",
        {"affinity_closure_conflict": fs("ab", "bc", "ac-apart")},
        {"affinity_closure_conflict": fs("ab", "bc", "ac-apart")},
    ),
    Case(
        "must_with_an_empty_host_list",
        "  - {name: pin, kind: vm_host, mode: must, vms: [v1], hosts: []}\n",
        {"must_no_hosts": fs("pin")},
        {"must_no_hosts": fs("pin")},
    ),
    Case(
        "must_selector_matching_no_host",
        "  - {name: pin, kind: vm_host, mode: must, vms: [v1], hosts: {labels: {rack: z}}}\n",
        {"must_no_hosts": fs("pin")},
        {},
    ),
    Case(
        "allowed_hosts_empty_after_cpu_features_and_host_states",
        "  - {name: pin, kind: vm_host, mode: must, vms: [v5], hosts: [h3, h4]}\n",
        {"no_allowed_host": fs("pin")},
        kind=CauseKind.CPU_FEATURES,
    ),
    Case(
        "allowed_hosts_empty_after_must_not_and_cpu_features",
        "  - {name: pin, kind: vm_host, mode: must, vms: [v5], hosts: [h1, h4]}\n"
        "  - {name: out, kind: vm_host, mode: must_not, vms: [v5], hosts: [h1]}\n",
        {"no_allowed_host": fs("pin", "out"), "vm_host_conflict": fs("pin", "out")},
        kind=CauseKind.CPU_FEATURES,
    ),
    Case(
        "affinity_members_allowed_hosts_do_not_intersect",
        "  - {name: together, kind: affinity, vms: [v5, v6]}\n"
        "  - {name: v6-old, kind: vm_host, mode: must, vms: [v6], hosts: [h4]}\n",
        {"affinity_hosts_disjoint": fs("together", "v6-old")},
        {},
        kind=CauseKind.CPU_FEATURES,
    ),
    Case(
        "anti_affinity_members_pinned_to_fewer_hosts",
        "  - {name: a-pin, kind: vm_host, mode: must, vms: [v1], hosts: [h1]}\n"
        "  - {name: b-pin, kind: vm_host, mode: must, vms: [v2], hosts: [h1]}\n"
        "  - {name: apart, kind: anti_affinity, vms: [v1, v2, v3]}\n",
        {"anti_affinity_too_large": fs("apart", "a-pin", "b-pin")},
        {},
    ),
    Case(
        "rules_that_hold_alone_but_not_together",
        "  - {name: rack, kind: vm_host, mode: must, vms: [v1, v2, v3], hosts: [h1, h2]}\n"
        "  - {name: x, kind: anti_affinity, vms: [v1, v2]}\n"
        "  - {name: y, kind: anti_affinity, vms: [v2, v3]}\n"
        "  - {name: z, kind: anti_affinity, vms: [v1, v3]}\n",
        {"rules_unsatisfiable": fs("rack", "x", "y", "z")},
        {},
    ),
    Case(
        "affinity_group_larger_than_any_allowed_host",
        "  - {name: big, kind: affinity, vms: [v7, v8]}\n",
        {"affinity_group_too_big": fs("big")},
        {},
        kind=CauseKind.CAPACITY,
    ),
    Case(
        "must_hosts_without_room",
        "  - {name: pin, kind: vm_host, mode: must, vms: [v7, v8], hosts: [h1]}\n",
        {"must_hosts_full": fs("pin")},
        {},
        kind=CauseKind.CAPACITY,
    ),
]


def errors(pol_path: Path, snap: Snapshot | None) -> dict[str, frozenset[str]]:
    pol = load_policy([pol_path])
    return {f.code: frozenset(f.rules) for f in lint(pol, snap) if f.severity is Severity.ERROR}


@pytest.fixture
def files(tmp_path: Path, request: pytest.FixtureRequest) -> tuple[Path, Path]:
    case: Case = request.param
    pol = tmp_path / "p.yaml"
    pol.write_text("limits: {concurrent_per_host: 8}\nrules:\n" + case.rules)
    snap = tmp_path / "snap.json"
    dump_snapshot(cluster(), snap)
    return pol, snap


@pytest.mark.parametrize(
    ("case", "files"), [(c, c) for c in CASES], ids=[c.id for c in CASES], indirect=["files"]
)
def test_lint_names_every_rule_of_the_class(case: Case, files: tuple[Path, Path]) -> None:
    pol, _ = files
    assert errors(pol, cluster()) == case.expect
    if case.alone is not None:
        assert errors(pol, None) == case.alone


@pytest.mark.parametrize(
    ("case", "files"), [(c, c) for c in CASES], ids=[c.id for c in CASES], indirect=["files"]
)
def test_policy_check_fails_naming_the_rules_and_their_lines(
    case: Case, files: tuple[Path, Path]
) -> None:
    pol, snap = files
    res = CliRunner().invoke(cli, ["policy", "check", str(pol), "--snapshot", str(snap)])
    assert res.exit_code == 2, res.output
    for code, rules in case.expect.items():
        assert code in res.stderr
        for r in rules:
            assert f"'{r}'" in res.stderr
    assert "p.yaml:3" in res.stderr  # the first rule's origin
    assert "Traceback" not in res.output
    if case.alone:
        res = CliRunner().invoke(cli, ["policy", "check", str(pol)])
        assert res.exit_code == 2
        assert all(code in res.stderr for code in case.alone)


@pytest.mark.parametrize(
    ("case", "files"), [(c, c) for c in CASES], ids=[c.id for c in CASES], indirect=["files"]
)
def test_plan_names_the_same_rules_as_lint(case: Case, files: tuple[Path, Path]) -> None:
    pol_path, snap_path = files
    snap = cluster()
    pol = load_policy([pol_path])
    plan = make_plan(snap, pol, time_limit_s=2.0)
    assert plan.status is PlanStatus.INFEASIBLE
    found = {(f.code, frozenset(f.rules)) for f in lint(pol, snap)}
    assert plan.causes
    for c in plan.causes:
        assert (c.code, frozenset(c.rules)) in found
    assert {c.kind for c in plan.causes} == {case.kind}
    analysis = {k: v for k, v in case.expect.items() if k != "vm_host_conflict"}
    assert set(plan.conflicts) == set().union(*analysis.values())
    res = CliRunner().invoke(cli, ["plan", "--snapshot", str(snap_path), "--policy", str(pol_path)])
    assert res.exit_code == 3, res.output
    for r in plan.conflicts:
        assert r in res.output
    assert next(iter(analysis)) in res.output


def test_large_anti_affinity_group_beyond_the_exact_search_is_still_refused() -> None:
    from balancer.optimizer.feasibility import SEARCH_GROUPS
    from policies.model import Policy, Rule, RuleKind, Selector

    n = SEARCH_GROUPS + 10
    hosts = [make_host(f"h{i}") for i in range(3)]
    vms = [make_vm(f"w{i}", f"h{i % 3}", memory_mib=256) for i in range(n)]
    spread = Rule(
        name="spread",
        kind=RuleKind.ANTI_AFFINITY,
        vms=Selector(labels={"app": "w"}),
        origin="p.yaml:4",
    )
    vms = [replace(v, labels={"app": "w"}) for v in vms]
    found = lint(Policy(rules=(spread,)), make_snapshot(hosts, vms))
    assert [(f.code, f.rules) for f in found] == [("anti_affinity_too_large", ("spread",))]
    assert f"keeps {n} VMs apart but they may run on only 3 host(s)" in found[0].message
    assert "p.yaml:4" in found[0].message
