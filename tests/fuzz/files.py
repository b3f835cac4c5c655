"""Shared helpers of the file fuzz suites: run the real CLI on a file, check the refusal.

Every refusal of a bad input file must be: exit code 2, one line on stderr that starts with
``error:`` and names the file, no traceback, and the command returns (never a hang: the
in-process runs are under pytest-timeout, the FIFO cases run in a subprocess with a timeout).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from click.testing import CliRunner

from balancer.cli import cli

ROOT = Path(__file__).resolve().parents[2]

#: a message's location: ``file:LINE:``, ``line L``, an item such as ``vms[3]`` / ``moves[0]``,
#: or a top-level field (``file: before: ...``)
LOCATED = re.compile(r":\d+: |line \d+|\w+\[\d+\]|: (snapshot|plan)\b|: [a-z_]+: ")


@dataclass(frozen=True, slots=True)
class Run:
    code: int
    stdout: str
    stderr: str

    @property
    def message(self) -> str:
        """The last line of stderr (the ``error:`` line)."""
        lines = self.stderr.strip().splitlines()
        return lines[-1] if lines else ""


def run_cli(args: Sequence[str]) -> Run:
    """The real ``balancer`` command, in process."""
    res = CliRunner().invoke(cli, list(args))
    if res.exception is not None and not isinstance(res.exception, SystemExit):
        raise AssertionError(f"{args}: uncaught {res.exception!r}") from res.exception
    return Run(res.exit_code, res.stdout, res.stderr)


def run_subprocess(args: Sequence[str], timeout_s: float = 60.0) -> Run:
    """The real ``balancer`` command in its own process (a hang fails the test, it does not
    hang the suite)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run(
        [sys.executable, "-c", "from balancer.cli import main; main()", *args],
        capture_output=True,
        text=True,
        timeout=timeout_s,
        env=env,
        check=False,
    )
    return Run(proc.returncode, proc.stdout, proc.stderr)


def assert_clean(run: Run) -> None:
    """No traceback, whatever the outcome; a refusal (exit 2) ends with one ``error:`` line."""
    assert "Traceback" not in run.stdout + run.stderr, run.stderr
    if run.code == 2:
        assert run.message.startswith("error: "), run.stderr


def assert_refused(
    run: Run, name: str, *needles: str, one_line: bool = True, located: bool = True
) -> str:
    """Exit 2, one ``error:`` line naming the file ``name`` and every needle, and located
    (line or item) unless the fault is the whole file (``located=False``: a FIFO, a size)."""
    assert run.code == 2, (run.code, run.stdout[-500:], run.stderr[-2000:])
    assert_clean(run)
    msg = run.message
    if one_line:
        assert run.stderr.strip() == msg, run.stderr
    assert name in msg, msg
    if located:
        assert LOCATED.search(msg), msg
    for n in needles:
        assert n in msg, (n, msg)
    assert len(msg) < 600, msg
    return msg


@contextmanager
def scratch() -> Iterator[Path]:
    """A fresh directory per hypothesis example (the tmp_path fixture is one per test)."""
    with tempfile.TemporaryDirectory(prefix="fuzz-") as d:
        yield Path(d)


def line_col_of(data: bytes, offset: int) -> tuple[int, int]:
    """1-based line and column of byte ``offset`` of ASCII ``data``."""
    line = data.count(b"\n", 0, offset) + 1
    return line, offset - (data.rfind(b"\n", 0, offset) + 1) + 1
