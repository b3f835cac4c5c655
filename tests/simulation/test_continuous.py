"""Continuous multi-day traces (a directory with ``vms.csv``): one cluster across the days."""

from __future__ import annotations

import gzip
import itertools
import json
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from hypothesis import given, settings
from hypothesis import strategies as st

from balancer.cli import cli
from balancer.model import Snapshot
from balancer.service.store import MoveRecord
from balancer.simulation.continuous import ContinuousTrace, load_continuous
from balancer.simulation.decide import Decider, Decision, NeverMigrate
from balancer.simulation.engine import DayResult, SimConfig, combine, simulate_trace
from balancer.simulation.figures import DETERMINISTIC
from balancer.simulation.run import run, trace_files
from balancer.simulation.spec import build_hosts, parse_host_spec, parse_vm_types
from policies.model import Policy
from tests.simulation.helpers import (
    DEFAULT_POLICY,
    no_wall_clock_cutoff,
    service,
    write_continuous_dir,
)

HOSTS = "4x(2c,16G)"
STEPS = 12  # one hour per day file
TICK_S = 300.0


@dataclass
class Recorder:
    """A real decider with a log of what the engine showed it and what it decided."""

    inner: Decider
    events: list[tuple[str, datetime]] = field(default_factory=list)
    observed: list[Snapshot] = field(default_factory=list)
    decisions: list[tuple[datetime, Decision]] = field(default_factory=list)

    @property
    def name(self) -> str:
        return self.inner.name

    @property
    def policy(self) -> Policy | None:
        return self.inner.policy

    def observe(self, snapshot: Snapshot, now: datetime) -> None:
        self.events.append(("observe", now))
        self.observed.append(snapshot)
        self.inner.observe(snapshot, now)

    def decide(self, snapshot: Snapshot, now: datetime, history: Sequence[MoveRecord]) -> Decision:
        self.events.append(("decide", now))
        decision = self.inner.decide(snapshot, now, history)
        self.decisions.append((now, decision))
        return decision


def _load(path: Path) -> ContinuousTrace:
    return load_continuous(path, trace_files(path))


def _simulate(trace: ContinuousTrace, decider: Decider) -> tuple[DayResult, ...]:
    hosts, types = build_hosts(parse_host_spec(HOSTS))
    return simulate_trace(
        trace.traces,
        hosts,
        types,
        decider,
        SimConfig(seed=0, solve_time_limit_s=0.1),
        days=trace.days,
        vms=trace.vms,
    )


def _placement(snapshot: Snapshot) -> dict[str, str]:
    return {v.name: v.host for v in snapshot.vms}


def _deterministic(figures: object) -> dict[str, object]:
    d = figures.as_dict()  # type: ignore[attr-defined]
    return {k: d[k] for k in DETERMINISTIC}


# -- reading -------------------------------------------------------------------------------------


def test_vms_keep_their_trace_names_and_the_sizes_of_vms_csv(tmp_path: Path) -> None:
    path = write_continuous_dir(tmp_path / "bb", vcpus=2, memory_mib=3072)
    trace = _load(path)
    names = [f"bb{100 + 7 * i:04d}" for i in range(12)]
    assert [v.name for v in trace.vms] == names
    assert {(v.vcpus, v.cpu_cores, v.memory_mib) for v in trace.vms} == {(2, 2.0, 3072)}
    assert [d.label for d in trace.days] == ["day01", "day02", "day03"]
    assert trace.traces.steps == 3 * STEPS
    # later days list the VMs in reverse order: the rows follow the names, not the order
    assert trace.traces.percent[0, STEPS + 0] == pytest.approx(95.0)
    assert trace.traces.percent[11, STEPS + 0] == pytest.approx(10.0)
    recorder = Recorder(NeverMigrate())
    _simulate(trace, recorder)
    assert len(recorder.observed) == 3 * STEPS
    snap = recorder.observed[STEPS + 1]
    by_name = {v.name: v for v in snap.vms}
    assert set(by_name) == set(names)
    assert by_name["bb0100"].vcpus == 2 and by_name["bb0100"].memory_mib == 3072
    # demand in cores = vcpus x percent / 100
    assert by_name["bb0100"].cpu_used_cores == pytest.approx(2 * 0.95)
    assert by_name["bb0107"].cpu_used_cores == pytest.approx(2 * 0.10)


@settings(max_examples=15, deadline=None)
@given(st.lists(st.permutations(range(6)), min_size=2, max_size=2))
def test_the_row_order_of_a_day_file_does_not_matter(orders: list[list[int]]) -> None:
    rng = np.random.default_rng(3)
    values = rng.integers(0, 101, (3, 6, 4))
    names = [f"vm-{i}" for i in range(6)]
    loaded = []
    for shuffle in ([list(range(6))] * 3, [list(range(6)), *orders]):
        with tempfile.TemporaryDirectory() as tmp:
            d = Path(tmp)
            (d / "vms.csv").write_text(
                "vm,vcpus,cpu_capacity_mhz,memory_mib\n"
                + "".join(f"{n},1,2000,1024\n" for n in names)
            )
            for day, order in enumerate(shuffle):
                lines = ["vm,t0,t1,t2,t3"]
                lines += [f"{names[i]}," + ",".join(map(str, values[day, i])) for i in order]
                (d / f"d{day}.csv").write_text("\n".join(lines) + "\n")
            loaded.append(_load(d))
    plain, shuffled = loaded
    assert shuffled.traces.names == plain.traces.names == tuple(names)
    assert (shuffled.traces.percent == plain.traces.percent).all()
    assert (plain.traces.percent[:, 4:8] == values[1]).all()


# -- one cluster across the days ---------------------------------------------------------------


def test_a_vm_is_where_it_was_at_midnight(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    no_wall_clock_cutoff(monkeypatch)
    trace = _load(write_continuous_dir(tmp_path / "bb"))
    recorder = Recorder(service(time_limit_s=0.1))
    days = _simulate(trace, recorder)
    assert days[0].figures.migrations > 0  # the hot spot is balanced on day 1
    assert days[1].initial_moves == days[2].initial_moves == 0  # placed once, at the start
    for d in (0, 1):
        # the placement at the start of day d + 1 is the start of day d with the day's moves
        where = _placement(recorder.observed[d * STEPS])
        for m in sorted(days[d].migrations, key=lambda m: m.time_s):
            if m.succeeded:
                assert where[m.vm] == m.source
                where[m.vm] = m.target
        assert _placement(recorder.observed[(d + 1) * STEPS]) == where
    # the window carries over too: the hot VMs are balanced, no overload after day 1
    assert days[1].figures.overload_host_share == 0.0
    assert days[1].figures.migrations < days[0].figures.migrations


def test_cooldowns_carry_over_midnight(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    no_wall_clock_cutoff(monkeypatch)
    trace = _load(write_continuous_dir(tmp_path / "bb", days=2))
    recorder = Recorder(service(time_limit_s=0.1))
    day1, day2 = _simulate(trace, recorder)
    cooldown_s = 60 * 60.0  # config/policies: cooldown_minutes 60
    midnight_s = STEPS * TICK_S
    late = {
        m.vm
        for m in day1.migrations
        if m.succeeded
        and m.reason == "balance"
        and m.time_s + m.duration_s > midnight_s - cooldown_s
    }
    assert late, [(m.vm, m.reason, m.time_s) for m in day1.migrations]
    midnight = [now for kind, now in recorder.events if kind == "observe"][STEPS]
    (first_of_day2,) = [d for now, d in recorder.decisions if now == midnight]
    assert late <= first_of_day2.held
    # and the VMs held are not moved for balance again within the cooldown, across midnight
    second = {m.vm: m.time_s + midnight_s for m in day2.migrations if m.reason == "balance"}
    for m in day1.migrations:
        if m.vm in second:
            assert second[m.vm] - m.time_s >= cooldown_s


def test_observe_sees_every_tick_before_its_decision(tmp_path: Path) -> None:
    trace = _load(write_continuous_dir(tmp_path / "bb", days=2, steps=4))
    recorder = Recorder(service(time_limit_s=0.1))
    _simulate(trace, recorder)
    observes = [now for kind, now in recorder.events if kind == "observe"]
    assert len(observes) == 8 and len(set(observes)) == 8
    assert all(b > a for a, b in itertools.pairwise(observes))
    for i, (kind, now) in enumerate(recorder.events):
        if kind == "decide":
            assert recorder.events[i - 1] == ("observe", now)


def test_planetlab_days_stay_independent(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The same day twice: independent days (no vms.csv) repeat day 1 on a fresh cluster; a
    continuous trace starts day 2 where day 1 ended."""
    no_wall_clock_cutoff(monkeypatch)
    cont = write_continuous_dir(tmp_path / "cont", days=2, hot_from=3)
    # the same hot spot on both days, as day files without vms.csv
    (cont / "day02.csv.gz").write_bytes((cont / "day01.csv.gz").read_bytes())
    plain = tmp_path / "plain"
    plain.mkdir()
    for name in ("day01.csv.gz", "day02.csv.gz"):
        (plain / name).write_bytes((cont / name).read_bytes())
    config = SimConfig(seed=0, solve_time_limit_s=0.1, vm_types=parse_vm_types("(1c,2048)"))
    policy = str(DEFAULT_POLICY)
    independent = run(plain, HOSTS, policy, config, days=2)
    continuous = run(cont, HOSTS, policy, config)
    assert not independent.continuous and continuous.continuous
    i1, i2 = independent.days
    assert i1.figures.migrations > 0 and i2.initial_moves == i1.initial_moves
    assert _deterministic(i1.figures) == _deterministic(i2.figures)
    c1, c2 = continuous.days
    assert _deterministic(c1.figures) == _deterministic(i1.figures)
    assert c2.initial_moves == 0 and c2.figures.migrations < c1.figures.migrations


# -- figures over a report range ---------------------------------------------------------------


def test_report_range_figures_are_those_days_combined(tmp_path: Path) -> None:
    path = write_continuous_dir(tmp_path / "bb")
    config = SimConfig(seed=0, solve_time_limit_s=0.1)
    result = run(path, HOSTS, str(DEFAULT_POLICY), config, report_days=(2, 3))
    assert result.report_days == (2, 3) and [d.label for d in result.report] == [
        "day02",
        "day03",
    ]
    assert result.figures == combine(result.days[1:], hosts=4, continuous=True)
    assert result.all_figures == combine(result.days, hosts=4, continuous=True)
    assert result.figures.ticks == 2 * STEPS and result.all_figures.ticks == 3 * STEPS
    # day 1 has the hot spot's overload; the report range starts after it is balanced
    assert result.all_figures.overload_host_share > result.figures.overload_host_share


def test_cli_json_has_per_day_figures_and_the_report_totals(tmp_path: Path) -> None:
    path = write_continuous_dir(tmp_path / "bb")
    res = CliRunner().invoke(
        cli,
        [
            "simulate",
            "--traces",
            str(path),
            "--hosts",
            HOSTS,
            "--policy",
            "none",
            "--report-days",
            "3",
            "--out",
            str(tmp_path / "out"),
            "--json",
        ],
    )
    assert res.exit_code == 0, res.output
    doc = json.loads(res.output)
    assert doc["continuous"] is True
    assert doc["report_days"] == {"first": 3, "last": 3, "labels": ["day03"]}
    assert [(d["day"], d["in_report"]) for d in doc["days_detail"]] == [
        ("day01", False),
        ("day02", False),
        ("day03", True),
    ]
    assert doc["ticks"] == STEPS and doc["all_days"]["ticks"] == 3 * STEPS
    day3 = doc["days_detail"][2]
    assert all(doc[k] == day3[k] for k in ("overload_host_share", "imbalance_mean", "ticks"))
    assert doc["vms"] == 12
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary == doc
    rows = (tmp_path / "out" / "host_loads.csv").read_text().splitlines()
    assert len(rows) == 1 + 3 * STEPS and rows[-1].startswith("day03,11,")


def test_days_limits_the_simulated_days(tmp_path: Path) -> None:
    path = write_continuous_dir(tmp_path / "bb")
    result = run(path, HOSTS, "none", SimConfig(), days=2)
    assert [d.label for d in result.days] == ["day01", "day02"]
    short = run(path, HOSTS, "none", SimConfig(steps=5))
    assert [len(d.ticks) for d in short.days] == [5, 5, 5]


# -- bad input -----------------------------------------------------------------------------------


def _rewrite_day(path: Path, edit: object) -> None:
    with gzip.open(path, "rt") as fh:
        lines = fh.read().splitlines()
    lines = edit(lines)  # type: ignore[operator]
    with gzip.open(path, "wt") as fh:
        fh.write("\n".join(lines) + "\n")


def _vms_csv(path: Path, edit: object) -> None:
    lines = (path / "vms.csv").read_text().splitlines()
    (path / "vms.csv").write_text("\n".join(edit(lines)) + "\n")  # type: ignore[operator]


def _extra_vm(lines: list[str]) -> list[str]:
    return [*lines, "bb9999," + lines[1].split(",", 1)[1]]


BAD = [
    # a day file with a VM the first day does not have: the file, its line, the VM
    ("day02.csv.gz", lambda d: _rewrite_day(d / "day02.csv.gz", _extra_vm), ("line 14", "bb9999")),
    # a day file without one of the first day's VMs
    (
        "day03.csv.gz",
        lambda d: _rewrite_day(d / "day03.csv.gz", lambda ls: [ls[0], *ls[2:]]),
        ("bb0177",),
    ),
    # a VM twice in one day file
    (
        "day02.csv.gz",
        lambda d: _rewrite_day(d / "day02.csv.gz", lambda ls: [*ls, ls[1]]),
        ("line 14", "twice"),
    ),
    # a trace VM without a vms.csv row: vms.csv, the VM, the day file's line
    ("vms.csv", lambda d: _vms_csv(d, lambda ls: [ls[0], *ls[2:]]), ("bb0177", "line 13")),
    # bad numbers in vms.csv
    (
        "vms.csv",
        lambda d: _vms_csv(d, lambda ls: [*ls[:3], ls[3].replace(",1,", ",two,", 1), *ls[4:]]),
        ("line 4", "vcpus"),
    ),
    (
        "vms.csv",
        lambda d: _vms_csv(d, lambda ls: [*ls[:2], ls[2].rsplit(",", 1)[0] + ",-5", *ls[3:]]),
        ("line 3", "memory_mib"),
    ),
    (
        "vms.csv",
        lambda d: _vms_csv(d, lambda ls: [ls[0], ls[1].replace("2600.0", "nan"), *ls[2:]]),
        ("line 2", "cpu_capacity_mhz"),
    ),
    ("vms.csv", lambda d: _vms_csv(d, lambda ls: [*ls, ls[1]]), ("line 14", "twice")),
    ("vms.csv", lambda d: _vms_csv(d, lambda ls: ["vm,cpus,memory_mib", *ls[1:]]), ("header",)),
]


@pytest.mark.parametrize(("file", "spoil", "words"), BAD)
def test_bad_input_exits_2_naming_the_file(
    tmp_path: Path, file: str, spoil: object, words: tuple[str, ...]
) -> None:
    path = write_continuous_dir(tmp_path / "bb")
    spoil(path)  # type: ignore[operator]
    res = CliRunner().invoke(
        cli, ["simulate", "--traces", str(path), "--hosts", HOSTS, "--policy", "none"]
    )
    assert res.exit_code == 2, res.output
    lines = res.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), res.output
    assert str(path / file) in lines[0], lines[0]
    for word in words:
        assert word in lines[0], lines[0]
    if file != "vms.csv" or "bb0177" in words:
        assert "VM bb" in lines[0]


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["--days", "4"], ("--days 4", "3 days")),
        (["--report-days", "2-4"], ("--report-days 2-4", "1-3")),
        (["--report-days", "3-2"], ("day range",)),
        (["--vm-types", "(1c,1G)"], ("--vm-types", "vms.csv")),
        (["--vm-pick", "random"], ("--vm-pick", "vms.csv")),
    ],
)
def test_bad_options_for_a_continuous_trace(
    tmp_path: Path, args: list[str], words: tuple[str, ...]
) -> None:
    path = write_continuous_dir(tmp_path / "bb")
    res = CliRunner().invoke(
        cli, ["simulate", "--traces", str(path), "--hosts", HOSTS, "--policy", "none", *args]
    )
    assert res.exit_code == 2, res.output
    lines = res.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ")
    for word in words:
        assert word in lines[0], lines[0]


def test_compare_compares_the_report_range(tmp_path: Path) -> None:
    path = write_continuous_dir(tmp_path / "bb", days=2, steps=4)
    res = CliRunner().invoke(
        cli,
        [
            "simulate",
            "--traces",
            str(path),
            "--hosts",
            HOSTS,
            "--compare",
            "none",
            "none",
            "--report-days",
            "2",
            "--json",
        ],
    )
    assert res.exit_code == 0, res.output
    doc = json.loads(res.output)
    assert doc["report_days"] == [2, 2]
    assert doc["figures"]["ticks"] == {"a": 4, "b": 4, "diff": 0, "better": ""}
