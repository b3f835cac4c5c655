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
    quick = ["--steps", "6", "--seeds", "0,1", "--out", str(out), "--doc", str(doc)]
    assert run.main([*args, *quick]) == 0
    results = json.loads(out.read_text())
    assert [(r["policy"], r["seed"]) for r in results["runs"]] == [
        ("reactive", 0),
        ("predictive", 0),
        ("reactive", 1),
        ("predictive", 1),
    ]
    for r in results["runs"]:
        assert r["ticks"] == 6 and r["migrations"] == sum(r["reasons"].values())
    body = section(doc.read_text(), run.SECTION)
    assert body is not None and "| overload_host_share |" in body and "moves by reason" in body
    assert "seeds 0, 1" in body and "**Target**" in body and "| 1 | " in body
    # the table is rendered again from the results alone
    assert run.main(["--render", "--out", str(out), "--doc", str(doc)]) == 0
    assert section(doc.read_text(), run.SECTION) == body


def test_the_verdict_is_computed_from_the_figures() -> None:
    def r(policy: str, seed: int, share: float, moves: int) -> dict[str, object]:
        figures: dict[str, object] = {k: 0.0 for k in run.FIGURES}
        figures.update(overload_host_share=share, migrations=moves, overloaded_host_hours=0.0)
        return {"policy": policy, "seed": seed, "reasons": {}, **figures}

    doc = {"hosts": "6x(12c,192G)", "report_days": "15-20", "command": "c", "date": "d"}
    runs = [r("reactive", 0, 0.10, 50), r("predictive", 0, 0.08, 40)]
    runs += [r("reactive", 1, 0.10, 50), r("predictive", 1, 0.11, 40)]
    text = run.render({**doc, "runs": runs})
    assert "met on the mean over the seeds; met on 1 of 2 seeds" in text
    more_moves = [r("reactive", 0, 0.10, 50), r("predictive", 0, 0.05, 51)]
    assert "not met on the mean" in run.render({**doc, "runs": more_moves})
