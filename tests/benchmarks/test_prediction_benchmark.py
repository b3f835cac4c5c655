"""The prediction benchmark (benchmarks.prediction.run) end to end on a tiny continuous trace:
both policies run, the figures and the reasons of the moves land in its document section
(no timing assertions)."""

from __future__ import annotations

import json
from pathlib import Path

from benchmarks.doc_sections import section
from benchmarks.prediction import run
from tests.simulation.helpers import write_continuous_dir


def test_the_benchmark_runs_both_policies_and_writes_its_table(tmp_path: Path) -> None:
    trace = write_continuous_dir(tmp_path / "bb", days=2, steps=6)
    out, doc = tmp_path / "results.json", tmp_path / "prediction.md"
    args = ["--traces", str(trace), "--hosts", "4x(2c,16G)", "--report-days", "2"]
    assert run.main([*args, "--steps", "6", "--out", str(out), "--doc", str(doc)]) == 0
    results = json.loads(out.read_text())
    assert [r["policy"] for r in results["runs"]] == ["reactive", "predictive"]
    for r in results["runs"]:
        assert r["ticks"] == 6 and r["migrations"] == sum(r["reasons"].values())
    body = section(doc.read_text(), run.SECTION)
    assert body is not None and "| overload_host_share |" in body and "moves by reason" in body
    # the table is rendered again from the results alone
    assert run.main(["--render", "--out", str(out), "--doc", str(doc)]) == 0
    assert section(doc.read_text(), run.SECTION) == body
