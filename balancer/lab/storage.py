"""The lab's network storage: one userspace iSCSI target (``tgtd`` from Debian's ``tgt``) on
loopback, serving every Linux guest's writable disk to every lab host.

Why iSCSI with tgt rather than NFS with nfs-ganesha: QEMU's NFS client (libnfs) speaks
NFSv3 and finds the server's ports through the portmapper on port 111, i.e. a machine-wide
``rpcbind`` the lab would have to run; QEMU's iSCSI client (libiscsi) connects straight to a
portal ``address:port`` of the lab's own, and tgtd needs no kernel module either. Guests
reach their disk as ``iscsi://127.0.0.1:PORT/IQN/1`` from whichever host runs them, so the
disk is really shared: libvirt treats network disks as shared storage and migrates them
without copying.

Each guest disk is its own target (tid = the guest's number) with LUN 1 backed by a raw file
``STATE/storage/NAME.raw``. tgtd's command line names the state dir (its pid file), so
``lab down`` stops it with the lab's other processes.
"""

from __future__ import annotations

import contextlib
import shutil
import subprocess
import time
from pathlib import Path

from balancer.errors import LabError
from balancer.lab.config import DiskSource

ISCSI_PORT_BASE = 13260
CONTROL_PORT_BASE = 7900
IQN_PREFIX = "iqn.2026-12.org.balancer-lab"
TGTD_RUN_DIR = Path("/var/run/tgtd")


def missing_iscsi_prerequisites() -> list[str]:
    missing = []
    for tool in ("tgtd", "tgtadm"):
        if shutil.which(tool, path="/usr/sbin:/sbin:/usr/bin:/bin") is None:
            missing.append(f"{tool} (apt-get install tgt)")
    if not any(Path(p).exists() for p in _QEMU_ISCSI):
        missing.append("QEMU's iSCSI client (apt-get install qemu-block-extra)")
    return missing


_QEMU_ISCSI = (
    "/usr/lib/x86_64-linux-gnu/qemu/block-iscsi.so",
    "/usr/lib/qemu/block-iscsi.so",
)


def iscsi_port(slot: int) -> int:
    return ISCSI_PORT_BASE + slot


def control_port(slot: int) -> int:
    return CONTROL_PORT_BASE + slot


def iqn(slot: int, name: str) -> str:
    return f"{IQN_PREFIX}:s{slot}.{name}"


class IscsiServer:
    """The lab's tgtd (start on first use, stopped by ``lab down``)."""

    def __init__(self, state_dir: Path, slot: int) -> None:
        self.dir = state_dir / "storage"
        self.slot = slot
        self.port = iscsi_port(slot)
        self.control = control_port(slot)

    def _adm(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        cmd = ["tgtadm", "-C", str(self.control), "--lld", "iscsi", *args]
        res = subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=30)
        if check and res.returncode != 0:
            raise LabError(f"{' '.join(cmd)}: {res.stderr.strip() or res.stdout.strip()}")
        return res

    def running(self) -> bool:
        return self._adm("--mode", "sys", "--op", "show", check=False).returncode == 0

    def start(self, timeout_s: float = 30.0) -> None:
        missing = missing_iscsi_prerequisites()
        if missing:
            raise LabError("cannot serve the lab's iSCSI disks, missing: " + "; ".join(missing))
        if self.running():
            return
        self.dir.mkdir(parents=True, exist_ok=True)
        with open(self.dir / "tgtd.log", "ab") as log:
            proc = subprocess.Popen(
                [
                    "tgtd",
                    "-f",
                    "-C",
                    str(self.control),
                    "-p",
                    str(self.dir / "tgtd.pid"),
                    "--iscsi",
                    f"portal=127.0.0.1:{self.port}",
                ],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        deadline = time.monotonic() + timeout_s
        while not self.running():
            if proc.poll() is not None or time.monotonic() > deadline:
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                tail = (self.dir / "tgtd.log").read_text(errors="replace")[-400:]
                raise LabError(f"the lab's iSCSI target did not start: {tail.strip()}")
            time.sleep(0.05)

    def add_disk(self, tid: int, name: str, size_mib: int) -> DiskSource:
        """A new raw disk of ``size_mib`` served as target ``tid``, LUN 1."""
        self.start()
        path = self.dir / f"{name}.raw"
        with open(path, "wb") as f:
            f.truncate(size_mib * 1024 * 1024)
        target = iqn(self.slot, name)
        self._adm("--mode", "target", "--op", "new", "--tid", str(tid), "-T", target)
        self._adm(
            "--mode", "logicalunit", "--op", "new", "--tid", str(tid), "--lun", "1", "-b", str(path)
        )
        self._adm("--mode", "target", "--op", "bind", "--tid", str(tid), "-I", "127.0.0.1")
        return DiskSource(kind="iscsi", path=f"{target}/1", host="127.0.0.1", port=self.port)

    def remove_disk(self, tid: int, name: str) -> None:
        """Stop serving the guest's disk and delete it."""
        if self.running():
            self._adm(
                "--mode", "target", "--op", "delete", "--force", "--tid", str(tid), check=False
            )
        (self.dir / f"{name}.raw").unlink(missing_ok=True)

    def read(self, disk: DiskSource) -> bytes:
        """The disk's content as the storage server serves it (through QEMU's iSCSI client,
        the same path the guests use)."""
        return read_image(disk.url, self.dir / f"read-{time.monotonic_ns()}.raw", "-f", "raw")

    def cleanup_run_files(self) -> None:
        """tgtd's control socket lives in /var/run/tgtd; remove the lab's (after tgtd died)."""
        for suffix in ("", ".lock"):
            (TGTD_RUN_DIR / f"socket.{self.control}{suffix}").unlink(missing_ok=True)


def read_image(source: str, scratch: Path, *options: str) -> bytes:
    """The raw content of a disk image (a file of any format, or a QEMU URL), converted
    through ``scratch`` with ``qemu-img convert``."""
    try:
        res = subprocess.run(
            ["qemu-img", "convert", *options, "-O", "raw", source, str(scratch)],
            check=False,
            capture_output=True,
            text=True,
            timeout=300,
        )
        if res.returncode != 0:
            raise LabError(f"cannot read {source}: {res.stderr.strip()}")
        return scratch.read_bytes()
    finally:
        scratch.unlink(missing_ok=True)
