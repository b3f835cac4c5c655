"""``balancer forecast backtest`` end to end on small trace directories."""

from __future__ import annotations

import gzip
import json
import subprocess
import sys
from pathlib import Path

from click.testing import CliRunner

from balancer.cli import cli
from tests.forecast.helpers import write_trace_dir

ROOT = Path(__file__).resolve().parents[2]


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "balancer", "forecast", "backtest", *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        check=False,
    )


def test_backtest_prints_a_table_and_json(tmp_path: Path) -> None:
    d = write_trace_dir(tmp_path / "tr", days=4)
    args = ["--traces", str(d), "--train-days", "3", "--horizons", "30m,1h,4h", "--every", "2h"]
    text = CliRunner().invoke(cli, ["forecast", "backtest", *args])
    assert text.exit_code == 0, text.output
    assert "MAE forecast" in text.output and "240 min" in text.output
    res = CliRunner().invoke(cli, ["forecast", "backtest", *args, "--json"])
    assert res.exit_code == 0, res.output
    doc = json.loads(res.output)
    assert doc["vms"] == 3 and doc["train_days"] == 3 and doc["origins"] == 11
    assert [h["horizon_s"] for h in doc["horizons"]] == [1800, 3600, 14400]
    for h in doc["horizons"]:
        for name in ("forecast", "persistence"):
            assert 0 <= h[name]["coverage"] <= 1 and h[name]["mae_cores"] >= 0
    # the daily rhythm is learnt: 4 h ahead the forecast beats holding the last hour flat
    four = doc["horizons"][-1]
    assert four["forecast"]["mae_cores"] < 0.8 * four["persistence"]["mae_cores"]


def test_bad_vms_csv_is_exit_2_naming_the_file(tmp_path: Path) -> None:
    d = write_trace_dir(tmp_path / "tr", days=2)
    (d / "vms.csv").write_text("vm,vcpus\na,2\nb,lots\nc,1\n")
    r = _run("--traces", str(d), "--train-days", "1")
    assert r.returncode == 2, r.stderr
    assert "vms.csv" in r.stderr and "row 3" in r.stderr and "vcpus" in r.stderr
    assert "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1
    # a VM of the trace missing from vms.csv
    (d / "vms.csv").write_text("vm,vcpus\na,2\nb,4\n")
    r = _run("--traces", str(d), "--train-days", "1")
    assert r.returncode == 2 and "vms.csv" in r.stderr and "'c'" in r.stderr


def _invoke(*args: str) -> tuple[int, str]:
    res = CliRunner().invoke(cli, ["forecast", "backtest", *args])
    return res.exit_code, res.stderr


def test_day_files_with_other_vms_are_exit_2_naming_the_file(tmp_path: Path) -> None:
    d = write_trace_dir(tmp_path / "tr", days=2)
    with gzip.open(d / "day02.csv.gz", "rt") as f:
        text = f.read().replace("\nc,", "\nzz,")
    with gzip.open(d / "day02.csv.gz", "wt") as f:
        f.write(text)
    code, err = _invoke("--traces", str(d), "--train-days", "1")
    assert code == 2, err
    assert "day02.csv.gz" in err and "'zz'" in err and "Traceback" not in err


def test_other_bad_inputs_are_exit_2(tmp_path: Path) -> None:
    d = write_trace_dir(tmp_path / "tr", days=2)
    code, err = _invoke("--traces", str(tmp_path / "missing"))
    assert code == 2 and "missing" in err
    code, err = _invoke("--traces", str(d), "--train-days", "2")
    assert code == 2 and "no origin" in err
    code, err = _invoke("--traces", str(d), "--train-days", "1", "--horizons", "7m")
    assert code == 2 and "--horizons" in err
    code, err = _invoke("--traces", str(d), "--train-days", "1", "--quantile", "1.5")
    assert code == 2
