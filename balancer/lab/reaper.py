"""A tiny subreaper that runs one lab libvirtd: ``python -m balancer.lab.reaper CMD ARGS...``.

libvirtd double-forks its QEMU processes. Where PID 1 is not a real init (containers, CI
sandboxes), those orphans would never be reaped and would stay as zombies after
``lab down``. This process marks itself a *child subreaper*, runs CMD, forwards SIGTERM and
SIGINT to it, reaps every orphan that lands on it, and exits once CMD and all of its
descendants are gone (so it outlives libvirtd while the guests it started still run).
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import sys

PR_SET_CHILD_SUBREAPER = 36


def main(argv: list[str]) -> int:
    if not argv:
        print("usage: python -m balancer.lab.reaper CMD [ARGS...]", file=sys.stderr)
        return 2
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
        print("reaper: prctl(PR_SET_CHILD_SUBREAPER) failed", file=sys.stderr)
    child = os.fork()
    if child == 0:  # pragma: no cover - replaced by exec
        try:
            os.execvp(argv[0], argv)
        finally:
            os._exit(127)

    def forward(signum: int, _frame: object) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(child, signum)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    status = 0
    while True:
        try:
            pid, code = os.wait()
        except ChildProcessError:
            return status
        except InterruptedError:  # pragma: no cover - PEP 475 retries for us
            continue
        if pid == child:
            status = os.waitstatus_to_exitcode(code)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
