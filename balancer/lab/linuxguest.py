"""A real Linux guest for the lab, built at ``lab up`` from Debian packages only.

The kernel is the machine's ``linux-image-cloud-amd64`` (or ``linux-image-amd64``) under
``/boot``; the initramfs is made here: ``busybox-static``, the virtio modules of that kernel
(from ``/lib/modules``, loaded with ``insmod`` in dependency order) and an init script that

* brings up ``eth0`` with the address and netmask from the kernel command line
  (``lab.ip=10.213.0.11/24``), its MAC being the one in the domain XML;
* runs a TCP echo service on ``lab.echo`` (``busybox nc -ll -e cat``: every byte sent comes
  back, one process per connection) and a status service on ``lab.status`` that answers one
  line ``UPTIME SEQ`` (the guest's ``/proc/uptime`` and the number of records written);
* with ``lab.writer=1``, writes one numbered, checksummed 512-byte record per sector of its
  data disk ``/dev/vda``, sector ``n`` holding record ``n`` (direct I/O, a few ms apart), until
  the disk is full.

:func:`verify_records` reads such a disk back and checks every record exactly once and in
order: a lost write shows as a hole followed by later records, a torn or stale one as a bad
checksum or a sequence number out of place.
"""

from __future__ import annotations

import gzip
import io
import os
import re
import stat
from dataclasses import dataclass
from pathlib import Path

from balancer.errors import LabError

#: the modules the guest needs for its NIC and disk (their dependencies are added)
GUEST_MODULES = ("virtio_pci", "virtio_net", "virtio_blk")
RECORD_SIZE = 512
RECORD_MAGIC = b"LABREC"
ECHO_PORT = 7
STATUS_PORT = 8
#: seconds the guest waits for its devices to appear after insmod
_DEVICE_WAIT = 30

INIT_SCRIPT = r"""#!/bin/busybox sh
/bin/busybox mkdir -p /proc /sys /dev /run /tmp /sbin /usr/bin /usr/sbin
/bin/busybox --install -s
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
mount -t tmpfs run /run
say() { echo "lab-guest: $*" > /dev/kmsg; }
for m in $(cat /etc/modules.order); do insmod "/lib/modules/$m" || say "insmod $m failed"; done
ip= echo=7 status=8 writer=0
for arg in $(cat /proc/cmdline); do
  case "$arg" in
    lab.ip=*) ip="${arg#lab.ip=}" ;;
    lab.echo=*) echo="${arg#lab.echo=}" ;;
    lab.status=*) status="${arg#lab.status=}" ;;
    lab.writer=*) writer="${arg#lab.writer=}" ;;
  esac
done
n=0
while [ ! -e /sys/class/net/eth0 ] && [ $n -lt @WAIT@00 ]; do usleep 10000; n=$((n+1)); done
ip link set lo up
[ -n "$ip" ] && ip addr add "$ip" dev eth0
ip link set eth0 up
echo 0 > /run/seq
# the writer rewrites /run/seq in place: read until it is not caught half-written
cat > /bin/lab-status <<'STATUS'
#!/bin/sh
read up _ < /proc/uptime
while :; do read s < /run/seq; [ -n "$s" ] && break; done
echo "$up $s"
STATUS
chmod +x /bin/lab-status
nc -ll -p "$echo" -e cat &
nc -ll -p "$status" -e /bin/lab-status &
say "network up: $ip echo $echo status $status"
if [ "$writer" = 1 ]; then
  n=0
  while [ ! -b /dev/vda ] && [ $n -lt @WAIT@00 ]; do usleep 10000; n=$((n+1)); done
  sectors=$(( $(cat /sys/block/vda/size) ))
  read boot < /proc/sys/kernel/random/boot_id
  boot=${boot%%-*}
  i=0
  say "writer on /dev/vda: $sectors records, boot $boot"
  while [ $i -lt $sectors ]; do
    read up _ < /proc/uptime
    cs=${up%.*}${up#*.}
    sum=$(( (i * 2654435761 + 0x$boot + cs * 40503) & 0xffffffff ))
    printf 'LABREC %010d %s %012d %08x\n' $i $boot $cs $sum | \
      dd of=/dev/vda bs=512 seek=$i conv=sync,notrunc oflag=direct 2>/dev/null || \
      { say "write $i failed"; usleep 100000; continue; }
    i=$((i+1))
    echo $i > /run/seq
    usleep 2000
  done
  say "writer: disk full after $i records"
fi
while :; do sleep 3600; done
"""


@dataclass(frozen=True, slots=True, kw_only=True)
class Kernel:
    version: str
    image: Path
    modules: Path


def find_kernel(boot: Path = Path("/boot"), modules_root: Path = Path("/lib/modules")) -> Kernel:
    """The installed Debian kernel to boot the guests with (a ``cloud`` flavour first)."""
    found = []
    for image in sorted(boot.glob("vmlinuz-*")):
        version = image.name.removeprefix("vmlinuz-")
        mods = modules_root / version
        if (mods / "modules.dep").exists() and os.access(image, os.R_OK):
            found.append(Kernel(version=version, image=image, modules=mods))
    if not found:
        raise LabError(
            "no kernel for the Linux lab guests: apt-get install linux-image-cloud-amd64 "
            f"(looked for {boot}/vmlinuz-* with {modules_root}/VERSION/modules.dep)"
        )
    found.sort(key=lambda k: ("cloud" not in k.version, [-int(p) for p in _numbers(k.version)]))
    return found[0]


def _numbers(version: str) -> list[str]:
    return re.findall(r"\d+", version)


def module_order(modules_dep: str, wanted: tuple[str, ...] = GUEST_MODULES) -> list[str]:
    """Paths (relative to /lib/modules/VERSION) of ``wanted`` and their dependencies, each
    after the modules it needs. Modules built into the kernel are not in modules.dep and
    are left out (nothing to load)."""
    deps: dict[str, list[str]] = {}
    by_name: dict[str, str] = {}
    for line in modules_dep.splitlines():
        if ":" not in line:
            continue
        path, rest = line.split(":", 1)
        deps[path] = rest.split()
        name = Path(path).name.split(".ko")[0].replace("-", "_")
        by_name[name] = path
    order: list[str] = []

    def visit(path: str) -> None:
        if path in order:
            return
        # modules.dep lists the whole closure, the deepest last: load those first
        for dep in reversed(deps.get(path, [])):
            visit(dep)
        order.append(path)

    for name in wanted:
        if name in by_name:
            visit(by_name[name])
    return order


class _Cpio:
    """A ``newc`` cpio archive written in memory (what the kernel unpacks as initramfs)."""

    def __init__(self) -> None:
        self.buf = io.BytesIO()
        self.ino = 1

    def _entry(
        self,
        name: str,
        mode: int,
        data: bytes = b"",
        nlink: int = 1,
        rdev: tuple[int, int] = (0, 0),
    ) -> None:
        fields = [self.ino, mode, 0, 0, nlink, 0, len(data), 0, 0, *rdev, len(name) + 1, 0]
        self.ino += 1
        header = b"070701" + b"".join(b"%08X" % f for f in fields)
        self.buf.write(header + name.encode() + b"\0")
        self.buf.write(b"\0" * (-self.buf.tell() % 4))
        self.buf.write(data)
        self.buf.write(b"\0" * (-self.buf.tell() % 4))

    def dir(self, name: str) -> None:
        self._entry(name, stat.S_IFDIR | 0o755, nlink=2)

    def file(self, name: str, data: bytes, mode: int = 0o644) -> None:
        self._entry(name, stat.S_IFREG | mode, data)

    def char_device(self, name: str, major: int, minor: int) -> None:
        self._entry(name, stat.S_IFCHR | 0o600, rdev=(major, minor))

    def finish(self) -> bytes:
        self._entry("TRAILER!!!", 0)
        self.buf.write(b"\0" * (-self.buf.tell() % 512))
        return self.buf.getvalue()


def build_initramfs(kernel: Kernel, busybox: Path = Path("/bin/busybox")) -> bytes:
    """The guests' initramfs (a gzip'd newc cpio) for ``kernel``."""
    if not busybox.exists():
        raise LabError("no busybox for the Linux lab guests: apt-get install busybox-static")
    data = busybox.read_bytes()
    if b"GLIBC_" in data[:4096] or b"/lib64/ld-linux" in data[:4096]:
        raise LabError(f"{busybox} is not statically linked: apt-get install busybox-static")
    order = module_order((kernel.modules / "modules.dep").read_text())
    archive = _Cpio()
    for d in ("bin", "dev", "etc", "lib", "lib/modules", "proc", "sys", "run", "tmp"):
        archive.dir(d)
    archive.char_device("dev/console", 5, 1)  # the kernel opens it before /init runs
    archive.file("bin/busybox", data, 0o755)
    archive.file("bin/sh", data, 0o755)
    names = []
    for rel in order:
        src = kernel.modules / rel
        blob = src.read_bytes()
        if rel.endswith(".xz") or rel.endswith(".zst"):
            raise LabError(f"compressed kernel module {src}: busybox insmod cannot load it")
        if rel.endswith(".gz"):
            blob = gzip.decompress(blob)
        name = Path(rel).name.removesuffix(".gz")
        archive.file(f"lib/modules/{name}", blob)
        names.append(name)
    archive.file("etc/modules.order", ("\n".join(names) + "\n").encode())
    archive.file("init", INIT_SCRIPT.replace("@WAIT@", str(_DEVICE_WAIT)).encode(), 0o755)
    return gzip.compress(archive.finish(), compresslevel=1)


def kernel_cmdline(*, address: str, prefix: int, writer: bool) -> str:
    return (
        "console=ttyS0 quiet panic=-1 rdinit=/init "
        f"lab.ip={address}/{prefix} lab.echo={ECHO_PORT} lab.status={STATUS_PORT} "
        f"lab.writer={1 if writer else 0}"
    )


# -- the records on the data disk -----------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class RecordCheck:
    """What :func:`verify_records` found: ``count`` records 0..count-1, all valid, in order."""

    count: int
    boot: str
    first_centis: int
    last_centis: int


def record_checksum(seq: int, boot: str, centis: int) -> int:
    return (seq * 2654435761 + int(boot, 16) + centis * 40503) & 0xFFFFFFFF


def parse_record(sector: bytes) -> tuple[int, str, int] | None:
    """(seq, boot, centiseconds of uptime) of a valid record; None for an empty sector;
    ValueError for anything else (torn, stale, corrupt)."""
    if not sector.strip(b"\0"):
        return None
    line = sector.split(b"\n", 1)[0]
    parts = line.split()
    if len(parts) != 5 or parts[0] != RECORD_MAGIC or sector[len(line) + 1 :].strip(b"\0"):
        raise ValueError(f"not a lab record: {line[:60]!r}")
    seq, boot, centis, checksum = int(parts[1]), parts[2].decode(), int(parts[3]), parts[4]
    if int(checksum, 16) != record_checksum(seq, boot, centis):
        raise ValueError(f"record {seq}: bad checksum {checksum.decode()}")
    return seq, boot, centis


def verify_records(disk: bytes) -> RecordCheck:
    """Check a data disk written by the guest: records 0..n-1 in sectors 0..n-1, one boot,
    uptime never going back, nothing after the first empty sector. LabError names the first
    sector that is wrong."""
    count = 0
    boot = ""
    first = last = 0
    end_seen_at: int | None = None
    for index in range(len(disk) // RECORD_SIZE):
        sector = disk[index * RECORD_SIZE : (index + 1) * RECORD_SIZE]
        try:
            rec = parse_record(sector)
        except ValueError as exc:
            raise LabError(f"sector {index}: {exc}") from exc
        if rec is None:
            if end_seen_at is None:
                end_seen_at = index
            continue
        seq, rboot, centis = rec
        if end_seen_at is not None:
            raise LabError(
                f"sector {index}: record {seq} after the empty sector {end_seen_at} (lost write)"
            )
        if seq != index:
            raise LabError(f"sector {index}: holds record {seq} (out of order or duplicated)")
        if count == 0:
            boot, first = rboot, centis
        elif rboot != boot:
            raise LabError(f"sector {index}: record of boot {rboot}, the disk's is {boot}")
        elif centis < last:
            raise LabError(f"sector {index}: uptime went back ({centis} < {last})")
        last = centis
        count += 1
    return RecordCheck(count=count, boot=boot, first_centis=first, last_centis=last)
