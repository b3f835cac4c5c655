"""Benchmark documents that more than one writer fills: each writer owns the text between its
own two markers and leaves the rest of the file as it is."""

from __future__ import annotations

from pathlib import Path


def markers(name: str) -> tuple[str, str]:
    begin = f"<!-- {name}: begin (written by a benchmark; edits are lost) -->"
    return begin, f"<!-- {name}: end -->"


def replace_section(text: str, name: str, body: str) -> str:
    """``text`` with section ``name`` set to ``body`` (appended at the end if it is not there)."""
    begin, end = markers(name)
    block = f"{begin}\n{body.strip()}\n{end}\n"
    i = text.find(begin)
    j = text.find(end, i + len(begin)) if i >= 0 else -1
    if i < 0 or j < 0:
        return text.rstrip() + ("\n\n" if text.strip() else "") + block
    rest = text[j + len(end) :].lstrip("\n")
    return text[:i] + block + ("\n" + rest if rest else "")


def section(text: str, name: str) -> str | None:
    """The body of section ``name`` in ``text`` (None if it is not there)."""
    begin, end = markers(name)
    i = text.find(begin)
    j = text.find(end, i + len(begin)) if i >= 0 else -1
    if i < 0 or j < 0:
        return None
    return text[i + len(begin) : j].strip()


def write_section(path: Path, name: str, body: str) -> None:
    """Set section ``name`` of the document at ``path`` (created if missing)."""
    old = path.read_text() if path.exists() else ""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(replace_section(old, name, body))
