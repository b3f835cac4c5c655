"""Shared CLI helpers: one way to print data (table or --json) and to fail (one line, exit code).

Commands stay thin: parse, call one function of the core or the service, format.
"""

from __future__ import annotations

import json
import math
import os
import sys
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import asdict, is_dataclass
from datetime import datetime
from enum import Enum
from functools import wraps
from pathlib import Path
from typing import Any, TypeVar

import click
from rich.console import Console
from rich.table import Table

F = TypeVar("F", bound=Callable[..., Any])

json_option = click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")

#: bounds of every integer option (seeds, counts, ids): what the solver, SQLite and the API
#: accept (a signed 32-bit seed, a signed 64-bit id); larger values are refused with exit 2
SEED = click.IntRange(0, 2**31 - 1)
ID = click.IntRange(1, 2**63 - 1)


class FiniteFloat(click.FloatRange):
    """A float option within ``[min, max]``; ``nan`` and ``inf`` are refused (click's
    FloatRange lets ``nan`` through every bound: it compares false)."""

    name = "finite float range"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        rv = super().convert(value, param, ctx)
        if not math.isfinite(rv):
            self.fail(f"{value!r} is not a finite number.", param, ctx)
        return rv


def finite(min: float, max: float) -> FiniteFloat:
    return FiniteFloat(min, max)


def _default(o: object) -> object:
    if isinstance(o, Enum):
        return o.value
    if isinstance(o, datetime):
        return o.isoformat()
    if isinstance(o, frozenset | set):
        return sorted(o)
    if is_dataclass(o) and not isinstance(o, type):
        return asdict(o)
    raise TypeError(f"cannot serialise {type(o).__name__}")


def print_json(doc: object) -> None:
    click.echo(json.dumps(doc, indent=2, default=_default))


def print_table(
    title: str | None, columns: Sequence[str], rows: Sequence[Sequence[object]]
) -> None:
    table = Table(title=title)
    for c in columns:
        table.add_column(c)
    for r in rows:
        table.add_row(*("" if v is None else str(v) for v in r))
    Console().print(table)


def fail(message: str, code: int = 1) -> None:
    """Print one clear line to stderr and exit non-zero (no traceback)."""
    click.echo(f"error: {message}", err=True)
    sys.exit(code)


#: exit status of an error we did not foresee (a bug): one line, never a traceback, unless
#: ``$BALANCER_DEBUG`` is set
EXIT_INTERNAL = 70


def one_line(text: str) -> str:
    """A message on one line (an error message never spans several)."""
    return " ".join(str(text).split()) or "(no message)"


def handle_errors(func: F) -> F:
    """Turn our exceptions (and a few library ones) into one line and the right exit code."""
    from balancer.errors import BalancerError

    @wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except BalancerError as exc:
            fail(one_line(str(exc)), exc.exit_code)
        except FileNotFoundError as exc:
            fail(f"{exc.filename}: no such file", 2)
        except PermissionError as exc:
            fail(f"{exc.filename}: permission denied", 2)
        except UnicodeError as exc:  # a file that is not UTF-8 text (the input layer names it)
            fail(one_line(f"input is not valid UTF-8 text: {exc}"), 2)
        except OSError as exc:
            where = f"{exc.filename}: " if exc.filename else ""
            fail(one_line(f"{where}{exc.strerror or exc}"), 2)
        except KeyboardInterrupt:
            fail("interrupted", 130)
        except (SystemExit, click.exceptions.Exit, click.ClickException, click.Abort):
            raise
        except Exception as exc:
            if os.environ.get("BALANCER_DEBUG"):
                raise
            fail(
                one_line(
                    f"internal error: {type(exc).__name__}: {exc} "
                    "(a bug: please report it; $BALANCER_DEBUG=1 shows the traceback)"
                ),
                EXIT_INTERNAL,
            )
        return None

    return wrapper  # type: ignore[return-value]


def output_path(path: Path, *, directory: bool = False) -> Path:
    """Check an output path (``-o FILE``, ``--out DIR``) before any work: its parent directory
    must exist (nothing is created beyond the path itself), and a file must not be a directory.
    Raises :class:`~balancer.errors.InputError` (exit 2) naming the path."""
    from balancer.errors import InputError

    parent = path.parent
    if not parent.is_dir():
        what = "is not a directory" if parent.exists() else "does not exist"
        raise InputError(f"{path}: the directory {parent} {what} (it is not created)")
    if not directory and path.is_dir():
        raise InputError(f"{path}: is a directory")
    if directory and path.exists() and not path.is_dir():
        raise InputError(f"{path}: exists and is not a directory")
    return path


def write_output(path: Path, text: str) -> None:
    """Write an output file atomically: a temporary file in the same directory, fsynced, then
    renamed over ``path``; a crash leaves the old file or the new one, never half of one."""
    output_path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        umask = os.umask(0o022)
        os.umask(umask)
        os.fchmod(fd, 0o666 & ~umask)  # as open() would have made it, not mkstemp's 0600
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
