"""The one input layer: every file the product reads goes through :func:`read_bytes` /
:func:`read_text` (policy files and directories, settings, token files, snapshots, plans,
traces).

What it guarantees, for every kind of file:

* **Never blocks, never reads what is not a file.** The path is ``stat``-ed first; anything but a
  regular file (a directory where a file is expected, a FIFO, a socket, a device) is refused
  by name. The file is then opened with ``O_NONBLOCK`` and the open descriptor ``fstat``-ed
  again, so a file swapped for a FIFO between the two calls cannot hang the reader either.
* **Bounded size.** Each kind has a documented limit (:data:`POLICY` ... :data:`TRACE`); a file
  above it is refused before it is read (and a file that grows while read is cut at the limit
  and refused). A gzip file (traces) is bounded compressed and decompressed.
* **Strict UTF-8.** A byte that is not UTF-8 is reported with its line and column; so is a
  control character (anything YAML does not allow: C0 controls except tab, LF and CR, DEL, C1
  controls, U+FFFE/U+FFFF). A leading byte-order mark is dropped; CR LF and CR end lines as
  LF does (universal newlines, as ``Path.read_text`` reads them).
* **Located errors of the project's tree.** Each kind raises its own
  :class:`~balancer.errors.InputError` subclass (exit code 2), naming the file.

Limits (bytes read from disk):

=========  =========  ======================================================================
kind       limit      why
=========  =========  ======================================================================
policy     1 MiB      one policy file; a directory holds at most 1000 policy files
settings   1 MiB      the service settings file
token      64 KiB     a file holding one API or push token
snapshot   256 MiB    2000 hosts and 200 000 VMs (the generator's maximum) take about 60 MiB
plan       64 MiB     a plan moving 200 000 VMs takes about 30 MiB
trace      64 MiB     one trace CSV (also the decompressed size of a ``.gz``); PlanetLab: 1 MiB
VM sizes   16 MiB     a continuous trace's ``vms.csv`` (one row per VM; bitbrains: 2 KiB)
=========  =========  ======================================================================

JSON documents (snapshots, plans) are parsed by :func:`load_json`: errors carry line and column,
nesting is bounded (:data:`MAX_DEPTH`), whole numbers of more than :data:`MAX_INT_DIGITS` digits
are kept as :class:`HugeNumber` (never converted, so the caller refuses them naming the field)
and ``NaN``/``Infinity`` become float NaN/inf (refused by the caller's finiteness check).
"""

from __future__ import annotations

import errno
import json
import os
import re
import stat
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from balancer.errors import InputError, PolicyError, SettingsError, SnapshotError

KIB = 1024
MIB = 1024 * KIB

#: JSON and YAML documents nest at most this deep (a snapshot needs 4 levels, a policy 6)
MAX_DEPTH = 64
#: whole numbers with more digits than this are refused (int64 has 19)
MAX_INT_DIGITS = 20
#: a policy directory holds at most this many policy files
MAX_POLICY_FILES = 1000
#: a trace directory holds at most this many day files
MAX_TRACE_FILES = 10_000


def _plain_error(message: str, path: str) -> InputError:
    return InputError(f"{path}: {message}", subject=path)


@dataclass(frozen=True, slots=True, kw_only=True)
class Kind:
    """One kind of input file: what it is called, its syntax, its size limit, its error."""

    name: str
    syntax: str
    max_bytes: int
    error: Callable[[str, str], InputError]

    def fail(self, message: str, path: str | Path) -> InputError:
        return self.error(message, str(path))


POLICY = Kind(
    name="policy file",
    syntax="YAML",
    max_bytes=1 * MIB,
    error=lambda m, p: PolicyError(m, path=p),
)
SETTINGS = Kind(
    name="settings file",
    syntax="YAML",
    max_bytes=1 * MIB,
    error=lambda m, p: SettingsError(m, path=p),
)
TOKEN = Kind(
    name="token file",
    syntax="text",
    max_bytes=64 * KIB,
    error=lambda m, p: SettingsError(m, path=p),
)
SNAPSHOT = Kind(
    name="snapshot",
    syntax="JSON",
    max_bytes=256 * MIB,
    error=lambda m, p: SnapshotError(m, path=p),
)
PLAN = Kind(name="plan", syntax="JSON", max_bytes=64 * MIB, error=_plain_error)
TRACE = Kind(name="trace file", syntax="CSV", max_bytes=64 * MIB, error=_plain_error)
VM_SIZES = Kind(name="VM sizes file", syntax="CSV", max_bytes=16 * MIB, error=_plain_error)
DOMAIN_XML = Kind(name="domain XML", syntax="XML", max_bytes=512 * 1024, error=_plain_error)

_TYPES = (
    (stat.S_ISDIR, "a directory"),
    (stat.S_ISFIFO, "a FIFO (named pipe)"),
    (stat.S_ISSOCK, "a socket"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISLNK, "a symbolic link"),
)


def file_type(mode: int) -> str:
    """What a ``st_mode`` is, in words (``a FIFO (named pipe)``)."""
    for test, name in _TYPES:
        if test(mode):
            return name
    return "not a regular file"


def _os_message(exc: OSError) -> str:
    if exc.errno == errno.ENOENT:
        return "no such file"
    return f"cannot read: {exc.strerror or exc}"


def check_regular(path: str | Path, kind: Kind) -> os.stat_result:
    """``stat`` the path (never opening it); refuse anything but a regular file."""
    try:
        st = os.stat(path)
    except OSError as exc:
        raise kind.fail(_os_message(exc), path) from None
    except ValueError as exc:  # an embedded NUL byte
        raise kind.fail(f"not a usable path: {exc}", path) from None
    if not stat.S_ISREG(st.st_mode):
        raise kind.fail(f"is {file_type(st.st_mode)}, not a regular {kind.name}", path)
    if st.st_size > kind.max_bytes:
        raise kind.fail(_too_large(st.st_size, kind), path)
    return st


def _too_large(size: int, kind: Kind) -> str:
    return f"{size} bytes: above the limit of {kind.max_bytes} bytes for a {kind.name}"


def read_bytes(path: str | Path, kind: Kind) -> bytes:
    """The bytes of a regular file of at most ``kind.max_bytes`` (see the module docstring)."""
    check_regular(path, kind)
    flags = os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_NOCTTY", 0)
    try:
        fd = os.open(path, flags)
    except OSError as exc:
        raise kind.fail(_os_message(exc), path) from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise kind.fail(f"is {file_type(st.st_mode)}, not a regular {kind.name}", path)
        chunks: list[bytes] = []
        size = 0
        while size <= kind.max_bytes:
            chunk = os.read(fd, min(4 * MIB, kind.max_bytes + 1 - size))
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
    except OSError as exc:
        raise kind.fail(_os_message(exc), path) from None
    finally:
        os.close(fd)
    if size > kind.max_bytes:
        raise kind.fail(f"above the limit of {kind.max_bytes} bytes for a {kind.name}", path)
    return b"".join(chunks)


def gunzip(data: bytes, path: str | Path, kind: Kind) -> bytes:
    """Decompress gzip ``data``, refusing more than ``kind.max_bytes`` of output."""
    d = zlib.decompressobj(wbits=16 + zlib.MAX_WBITS)
    try:
        out = d.decompress(data, kind.max_bytes + 1)
    except zlib.error as exc:
        raise kind.fail(f"not a valid gzip file: {exc}", path) from None
    if len(out) > kind.max_bytes:
        raise kind.fail(
            f"decompresses to more than the limit of {kind.max_bytes} bytes for a {kind.name}",
            path,
        )
    if not d.eof:
        raise kind.fail("not a valid gzip file: it ends early", path)
    return out


#: what may appear in a text file: YAML's printable set (tab, LF, CR, the printable ASCII, NEL,
#: and the rest of Unicode but surrogates and U+FFFE/U+FFFF)
_FORBIDDEN = re.compile("[^\t\n\r\x20-\x7e\x85\xa0-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")


def line_col(text: str, pos: int) -> tuple[int, int]:
    """1-based line and column (in characters) of offset ``pos`` of ``text``."""
    line = text.count("\n", 0, pos) + 1
    return line, pos - (text.rfind("\n", 0, pos) + 1) + 1


def decode(data: bytes, path: str | Path, kind: Kind) -> str:
    """Strict UTF-8 (a leading BOM dropped); refuse a bad byte or a control character, each
    with its line and column."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        _refuse_control(data[: exc.start].decode("utf-8"), path, kind)  # the first fault first
        line = data.count(b"\n", 0, exc.start) + 1
        start = data.rfind(b"\n", 0, exc.start) + 1
        col = len(data[start : exc.start].decode("utf-8", errors="replace")) + 1
        raise kind.fail(
            f"not valid {kind.syntax}: line {line}, column {col}: "
            f"byte 0x{data[exc.start]:02x} is not UTF-8 ({exc.reason})",
            path,
        ) from None
    text = text.removeprefix("\ufeff")
    if "\r" in text:  # universal newlines, as ``Path.read_text`` reads (and digests) them
        text = text.replace("\r\n", "\n").replace("\r", "\n")
    _refuse_control(text, path, kind)
    return text


def _refuse_control(text: str, path: str | Path, kind: Kind) -> None:
    bad = _FORBIDDEN.search(text)
    if bad is not None:
        line, col = line_col(text, bad.start())
        raise kind.fail(
            f"not valid {kind.syntax}: line {line}, column {col}: "
            f"control character U+{ord(bad.group()):04X} is not allowed",
            path,
        )


def read_text(path: str | Path, kind: Kind) -> str:
    """The text of a regular file of at most ``kind.max_bytes``, strictly UTF-8 and free of
    control characters (see the module docstring); errors are ``kind``'s, naming the file."""
    data = read_bytes(path, kind)
    if str(path).endswith(".gz"):
        data = gunzip(data, path, kind)
    return decode(data, path, kind)


def files_in(directory: Path, patterns: tuple[str, ...], kind: Kind, limit: int) -> list[Path]:
    """The entries of ``directory`` matching ``patterns``, sorted; every one must be a regular
    file (a FIFO, a socket, a device, a subdirectory or a dangling link named like a policy file
    is refused, naming it), and so must any other entry that is a FIFO, socket or device."""
    try:
        entries = sorted(directory.iterdir())
    except OSError as exc:
        raise kind.fail(_os_message(exc), directory) from None
    out: list[Path] = []
    for entry in entries:
        matches = any(entry.match(p) for p in patterns)
        try:
            mode = entry.stat().st_mode
        except OSError as exc:
            if matches:
                raise kind.fail(_os_message(exc), entry) from None
            continue
        special = not (stat.S_ISREG(mode) or stat.S_ISDIR(mode))
        if special or (matches and not stat.S_ISREG(mode)):
            raise kind.fail(
                f"is {file_type(mode)}, not a regular {kind.name}; remove it from {directory}",
                entry,
            )
        if matches:
            out.append(entry)
    if len(out) > limit:
        raise kind.fail(f"holds {len(out)} files: more than the limit of {limit}", directory)
    return out


def printable(name: object, limit: int = 60) -> str:
    """A key or name from a document, safe to show in a one-line message: as is when short and
    printable, else its (cut) repr."""
    text = str(name)
    if text.isprintable() and 0 < len(text) <= limit:
        return text
    shown = repr(text)
    return shown if len(shown) <= limit else shown[: limit - 3] + "..."


# -- JSON --------------------------------------------------------------------------------------


class HugeNumber:
    """A whole number written with more than :data:`MAX_INT_DIGITS` digits (never converted)."""

    __slots__ = ("digits",)

    def __init__(self, text: str) -> None:
        self.digits = len(text.lstrip("-"))

    def __repr__(self) -> str:
        return f"a {self.digits}-digit number"


def _parse_int(text: str) -> int | HugeNumber:
    if len(text.lstrip("-")) > MAX_INT_DIGITS:
        return HugeNumber(text)
    return int(text)


_JSON_TOKENS = re.compile(r'"(?:[^"\\]|\\.)*"|[\[\]{}]')


def _too_deep_at(text: str, limit: int) -> int | None:
    """The offset where ``text`` (JSON) first nests deeper than ``limit``, if it does."""
    depth = 0
    for m in _JSON_TOKENS.finditer(text):
        tok = m.group()
        if tok in "[{":
            depth += 1
            if depth > limit:
                return m.start()
        elif tok in "]}":
            depth -= 1
    return None


def load_json(path: str | Path, kind: Kind) -> Any:
    """Read (:func:`read_text`) and parse a JSON document; errors carry line and column."""
    text = read_text(path, kind)
    try:
        doc = json.loads(text, parse_int=_parse_int, parse_constant=float)
        too_deep = _deeper(doc, MAX_DEPTH)
    except json.JSONDecodeError as exc:
        raise kind.fail(
            f"line {exc.lineno}: not valid JSON: {exc.msg} (column {exc.colno})", path
        ) from None
    except RecursionError:
        too_deep = True
    if too_deep:
        at = _too_deep_at(text, MAX_DEPTH) or 0
        line, col = line_col(text, at)
        raise kind.fail(
            f"line {line}: not valid JSON: nested more than {MAX_DEPTH} levels (column {col})",
            path,
        )
    return doc


def _deeper(doc: Any, limit: int) -> bool:
    """Whether ``doc`` nests deeper than ``limit`` (lists and objects)."""
    level: list[Any] = [doc]
    for _ in range(limit):
        nxt: list[Any] = []
        for x in level:
            if isinstance(x, dict):
                nxt.extend(v for v in x.values() if isinstance(v, dict | list))
            elif isinstance(x, list):
                nxt.extend(v for v in x if isinstance(v, dict | list))
        if not nxt:
            return False
        level = nxt
    return True


__all__ = [
    "MAX_DEPTH",
    "MAX_INT_DIGITS",
    "MAX_POLICY_FILES",
    "MAX_TRACE_FILES",
    "PLAN",
    "POLICY",
    "SETTINGS",
    "SNAPSHOT",
    "TOKEN",
    "TRACE",
    "VM_SIZES",
    "HugeNumber",
    "Kind",
    "check_regular",
    "decode",
    "files_in",
    "line_col",
    "load_json",
    "printable",
    "read_bytes",
    "read_text",
]
