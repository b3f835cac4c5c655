"""Policy files: ``mode: should`` on affinity / anti_affinity (soft), refusals of the modes
those kinds do not take (file, line, field), the ``soft_rules`` key (values, default, one
file of a directory only), and lint: a soft VM-VM rule never makes a policy infeasible, it
may warn."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from balancer.cli import cli
from balancer.errors import PolicyError
from balancer.model import Snapshot
from balancer.optimizer.feasibility import rule_conflicts
from balancer.snapshot_io import dump_snapshot
from policies.lint import Severity, lint
from policies.loader import load_policy
from policies.model import RuleKind, RuleMode, SoftRules
from tests.factories import make_host, make_snapshot, make_vm


def write(tmp_path: Path, text: str, name: str = "p.yaml") -> Path:
    p = tmp_path / name
    p.write_text(text)
    return p


def two_hosts() -> Snapshot:
    hosts = [make_host("h1"), make_host("h2")]
    return make_snapshot(hosts, [make_vm(f"w{i}", "h1") for i in range(3)])


def test_group_rules_take_must_or_should(tmp_path: Path) -> None:
    pol = load_policy(
        [
            write(
                tmp_path,
                "rules:\n"
                "  - {name: apart, kind: anti_affinity, vms: [a, b], mode: should}\n"
                "  - {name: near, kind: affinity, vms: [a, c], mode: should}\n"
                "  - {name: hard-apart, kind: anti_affinity, vms: [c, d], mode: must}\n"
                "  - {name: plain, kind: affinity, vms: [e, f]}\n",
            )
        ]
    )
    modes = {r.name: (r.kind, r.mode, r.hard) for r in pol.rules}
    assert modes == {
        "apart": (RuleKind.ANTI_AFFINITY, RuleMode.SHOULD, False),
        "near": (RuleKind.AFFINITY, RuleMode.SHOULD, False),
        "hard-apart": (RuleKind.ANTI_AFFINITY, RuleMode.MUST, True),
        "plain": (RuleKind.AFFINITY, RuleMode.MUST, True),
    }
    assert pol.soft_rules is SoftRules.REPAIR


@pytest.mark.parametrize("kind", ["affinity", "anti_affinity"])
@pytest.mark.parametrize("mode", ["must_not", "should_not"])
def test_group_rules_refuse_negative_modes_with_file_line_and_field(
    tmp_path: Path, kind: str, mode: str
) -> None:
    path = write(
        tmp_path,
        "threshold: 3\n"
        "rules:\n"
        "  - {name: ok, kind: vm_host, mode: should_not, vms: [a], hosts: [h1]}\n"
        "  - name: bad\n"
        f"    kind: {kind}\n"
        "    vms: [a, b]\n"
        f"    mode: {mode}\n",
    )
    with pytest.raises(PolicyError) as info:
        load_policy([path])
    text = str(info.value)
    assert text.startswith(f"{path}:7: rules[1].mode: "), text
    assert f"an {kind} rule takes mode must (hard, the default) or should (soft), not {mode}" in (
        text
    )


def test_soft_rules_values_and_default(tmp_path: Path) -> None:
    assert load_policy([write(tmp_path, "threshold: 3\n")]).soft_rules is SoftRules.REPAIR
    for value in ("repair", "when_balancing"):
        pol = load_policy([write(tmp_path, f"soft_rules: {value}\n")])
        assert pol.soft_rules is SoftRules(value)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("threshold: 3\nsoft_rules: always\n", "p.yaml:2: soft_rules: "),
        ("soft_rules: true\n", "p.yaml:1: soft_rules: "),
        ("soft_rules: [repair]\n", "p.yaml:1: soft_rules: "),
    ],
)
def test_soft_rules_bad_values_name_file_line_and_field(
    tmp_path: Path, text: str, expected: str
) -> None:
    with pytest.raises(PolicyError) as info:
        load_policy([write(tmp_path, text)])
    assert expected in str(info.value), str(info.value)


def test_soft_rules_merges_like_the_other_settings(tmp_path: Path) -> None:
    write(tmp_path, "threshold: 4\n", "a.yaml")
    write(tmp_path, "rules: []\nsoft_rules: when_balancing\n", "b.yaml")
    pol = load_policy([tmp_path])
    assert pol.threshold == 4 and pol.soft_rules is SoftRules.WHEN_BALANCING
    write(tmp_path, "soft_rules: repair\n", "c.yaml")
    with pytest.raises(PolicyError) as info:
        load_policy([tmp_path])
    text = str(info.value)
    assert "c.yaml:1: soft_rules: also set in" in text and "b.yaml" in text, text


def test_a_soft_group_never_makes_a_policy_infeasible(tmp_path: Path) -> None:
    """Three VMs kept apart on two hosts: an error when must, a warning when should."""
    snap = two_hosts()
    soft = load_policy(
        [
            write(
                tmp_path,
                "rules:\n  - {name: apart, kind: anti_affinity, vms: [w0, w1, w2], mode: should}\n",
            )
        ]
    )
    hard = load_policy(
        [
            write(
                tmp_path,
                "rules:\n  - {name: apart, kind: anti_affinity, vms: [w0, w1, w2]}\n",
                "hard.yaml",
            )
        ]
    )
    assert rule_conflicts(soft, snap) == ()
    assert [c.code for c in rule_conflicts(hard, snap)] == ["anti_affinity_too_large"]
    findings = lint(soft, snap)
    assert [(f.severity, f.code, f.rules) for f in findings] == [
        (Severity.WARNING, "soft_rule_never_met", ("apart",))
    ]
    assert "p.yaml:2" in findings[0].message and "only 2 host(s)" in findings[0].message
    assert [f.severity for f in lint(hard, snap)] == [Severity.ERROR]


def test_soft_affinity_against_a_hard_anti_affinity_is_a_warning(tmp_path: Path) -> None:
    text = (
        "rules:\n"
        "  - {name: near, kind: affinity, vms: [a, b], mode: should}\n"
        "  - {name: apart, kind: anti_affinity, vms: [a, b]}\n"
    )
    pol = load_policy([write(tmp_path, text)])
    findings = lint(pol)
    assert [(f.severity, f.code, f.rules) for f in findings] == [
        (Severity.WARNING, "soft_rule_never_met", ("near", "apart"))
    ]
    both_hard = load_policy([write(tmp_path, text.replace(", mode: should", ""), "h.yaml")])
    assert [(f.severity, f.code) for f in lint(both_hard)] == [
        (Severity.ERROR, "affinity_conflict")
    ]


def test_a_soft_affinity_group_is_never_frozen(tmp_path: Path) -> None:
    text = "rules:\n  - {name: big, kind: affinity, vms: [a, b, c], mode: should}\n"
    assert lint(load_policy([write(tmp_path, text)])) == []
    hard = load_policy([write(tmp_path, text.replace(", mode: should", ""), "h.yaml")])
    assert [f.code for f in lint(hard)] == ["affinity_group_frozen"]


def test_policy_check_passes_with_soft_warnings_only(tmp_path: Path) -> None:
    snap_path = tmp_path / "snap.json"
    dump_snapshot(two_hosts(), snap_path)
    path = write(
        tmp_path,
        "rules:\n  - {name: apart, kind: anti_affinity, vms: [w0, w1, w2], mode: should}\n",
    )
    ok = CliRunner().invoke(cli, ["policy", "check", str(path), "--snapshot", str(snap_path)])
    assert ok.exit_code == 0, ok.output
    assert "warning: soft_rule_never_met" in ok.output
    write(tmp_path, "rules:\n  - {name: apart, kind: anti_affinity, vms: [w0, w1, w2]}\n")
    bad = CliRunner().invoke(cli, ["policy", "check", str(path), "--snapshot", str(snap_path)])
    assert bad.exit_code == 2 and "anti_affinity_too_large" in bad.output
