"""The lab learning benchmark's table (its lab runs are in benchmarks/lab/learning.py)."""

from __future__ import annotations

from benchmarks.lab.learning import BANDWIDTH_MIB_S, Copy, copy_table


def _copy(n: int, learned: float) -> Copy:
    return Copy(
        n=n, vm="g", dirty_mib_s=0.0, memory_gib=0.25, dirty_gib=0.25, learned_gib=learned,
        copied_gib=0.1, job_s=0.1 * 1024 / BANDWIDTH_MIB_S,
    )  # fmt: skip


def test_the_table_gives_each_spans_mean_error_per_predictor() -> None:
    rows = [_copy(n, 0.2 if n <= 10 else 0.1) for n in range(1, 21)]
    lines = copy_table(rows).splitlines()
    assert [line.split("|")[1].strip() for line in lines[2:]] == ["1-5", "6-10", "11-20", "1-20"]
    first, last = lines[2].split("|"), lines[4].split("|")
    assert first[2].strip() == "150%" and first[4].strip() == "100%"  # memory only, learned
    assert last[4].strip() == "0%" and last[5].strip() == "0%"  # learned GiB and time exact


def test_a_short_run_has_one_span() -> None:
    lines = copy_table([_copy(n, 0.1) for n in range(1, 4)]).splitlines()
    assert [line.split("|")[1].strip() for line in lines[2:]] == ["1-3"]
