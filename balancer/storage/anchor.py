"""The audit chain's anchor: its head written outside the database, as it advances.

The hash chain (:mod:`balancer.storage.audit`) shows an edited, reordered or deleted record in
the middle, but not the newest records deleted together with a rewound ``audit_head``: what is
left is a valid, shorter chain. The anchor closes that gap. After every transaction that
appended audit records commits, the new head is written:

* to an append-only file (opened with ``O_APPEND``), one line per advance::

      <seq> <sha256 hash> <UTC time>

  Each line is one ``write()`` on a descriptor opened for it (so a rotated or deleted file is
  created again), followed by ``fsync()``: when the call returns the line is on disk. Several
  writers (threads, processes) may share the file: ``O_APPEND`` keeps whole lines. (The SQLite
  store itself runs with ``synchronous=NORMAL``: after a power loss the anchor may name a few
  records more than the database kept; verification then reports them as missing, which is
  what happened.)
* to syslog / the systemd journal, when ``/dev/log`` exists (``balancer-audit`` identifier,
  facility ``authpriv``); no error when it does not.

:func:`check_record` and :func:`check_head` compare the database's chain with the anchor:
an anchored record whose hash the database does not have (the newest records replaced), or an
anchored head beyond the database's last record (the newest records deleted and the head
rewound). The anchor is read *before* the chain, so a record committed while verification
runs is never a false alarm.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import syslog
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from balancer.errors import AuditChainError, InputError

log = logging.getLogger("balancer.storage.anchor")

#: where syslog listens (the systemd journal provides it too)
DEV_LOG = "/dev/log"
#: the largest anchor file :func:`read_anchor` accepts (about 10 million advances)
MAX_ANCHOR_BYTES = 1 << 30
_LINE = re.compile(r"^([1-9][0-9]{0,18}) ([0-9a-f]{64}) (\S+)$")


@dataclass(frozen=True, slots=True, kw_only=True)
class AnchorEntry:
    seq: int
    hash: str
    at: str
    line: int


#: how the anchor file is opened for each line
OPEN_FLAGS = os.O_WRONLY | os.O_APPEND | os.O_CREAT | getattr(os, "O_CLOEXEC", 0)


class Anchor:
    """Writes the chain head as it advances (see the module doc). Thread-safe; a write that
    fails is logged (the database write it follows has committed already) and counted in
    :attr:`failures`; the next advance tries again."""

    def __init__(self, path: str | Path, *, use_syslog: bool = True) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()
        self.failures = 0
        self._syslog = use_syslog and os.path.exists(DEV_LOG)
        if self._syslog:
            syslog.openlog("balancer-audit", syslog.LOG_PID, syslog.LOG_AUTHPRIV)

    def advance(self, seq: int, digest: str) -> None:
        at = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        line = f"{seq} {digest} {at}\n".encode()
        with self._lock:
            try:
                fd = os.open(self.path, OPEN_FLAGS, 0o640)
                try:
                    os.write(fd, line)
                    os.fsync(fd)
                finally:
                    os.close(fd)
            except OSError as exc:
                self.failures += 1
                log.error("audit anchor %s: cannot write head %d: %s", self.path, seq, exc)
        if self._syslog:
            # a socket that went away is no error: the file is the anchor that counts
            with contextlib.suppress(OSError):
                syslog.syslog(syslog.LOG_NOTICE, f"audit head seq={seq} hash={digest}")

    def close(self) -> None:
        """Nothing stays open between advances; kept for the store's ``close()``."""


def read_anchor(path: str | Path) -> dict[int, list[AnchorEntry]]:
    """The anchor file's entries by ``seq``; :class:`InputError` (exit 2) naming the file and
    line for a missing, unreadable or malformed file."""
    p = Path(path)
    try:
        if not p.is_file():
            what = "does not exist" if not p.exists() else "is not a regular file"
            raise InputError(f"{p}: the anchor file {what}")
        if p.stat().st_size > MAX_ANCHOR_BYTES:
            raise InputError(f"{p}: the anchor file is larger than {MAX_ANCHOR_BYTES} bytes")
        with p.open("rb") as f:
            data = f.read(MAX_ANCHOR_BYTES + 1)
    except OSError as exc:
        raise InputError(f"{p}: cannot read the anchor file: {exc.strerror or exc}") from None
    entries: dict[int, list[AnchorEntry]] = {}
    lines = data.split(b"\n")
    if lines and lines[-1] == b"":
        lines.pop()
    elif lines:
        raise InputError(f"{p}:{len(lines)}: the last line is cut short (no newline)")
    for n, raw in enumerate(lines, start=1):
        try:
            text = raw.decode("ascii")
        except UnicodeDecodeError:
            raise InputError(f"{p}:{n}: not an anchor line (non-ASCII bytes)") from None
        m = _LINE.match(text)
        if m is None:
            raise InputError(f"{p}:{n}: not an anchor line (expected: SEQ SHA256 TIME)")
        e = AnchorEntry(seq=int(m.group(1)), hash=m.group(2), at=m.group(3), line=n)
        entries.setdefault(e.seq, []).append(e)
    return entries


def check_record(
    anchor: Mapping[int, list[AnchorEntry]], path: str | Path, seq: int, digest: str
) -> None:
    """Raise :class:`AuditChainError` when the anchor holds ``seq`` with another hash."""
    for e in anchor.get(seq, ()):
        if e.hash != digest:
            raise AuditChainError(
                f"audit record {seq} is not the one anchored in {path}:{e.line} at {e.at} "
                f"(anchored hash {e.hash[:16]}..., the database has {digest[:16]}...): "
                "records from here on were deleted and written again",
                record_id=seq,
            )


def check_head(
    anchor: Mapping[int, list[AnchorEntry]], path: str | Path, count: int, head_seq: int
) -> None:
    """Raise :class:`AuditChainError` when the anchor names a record beyond the chain's end."""
    if not anchor:
        return
    last = max(anchor)
    if last > count:
        e = anchor[last][-1]
        raise AuditChainError(
            f"the audit trail was truncated: {path}:{e.line} anchors record {last} "
            f"(at {e.at}), but the database has {count} records and its audit_head says "
            f"{head_seq}: records {count + 1}..{last} were deleted",
            record_id=count + 1,
        )
