"""Validate a YAML file against a pydantic model, with errors that name file, line and field.

YAML is composed into nodes and constructed from them in one pass, so that a pydantic error
location (``rules.2.mode``) maps back to the line it came from. Beyond YAML itself, a document
is refused (each time naming the line and the field) when:

* a key is given twice in one mapping (at any depth; both lines are named; ``<<`` merges may
  still be overridden);
* it nests deeper than :data:`balancer.inputs.MAX_DEPTH` levels, or its aliases expand to more
  than :data:`MAX_NODES` nodes, or an alias refers to its own ancestor;
* a scalar cannot be built (``!!int abc``, ``!!timestamp 2026-13-45``, a bad ``!!binary``);
* a whole number has more than :data:`balancer.inputs.MAX_INT_DIGITS` digits or is beyond
  64 bits, or a float is not finite (``.inf``, ``.nan``, ``1e400``).
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ValidationError

from balancer.errors import PolicyError
from balancer.inputs import MAX_DEPTH, MAX_INT_DIGITS, printable

M = TypeVar("M", bound=BaseModel)

#: a document's aliases may expand it to at most this many nodes (a "billion laughs" guard)
MAX_NODES = 1_000_000
_INT64 = 2**63


class _Problem(Exception):
    """A located problem found while composing or constructing (converted by :func:`compose`)."""

    def __init__(self, message: str, node_or_mark: Any, field: str | None = None) -> None:
        super().__init__(message)
        mark = getattr(node_or_mark, "start_mark", node_or_mark)
        self.message = message
        self.line = mark.line + 1 if mark is not None else None
        self.field = field


def _path_text(parts: Sequence[int | str]) -> str | None:
    out = ""
    for part in parts:
        if part != "":
            name = printable(part)
            out += f"[{part}]" if isinstance(part, int) else (f".{name}" if out else name)
    if len(out) > 80:  # a deeply nested path: its start and its end
        out = f"{out[:40]}...{out[-30:]}"
    return out or None


class _Loader(yaml.SafeLoader):
    """SafeLoader with a depth bound, field paths, duplicate-key and number checks."""

    def __init__(self, text: str) -> None:
        super().__init__(text)
        self._stack: list[int | str] = []
        self.paths: dict[int, str | None] = {}

    # -- composing -------------------------------------------------------------------------
    def compose_node(self, parent: yaml.Node | None, index: Any) -> yaml.Node:
        if parent is not None:
            if isinstance(index, yaml.ScalarNode):
                self._stack.append(index.value)
            elif isinstance(index, int):
                self._stack.append(index)
            else:  # a key itself: it has no field path of its own
                self._stack.append("")
        try:
            if len(self._stack) >= MAX_DEPTH:
                raise _Problem(
                    f"nested more than {MAX_DEPTH} levels deep",
                    self.peek_event().start_mark,  # type: ignore[no-untyped-call]
                    _path_text(self._stack),
                )
            node = super().compose_node(parent, index)
            assert node is not None
            self.paths.setdefault(id(node), _path_text(self._stack))
            return node
        finally:
            if parent is not None:
                self._stack.pop()

    def field_of(self, node: yaml.Node) -> str | None:
        return self.paths.get(id(node))

    # -- constructing ----------------------------------------------------------------------
    def construct_object(self, node: yaml.Node, deep: bool = False) -> Any:
        try:
            return super().construct_object(node, deep=deep)
        except (yaml.YAMLError, _Problem):
            raise
        except Exception as exc:  # a scalar PyYAML cannot build raises ValueError & co.
            value = str(node.value) if isinstance(node, yaml.ScalarNode) else type(node).__name__
            shown = value if len(value) <= 40 else value[:40] + "..."
            tag = node.tag.removeprefix("tag:yaml.org,2002:")
            raise _Problem(
                f"cannot read {shown!r} as {tag}: {exc}", node, self.field_of(node)
            ) from exc

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        if not isinstance(node, yaml.MappingNode):  # ``!!set [a]``: SafeConstructor refuses it
            return super().construct_mapping(node, deep=deep)
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = self.construct_object(key_node, deep=True)
            try:
                first = seen.get(key)
            except TypeError:  # unhashable: SafeConstructor refuses it below
                continue
            line = key_node.start_mark.line + 1
            if first is not None:
                path = self.field_of(node)
                field = f"{path}.{printable(key)}" if path else printable(key)
                raise _Problem(
                    f"key {printable(key)!r} is given twice (lines {first} and {line}); "
                    "give it once",
                    key_node,
                    field,
                )
            seen[key] = line
        return super().construct_mapping(node, deep=deep)

    def construct_yaml_int(self, node: yaml.ScalarNode) -> int:
        digits = node.value.replace("_", "").lstrip("+-")
        if len(digits) > MAX_INT_DIGITS:
            raise _Problem(
                f"a {len(digits)}-digit number is out of range", node, self.field_of(node)
            )
        value: int = super().construct_yaml_int(node)
        if not -_INT64 <= value < _INT64:
            raise _Problem(f"{node.value} is out of range", node, self.field_of(node))
        return value

    def construct_yaml_float(self, node: yaml.ScalarNode) -> float:
        if len(node.value) > 100:
            raise _Problem(
                f"a {len(node.value)}-character number is out of range", node, self.field_of(node)
            )
        value: float = super().construct_yaml_float(node)
        if not math.isfinite(value):
            raise _Problem(f"{node.value} is not a finite number", node, self.field_of(node))
        return value


_Loader.add_constructor("tag:yaml.org,2002:int", _Loader.construct_yaml_int)
# YAML 1.2 floats without a dot (``1e3``, ``1e400``) are numbers, not text
_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?[0-9][0-9_]*[eE][-+]?[0-9]+$"),
    list("-+0123456789"),
)
_Loader.add_constructor("tag:yaml.org,2002:float", _Loader.construct_yaml_float)


def _check_size(root: yaml.Node, loader: _Loader) -> None:
    """Refuse an alias that contains itself, and aliases expanding beyond :data:`MAX_NODES`."""
    sizes: dict[int, int] = {}
    open_: set[int] = set()

    def size(node: yaml.Node) -> int:
        key = id(node)
        if key in sizes:
            return sizes[key]
        if key in open_:
            raise _Problem(
                "an alias refers to a node that contains it", node, loader.field_of(node)
            )
        open_.add(key)
        total = 1
        if isinstance(node, yaml.SequenceNode):
            total += sum(size(c) for c in node.value)
        elif isinstance(node, yaml.MappingNode):
            total += sum(size(k) + size(v) for k, v in node.value)
        open_.discard(key)
        if total > MAX_NODES:
            raise _Problem(
                f"aliases expand the document beyond {MAX_NODES} nodes", node, loader.field_of(node)
            )
        sizes[key] = total
        return total

    size(root)


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


def _child(node: yaml.Node | None, part: int | str) -> yaml.Node | None:
    if isinstance(node, yaml.MappingNode):
        for k, v in node.value:
            if isinstance(k, yaml.ScalarNode) and k.value == str(part):
                child: yaml.Node = v
                return child
    elif isinstance(node, yaml.SequenceNode) and isinstance(part, int) and part < len(node.value):
        item: yaml.Node = node.value[part]
        return item if part >= 0 else None
    return None


def doc_loc(loc: Sequence[int | str], node: yaml.Node | None = None) -> list[int | str]:
    """Drop the parts pydantic adds for union members (``list[str]``, ``SelectorDoc``,
    ``function-after[...]``, and, given the document's ``node``, a discriminator's value such as
    ``simulated`` in ``backend.simulated.seed``) so that only keys and indexes remain."""
    parts = [
        p
        for p in loc
        if isinstance(p, int) or not (p[:1].isupper() or "[" in p or p.startswith("function"))
    ]
    if node is None:
        return parts
    out: list[int | str] = []
    cur: yaml.Node | None = node
    for i, part in enumerate(parts):
        nxt = _child(cur, part)
        last = i == len(parts) - 1
        if nxt is None and isinstance(part, str) and isinstance(cur, yaml.MappingNode) and not last:
            continue  # not a key of the document: a tag pydantic added
        out.append(part)
        cur = nxt
    return out


def field_path(loc: Sequence[int | str], node: yaml.Node | None = None) -> str:
    out = ""
    for part in doc_loc(loc, node):
        name = printable(part)
        out += f"[{part}]" if isinstance(part, int) else (f".{name}" if out else name)
    return out or "<document>"


def _one_line(text: str) -> str:
    return " ".join(text.split())


def compose(
    text: str, path: str, error: type[PolicyError] = PolicyError
) -> tuple[yaml.Node | None, Any]:
    """Parse ``text`` into its node tree and its data; raise ``error`` with line and field."""
    loader = _Loader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None, None
        _check_size(node, loader)
        data: Any = loader.construct_document(node)
    except _Problem as exc:
        raise error(exc.message, path=path, line=exc.line, field=exc.field) from exc
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark else None
        parts = [p for p in (exc.context, exc.problem) if p]
        problem = ", ".join(parts) or "syntax error"
        raise error(f"not valid YAML: {_one_line(problem)}", path=path, line=line) from exc
    except yaml.YAMLError as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise error(f"not valid YAML: {first}", path=path) from exc
    except RecursionError as exc:  # cannot happen below MAX_DEPTH; never a traceback anyway
        raise error(f"not valid YAML: nested too deeply ({exc})", path=path) from exc
    except (ValueError, TypeError, LookupError, AttributeError) as exc:  # a PyYAML bug: no line
        raise error(f"not valid YAML: {type(exc).__name__}: {exc}", path=path) from exc
    finally:
        loader.dispose()
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
    bad_key = next((k for k in data if not isinstance(k, str)), None)
    if bad_key is not None:
        raise error(
            f"a setting's name must be text, not {type(bad_key).__name__} {bad_key!r}",
            path=path,
            line=line_of(node, ()),
        )
    try:
        return model.model_validate(data), node
    except ValidationError as exc:
        err = exc.errors()[0]
        msg = _one_line(err["msg"].removeprefix("Value error, "))
        if err["type"] == "extra_forbidden":
            msg = "unknown setting"
        more = len(exc.errors()) - 1
        if more:
            msg += f" (and {more} more error{'s' if more > 1 else ''})"
        raise error(
            msg,
            path=path,
            line=line_of(node, doc_loc(err["loc"], node)),
            field=field_path(err["loc"], node),
        ) from None
