"""``balancer simulate`` on a tiny generated trace directory."""

from __future__ import annotations

import json
from pathlib import Path

from click.testing import CliRunner

from balancer.cli import cli
from balancer.model import VM, Host, Snapshot
from balancer.simulation.report import OUTPUT_FILES, SUMMARY_KEYS
from balancer.snapshot_io import dump_snapshot
from tests.simulation.helpers import DEFAULT_POLICY, write_trace_dir

HOSTS = "3x(2c,16G)"


def test_simulate_writes_summary_csvs_and_plots(tmp_path: Path) -> None:
    traces = write_trace_dir(tmp_path / "traces")
    out = tmp_path / "out"
    res = CliRunner().invoke(
        cli,
        [
            "simulate",
            "--traces",
            str(traces),
            "--hosts",
            HOSTS,
            "--policy",
            str(DEFAULT_POLICY),
            "--days",
            "2",
            "--seed",
            "1",
            "--out",
            str(out),
            "--json",
        ],
    )
    assert res.exit_code == 0, res.output
    doc = json.loads(res.output)
    summary = json.loads((out / "summary.json").read_text())
    assert set(SUMMARY_KEYS) <= set(summary)
    assert summary == doc
    assert [d["day"] for d in summary["days_detail"]] == ["20110301", "20110302"]
    assert summary["vms"] == 12 and summary["ticks"] == 24
    for name in OUTPUT_FILES:
        assert (out / name).stat().st_size > 0, name
    assert (out / "host_loads.png").read_bytes()[:4] == b"\x89PNG"
    header = (out / "timeseries.csv").read_text().splitlines()[0]
    assert header.startswith("day,index,time_s") and "imbalance" in header
    assert len((out / "host_loads.csv").read_text().splitlines()) == 1 + 24


def test_compare_prints_both_policies_and_the_difference(tmp_path: Path) -> None:
    traces = write_trace_dir(tmp_path / "traces", days=1)
    out = tmp_path / "cmp"
    res = CliRunner().invoke(
        cli,
        [
            "simulate",
            "--traces",
            str(traces),
            "--hosts",
            HOSTS,
            "--compare",
            "none",
            str(DEFAULT_POLICY),
            "--out",
            str(out),
            "--json",
        ],
    )
    assert res.exit_code == 0, res.output
    doc = json.loads(res.output)
    assert doc["a"] == "none" and doc["b"] == str(DEFAULT_POLICY)
    f = doc["figures"]
    assert set(SUMMARY_KEYS) <= set(f)
    assert f["migrations"]["a"] == 0
    for row in f.values():
        assert row["diff"] == row["b"] - row["a"]
    assert (out / "a-none" / "summary.json").exists()
    assert (out / "b-policies" / "summary.json").exists()
    assert json.loads((out / "compare.json").read_text()) == doc
    table = CliRunner().invoke(
        cli,
        [
            "simulate",
            "--traces",
            str(traces),
            "--hosts",
            HOSTS,
            "--compare",
            "none",
            "none",
            "--steps",
            "2",
        ],
    )
    assert table.exit_code == 0, table.output
    assert "B - A" in table.output and "overload_host_share" in table.output


def test_errors_are_one_line_and_non_zero(tmp_path: Path) -> None:
    traces = write_trace_dir(tmp_path / "traces", days=1)
    for args in (
        ["--hosts", "3x(2c", "--policy", "none"],
        ["--hosts", HOSTS, "--policy", str(tmp_path / "missing.yaml")],
        ["--hosts", HOSTS],
        ["--hosts", HOSTS, "--policy", "none", "--interval", "7m"],
        ["--hosts", "1x(2c,1G)", "--policy", "none"],
    ):
        res = CliRunner().invoke(cli, ["simulate", "--traces", str(traces), *args])
        assert res.exit_code != 0, args
        lines = res.output.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: "), (args, res.output)


def test_hosts_from_a_snapshot_file(tmp_path: Path) -> None:
    traces = write_trace_dir(tmp_path / "traces", days=1)
    hosts = tuple(Host(name=f"node{i}", cpu_cores=4, memory_mib=32768) for i in range(2))
    vm = VM(name="ignored", host="node0", vcpus=1, memory_mib=1024)
    dump_snapshot(Snapshot(hosts=hosts, vms=(vm,)), tmp_path / "snap.json")
    res = CliRunner().invoke(
        cli,
        [
            "simulate",
            "--traces",
            str(traces),
            "--hosts",
            str(tmp_path / "snap.json"),
            "--policy",
            "none",
            "--steps",
            "3",
            "--json",
        ],
    )
    assert res.exit_code == 0, res.output
    doc = json.loads(res.output)
    assert doc["hosts"] == 2 and doc["vms"] == 12 and doc["ticks"] == 3
