"""The simulation benchmark's before/after section (benchmarks.simulation.run --compare)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from benchmarks.doc_sections import section
from benchmarks.simulation.run import CALM_SECTION, RUN_SECTION, calm_section
from tests.simulation.helpers import write_trace_dir

ROOT = Path(__file__).resolve().parents[2]


def _row(day: str, policy: str, **figures: float) -> dict[str, object]:
    base = {
        "vms": 100,
        "migrations_per_vm_day": 0.0,
        "pingpong_moves": 0,
        "overload_host_share": 0.0,
        "gib_copied": 0.0,
    }
    return {"day": day, "policy": policy, "wall_s": 1.0, "figures": {**base, **figures}}


BEFORE = [
    _row("d1", "none", overload_host_share=0.3),
    _row("d1", "default", migrations_per_vm_day=2.0, pingpong_moves=10, overload_host_share=0.1),
    _row("d2", "default", migrations_per_vm_day=1.0, pingpong_moves=4, overload_host_share=0.2),
    _row("d3", "default", migrations_per_vm_day=1.0),
]


def test_calm_section_per_day_and_mean() -> None:
    after = [
        _row("d1", "none", overload_host_share=0.3),
        _row("d1", "default", migrations_per_vm_day=0.5, pingpong_moves=2, overload_host_share=0.1),
        _row("d2", "default", migrations_per_vm_day=0.25, overload_host_share=0.25, gib_copied=8),
        {"day": "d3", "policy": "default", "wall_s": 1.0, "error": "abort", "exit": -6},
    ]
    text = calm_section(BEFORE, after, "CMD")
    lines = text.splitlines()
    assert text.startswith("## Calm: before and after")
    assert "*After*: `CMD`" in text
    assert "| d1 | 100 | 2 → 0.5 | 10 → 2 | 0.1 → 0.1 | 0 → 0 | 0.3 | yes |" in lines
    # d2: fewer migrations, but more overload than before: not a success
    assert "| d2 | 100 | 1 → 0.25 | 4 → 0 | 0.2 → 0.25 | 0 → 8 |  | no |" in lines
    assert "| mean |  | 1.5 → 0.375 | 7 → 1 | 0.15 → 0.175 | 0 → 4 |  | 1 of 2 days |" in lines
    # the failed after-run of d3 is no comparison
    assert "Days in the before-run not run after: d3." in text
    assert "Not comparable" not in text
    assert "Not comparable" in calm_section(BEFORE, after, "CMD", steps=6)
    assert "No day was run both before and after." in calm_section(BEFORE, [], "CMD")


def test_compare_run_writes_both_sections_and_keeps_them(tmp_path: Path) -> None:
    traces = write_trace_dir(tmp_path / "traces", days=2, vms=8, steps=6)
    before = tmp_path / "before.json"
    before.write_text(json.dumps([_row("20110301", "default", migrations_per_vm_day=9.0)]))
    doc, results = tmp_path / "sim.md", tmp_path / "results.json"
    cmd = [sys.executable, "-m", "benchmarks.simulation.run", "--days", "1", "--steps", "3"]
    cmd += ["--results", str(results), "--doc", str(doc), "--compare", str(before)]
    env = {**os.environ, "PLANETLAB_TRACES": str(traces), "PYTHONPATH": str(ROOT)}
    out = subprocess.run(
        cmd, check=False, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300
    )
    assert out.returncode == 0, out.stderr
    rows = json.loads(results.read_text())
    assert [(r["day"], r["policy"], r["steps"]) for r in rows] == [
        ("20110301", "none", 3),
        ("20110301", "default", 3),
    ]
    text = doc.read_text()
    calm = section(text, CALM_SECTION)
    assert calm is not None and "Not comparable" in calm
    assert "| 20110301 | 8 | 9 → " in calm
    assert section(text, RUN_SECTION) is not None
    # re-rendering the run's table keeps the before/after section
    render = [sys.executable, "-m", "benchmarks.simulation.run", "--render"]
    render += ["--results", str(results), "--doc", str(doc)]
    out = subprocess.run(
        render, check=False, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr
    assert section(doc.read_text(), CALM_SECTION) == calm
