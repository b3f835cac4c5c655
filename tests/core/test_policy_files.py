from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from balancer.errors import PolicyError
from balancer.model import HostState
from policies.lint import Severity, lint
from policies.loader import load_policy
from policies.model import Automation, RuleKind, RuleMode
from tests.factories import make_host, make_snapshot, make_vm

REPO = Path(__file__).resolve().parents[2]

ISSUE_EXAMPLE = """\
automation: full
threshold: 3
balance: {cpu: 1.0, memory: 1.0}
headroom: {cpu: 0.10, memory: 0.05}
limits: {moves_per_cycle: 32, concurrent_per_host: 2, concurrent_total: 8}
cooldown_minutes: 60
rules:
  - {name: db-apart, kind: anti_affinity, vms: [db-1, db-2, db-3]}
  - {name: app-together, kind: affinity, vms: [app-1, app-2]}
  - {name: oracle-hosts, kind: vm_host, mode: must,
     vms: {labels: {app: oracle}}, hosts: [h01, h02]}
exclude: [legacy-1, {labels: {pinned: "true"}}]
"""


def write(tmp_path: Path, text: str, name: str = "p.yaml") -> Path:
    p = tmp_path / name
    p.write_text(textwrap.dedent(text))
    return p


def test_issue_example_loads(tmp_path: Path) -> None:
    pol = load_policy([write(tmp_path, ISSUE_EXAMPLE)])
    assert pol.automation is Automation.FULL
    assert pol.threshold == 3
    assert pol.limits.concurrent_per_host == 2
    assert [r.name for r in pol.rules] == ["db-apart", "app-together", "oracle-hosts"]
    oracle = pol.rule("oracle-hosts")
    assert oracle.kind is RuleKind.VM_HOST and oracle.mode is RuleMode.MUST
    assert oracle.vms.matches("x", {"app": "oracle"})
    assert not oracle.vms.matches("x", {"app": "web"})
    assert oracle.origin.endswith("p.yaml:10")
    assert pol.excluded("legacy-1", {}) and pol.excluded("v", {"pinned": "true"})
    assert not pol.excluded("v", {})
    assert len(pol.digest) == 64


def test_digest_changes_with_content(tmp_path: Path) -> None:
    a = load_policy([write(tmp_path, ISSUE_EXAMPLE)]).digest
    b = load_policy([write(tmp_path, ISSUE_EXAMPLE.replace("threshold: 3", "threshold: 4"))])
    assert a != b.digest


def test_directory_merges_rules_and_refuses_a_setting_given_twice(tmp_path: Path) -> None:
    write(tmp_path, "automation: manual\n", "a.yaml")
    write(tmp_path, "rules:\n  - {name: r1, kind: anti_affinity, vms: [a, b]}\n", "b.yaml")
    pol = load_policy([tmp_path])
    assert pol.automation is Automation.MANUAL and pol.rules[0].name == "r1"
    write(tmp_path, "threshold: 2\nautomation: full\n", "c.yaml")
    with pytest.raises(PolicyError) as info:
        load_policy([tmp_path])
    assert "c.yaml:2: automation: also set in" in str(info.value)


def test_duplicate_rule_name_across_files(tmp_path: Path) -> None:
    write(tmp_path, "rules:\n  - {name: r1, kind: anti_affinity, vms: [a, b]}\n", "a.yaml")
    write(
        tmp_path,
        "rules:\n  - {name: x, kind: affinity, vms: [a, b]}\n"
        "  - {name: r1, kind: affinity, vms: [c, d]}\n",
        "b.yaml",
    )
    with pytest.raises(PolicyError, match=r"b.yaml:3: rules\[1\].name: rule name 'r1'"):
        load_policy([tmp_path])


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("threshold: 9\n", "p.yaml:1: threshold:"),
        ("automation: sometimes\n", "p.yaml:1: automation:"),
        ("cooldown: 5\n", "p.yaml:1: cooldown: unknown setting"),
        ("limits:\n  concurrent_per_host: 0\n", "p.yaml:2: limits.concurrent_per_host:"),
        ("headroom: {cpu: 2.0, memory: 0}\n", "p.yaml:1: headroom.cpu:"),
        (
            "rules:\n  - name: r\n    kind: vm_host\n    vms: [a]\n    hosts: [h1]\n"
            "    mode: sometimes\n",
            "p.yaml:6: rules[0].mode:",
        ),
        (
            "rules:\n  - {name: r, kind: vm_host, vms: [a]}\n",
            "p.yaml:2: rules[0]: a vm_host rule needs 'hosts'",
        ),
        (
            # must and should are allowed on VM-VM rules since issue 16; must_not is not
            "rules:\n  - {name: r, kind: anti_affinity, vms: [a, b], mode: must_not}\n",
            "p.yaml:2: rules[0].mode: an anti_affinity rule takes mode must",
        ),
        ("rules:\n  - {name: r, kind: affinity, vms: [a]}\n", "needs at least two VMs"),
        ("rules:\n  - {name: 'bad name', kind: affinity, vms: [a, b]}\n", "rules[0].name:"),
        ("exclude: [{labels: {}}]\n", "exclude[0]"),
        ("balance: {cpu: 0, memory: 0}\n", "balance:"),
        ("rules: [\n", "p.yaml:2: not valid YAML"),
        ("- a\n- b\n", "p.yaml:1: the file must be a mapping"),
    ],
)
def test_validation_errors_name_file_line_and_field(
    tmp_path: Path, text: str, expected: str
) -> None:
    with pytest.raises(PolicyError) as info:
        load_policy([write(tmp_path, text)])
    assert expected in str(info.value), str(info.value)


def test_missing_path(tmp_path: Path) -> None:
    with pytest.raises(PolicyError, match="no such file or directory"):
        load_policy([tmp_path / "nope.yaml"])


def test_shipped_policies_are_clean() -> None:
    files = sorted((REPO / "config" / "policies").glob("*.yaml"))
    assert files
    for f in files:
        pol = load_policy([f])
        assert [x for x in lint(pol) if x.severity is Severity.ERROR] == []


def _cluster():  # type: ignore[no-untyped-def]
    hosts = [make_host("h1"), make_host("h2"), make_host("h3", state=HostState.MAINTENANCE)]
    vms = [make_vm(f"v{i}", "h1") for i in range(1, 5)]
    return make_snapshot(hosts, vms)


def lint_codes(
    tmp_path: Path, rules: str, with_snapshot: bool = True
) -> dict[str, tuple[str, ...]]:
    pol = load_policy([write(tmp_path, "rules:\n" + rules)])
    return {
        f.code: f.rules
        for f in lint(pol, _cluster() if with_snapshot else None)
        if f.severity is Severity.ERROR
    }


def test_lint_affinity_vs_anti_affinity_names_both_rules(tmp_path: Path) -> None:
    codes = lint_codes(
        tmp_path,
        "  - {name: together, kind: affinity, vms: [v1, v2]}\n"
        "  - {name: apart, kind: anti_affinity, vms: [v2, v1, v3]}\n",
        with_snapshot=False,
    )
    assert codes == {"affinity_conflict": ("together", "apart")}


def test_lint_anti_affinity_larger_than_eligible_hosts(tmp_path: Path) -> None:
    # h3 is in maintenance: only h1 and h2 can take VMs
    codes = lint_codes(tmp_path, "  - {name: spread, kind: anti_affinity, vms: [v1, v2, v3]}\n")
    assert codes == {"anti_affinity_too_large": ("spread",)}


def test_lint_unknown_vm_and_host(tmp_path: Path) -> None:
    codes = lint_codes(
        tmp_path,
        "  - {name: ghost, kind: anti_affinity, vms: [v1, nope]}\n"
        "  - {name: pin, kind: vm_host, mode: should, vms: [v1],"
        " hosts: [h9]}\n",
    )
    assert codes == {"unknown_vm": ("ghost",), "unknown_host": ("pin",)}


def test_lint_must_rule_on_maintenance_hosts(tmp_path: Path) -> None:
    codes = lint_codes(
        tmp_path, "  - {name: pin, kind: vm_host, mode: must, vms: [v1], hosts: [h3]}\n"
    )
    assert codes == {"must_hosts_unavailable": ("pin",)}


def test_lint_must_and_must_not_same_host(tmp_path: Path) -> None:
    codes = lint_codes(
        tmp_path,
        "  - {name: pin-in, kind: vm_host, mode: must, vms: [v1],"
        " hosts: [h1, h2]}\n"
        "  - {name: pin-out, kind: vm_host, mode: must_not, vms: [v1],"
        " hosts: [h2]}\n",
    )
    assert codes == {"vm_host_conflict": ("pin-in", "pin-out")}


def test_control_character_is_a_policy_error(tmp_path: Path) -> None:
    p = tmp_path / "p.yaml"
    p.write_bytes(b"threshold: 3\x07\n")
    with pytest.raises(PolicyError, match=r"p.yaml: not valid YAML"):
        load_policy([p])
