"""Shared CLI helpers: one way to print data (table or --json) and to fail (one line, exit code).

Commands stay thin: parse, call one function of the core or the service, format.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Sequence
from dataclasses import asdict, is_dataclass
from datetime import datetime
from enum import Enum
from functools import wraps
from typing import Any, TypeVar

import click
from rich.console import Console
from rich.table import Table

F = TypeVar("F", bound=Callable[..., Any])

json_option = click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")


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


def handle_errors(func: F) -> F:
    """Turn our exceptions (and a few library ones) into one line and the right exit code."""
    from balancer.errors import BalancerError

    @wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except BalancerError as exc:
            fail(str(exc), exc.exit_code)
        except FileNotFoundError as exc:
            fail(f"{exc.filename}: no such file", 2)
        except PermissionError as exc:
            fail(f"{exc.filename}: permission denied", 2)
        except KeyboardInterrupt:
            fail("interrupted", 130)
        return None

    return wrapper  # type: ignore[return-value]
