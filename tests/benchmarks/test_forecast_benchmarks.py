"""The forecast benchmarks (benchmarks.forecast.accuracy / .cost) run end to end on a tiny
input and write their sections of the document (no timing assertions)."""

from __future__ import annotations

from pathlib import Path

from benchmarks.doc_sections import section
from benchmarks.forecast import accuracy, cost
from tests.forecast.helpers import write_trace_dir


def test_accuracy_benchmark_writes_its_table(tmp_path: Path) -> None:
    d = write_trace_dir(tmp_path / "tr", days=3, vms=("a", "b"), vcpus=(2, 4))
    doc = tmp_path / "forecast.md"
    args = ["--traces", str(d), "--train-days", "2", "--origins", "3", "--hw-every", "3"]
    assert accuracy.main([*args, "--out", str(doc)]) == 0
    body = section(doc.read_text(), accuracy.SECTION)
    assert body is not None
    methods = [line.split("|")[1].strip() for line in body.splitlines() if line.startswith("| ")]
    assert methods[1:] == [
        "reactive persistence (last hour's EWM, flat)",
        "seasonal naive, daily",
        "seasonal naive, weekly",
        "this model (balancer.forecast)",
        "Holt-Winters (statsmodels)",
    ]
    assert "nan" not in body


def test_cost_benchmark_writes_its_table(tmp_path: Path) -> None:
    d = write_trace_dir(tmp_path / "tr", days=2, vms=("a", "b"), vcpus=(2, 4))
    doc = tmp_path / "forecast.md"
    args = ["--traces", str(d), "--vms", "20", "--days", "2", "--repeat", "1"]
    assert cost.main([*args, "--out", str(doc)]) == 0
    body = section(doc.read_text(), cost.SECTION)
    assert body is not None and "`model.forecast` (every cycle)" in body
    assert "20 VMs" in body
