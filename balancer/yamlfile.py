"""Validate a YAML file against a pydantic model, with errors that name file, line and field.

YAML is composed into nodes as well as loaded, so that a pydantic error location
(``rules.2.mode``) maps back to the line it came from.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ValidationError

from balancer.errors import PolicyError

M = TypeVar("M", bound=BaseModel)


def line_of(node: yaml.Node | None, loc: Sequence[int | str]) -> int | None:
    """The 1-based line of the YAML node at ``loc`` (or of its nearest ancestor)."""
    if node is None:
        return None
    line = node.start_mark.line + 1
    for part in loc:
        nxt: yaml.Node | None = None
        if isinstance(node, yaml.MappingNode):
            for k, v in node.value:
                if isinstance(k, yaml.ScalarNode) and k.value == str(part):
                    nxt = v
                    line = k.start_mark.line + 1
                    break
        elif (
            isinstance(node, yaml.SequenceNode)
            and isinstance(part, int)
            and 0 <= part < len(node.value)
        ):
            nxt = node.value[part]
        if nxt is None:
            break
        node = nxt
        line = node.start_mark.line + 1
    return line


def doc_loc(loc: Sequence[int | str]) -> list[int | str]:
    """Drop the parts pydantic adds for union members (``list[str]``, ``SelectorDoc``,
    ``function-after[...]``) so that only keys and indexes of the document remain."""
    return [
        p
        for p in loc
        if isinstance(p, int) or not (p[:1].isupper() or "[" in p or p.startswith("function"))
    ]


def field_path(loc: Sequence[int | str]) -> str:
    out = ""
    for part in doc_loc(loc):
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else part)
    return out or "<document>"


def compose(
    text: str, path: str, error: type[PolicyError] = PolicyError
) -> tuple[yaml.Node | None, Any]:
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        data: Any = yaml.safe_load(text)
    except yaml.MarkedYAMLError as exc:
        line = exc.problem_mark.line + 1 if exc.problem_mark else None
        raise error(f"not valid YAML: {exc.problem}", path=path, line=line) from exc
    except yaml.YAMLError as exc:  # e.g. ReaderError: a control character in the file
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise error(f"not valid YAML: {first}", path=path) from exc
    return node, data


def validate_yaml(
    text: str, path: str, model: type[M], error: type[PolicyError] = PolicyError
) -> tuple[M, yaml.Node | None]:
    """Parse ``text`` and validate it as ``model``; raise ``error`` with file, line, field."""
    node, data = compose(text, path, error)
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise error("the file must be a mapping of settings", path=path, line=line_of(node, ()))
    try:
        return model.model_validate(data), node
    except ValidationError as exc:
        err = exc.errors()[0]
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            msg = "unknown setting"
        more = len(exc.errors()) - 1
        if more:
            msg += f" (and {more} more error{'s' if more > 1 else ''})"
        raise error(
            msg, path=path, line=line_of(node, doc_loc(err["loc"])), field=field_path(err["loc"])
        ) from None
