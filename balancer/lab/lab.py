"""A real multi-host libvirt/KVM cluster on one Linux machine.

Each lab host is one ``libvirtd`` in its own mount namespace: ``/etc/libvirt``, ``/run/libvirt``,
``/var/lib/libvirt``, ``/var/cache/libvirt`` and ``/var/log/libvirt`` are bind mounts of the
host's own directories under the lab state dir, so every host has its own config, sockets,
domain state, logs, QEMU capabilities cache and ``host_uuid``. Hosts listen on their own
loopback TCP port (no auth, 127.0.0.1 only) and use their own migration port range.

Guests are tiny VMs booted from a generated boot sector on a shared read-only disk
(:mod:`balancer.lab.bootsector`). The last host's CPU is made to lack one feature
(:attr:`Lab.lacking_feature`) so CPU compatibility can be tested.

The mounts exist only inside the hosts' namespaces and vanish with their processes;
:meth:`Lab.down` kills every process that refers to the state dir and removes the dir.
"""

from __future__ import annotations

import contextlib
import functools
import ipaddress
import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from balancer.errors import LabError
from balancer.lab.bootsector import COUNTER_GPA, GuestKind, boot_sector, parse_xp_word
from balancer.lab.config import (
    BRIDGE_PREFIX,
    DMIDECODE,
    MAX_HOSTS,
    MAX_SLOTS,
    NET_PREFIX_LEN,
    SSH_PORT_OFFSET,
    TLS_PORT_OFFSET,
    DiskSource,
    HostPlan,
    NetPlan,
    dmidecode_script,
    domain_xml,
    guest_address,
    guest_mac,
    host_name,
    images_pool_xml,
    libvirtd_conf,
    linux_domain_xml,
    net_plan,
    port_plan,
    qemu_conf,
    required_cpu_xml,
    strip_cpu_feature,
)
from balancer.lab.linuxguest import (
    ECHO_PORT,
    STATUS_PORT,
    RecordCheck,
    build_initramfs,
    find_kernel,
    kernel_cmdline,
    verify_records,
)
from balancer.lab.pki import make_lab_pki, missing_pki_prerequisites
from balancer.lab.storage import (
    IscsiServer,
    control_port,
    iscsi_port,
    missing_iscsi_prerequisites,
    read_image,
)

if TYPE_CHECKING:
    import libvirt

    from balancer.libvirt import LibvirtBackend

DEFAULT_STATE_DIR = Path("/var/lib/balancer-lab")
STATE_DIR_ENV = "BALANCER_LAB_DIR"
ACCEL_ENV = "BALANCER_LAB_ACCEL"
STATE_FILE = "lab.json"
_log = logging.getLogger(__name__)
DISK_SIZE = 1024 * 1024  # SeaBIOS does not boot from a disk of one sector
#: (directory inside the host's namespace, sub-directory of the host dir bound onto it)
BIND_MOUNTS: tuple[tuple[str, str], ...] = (
    ("/etc/libvirt", "etc"),
    ("/run/libvirt", "run"),
    ("/var/lib/libvirt", "lib"),
    ("/var/cache/libvirt", "cache"),
    ("/var/log/libvirt", "log"),
)
DEFAULT_LACKING_FEATURE = "clwb"
START_TIMEOUT_S = 90.0
STOP_TIMEOUT_S = 15.0

T = TypeVar("T")
_children: dict[int, subprocess.Popen[bytes]] = {}
_children_lock = threading.Lock()


def _daemon_cpu() -> int:
    """The CPU every lab libvirtd runs on (the lowest this process may use)."""
    return min(os.sched_getaffinity(0))


def default_state_dir() -> Path:
    return Path(os.environ.get(STATE_DIR_ENV) or DEFAULT_STATE_DIR)


# -- prerequisites ---------------------------------------------------------------------------


def missing_prerequisites() -> list[str]:
    """What this machine lacks to run the lab, each item saying how to get it (empty: ready)."""
    missing: list[str] = []
    if os.geteuid() != 0:
        missing.append(f"root (running as uid {os.geteuid()}; the lab mounts and runs libvirtd)")
    for tool, package in (
        ("libvirtd", "libvirt-daemon-system"),
        ("virsh", "libvirt-clients"),
        ("qemu-system-x86_64", "qemu-system-x86"),
        ("qemu-img", "qemu-utils"),
        ("unshare", "util-linux"),
        ("taskset", "util-linux"),
        ("mount", "mount"),
        ("dmidecode", "dmidecode"),
    ):
        if shutil.which(tool, path=os.environ.get("PATH", "") + ":/usr/sbin:/sbin") is None:
            missing.append(f"{tool} (apt-get install {package})")
    try:
        import libvirt  # noqa: F401
    except ImportError:
        missing.append("the libvirt Python module (pip install libvirt-python)")
    return missing


def check_prerequisites() -> None:
    missing = missing_prerequisites()
    if missing:
        raise LabError("cannot run the libvirt lab, missing: " + "; ".join(missing))


def missing_linux_prerequisites() -> list[str]:
    """What the machine lacks to run real Linux guests on the lab bridge (empty: ready)."""
    missing: list[str] = []
    try:
        find_kernel()
    except LabError:
        missing.append("a kernel under /boot (apt-get install linux-image-cloud-amd64)")
    if not Path("/bin/busybox").exists() or b"GLIBC_" in Path("/bin/busybox").read_bytes()[:4096]:
        missing.append("a static busybox (apt-get install busybox-static)")
    if shutil.which("ip", path=os.environ.get("PATH", "") + ":/usr/sbin:/sbin") is None:
        missing.append("ip (apt-get install iproute2)")
    if not Path("/dev/net/tun").exists():
        missing.append("/dev/net/tun (the tun driver, for the guests' tap devices)")
    return missing + missing_iscsi_prerequisites()


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    ip = shutil.which("ip", path=os.environ.get("PATH", "") + ":/usr/sbin:/sbin") or "ip"
    res = subprocess.run([ip, *args], check=False, capture_output=True, text=True, timeout=30)
    if check and res.returncode != 0:
        raise LabError(f"ip {' '.join(args)}: {res.stderr.strip() or res.returncode}")
    return res


#: a lab bridge's alias: this prefix and the lab's state dir. A later lab tells its own leftovers
#: (a bridge of a lab killed before its down, whose state dir is gone) from a network someone
#: else made, which it never touches.
BRIDGE_ALIAS_PREFIX = "balancer-lab "


def _subnet_routed(subnet: str) -> str | None:
    """The route line that overlaps ``subnet`` here (None: the subnet is free)."""
    net = ipaddress.ip_network(subnet)
    for line in _ip("-4", "route", "show").stdout.splitlines():
        dest = line.split()[0] if line.split() else "default"
        if dest == "default":
            continue
        with contextlib.suppress(ValueError):
            if ipaddress.ip_network(dest, strict=False).overlaps(net):
                return line.strip()
    return None


def _link_exists(name: str) -> bool:
    return _ip("link", "show", name, check=False).returncode == 0


def _slot_network_free(slot: int) -> bool:
    """Neither the slot's bridge nor its subnet exist here."""
    plan = net_plan(slot)
    return not _link_exists(plan.bridge) and _subnet_routed(plan.subnet) is None


def _lab_bridges() -> list[tuple[str, str]]:
    """(name, alias) of every bridge here named like a lab bridge."""
    res = _ip("-j", "link", "show", "type", "bridge", check=False)
    if res.returncode != 0:
        return []
    try:
        links = json.loads(res.stdout or "[]")
    except ValueError:
        return []
    return [
        (str(link.get("ifname", "")), str(link.get("ifalias", "")))
        for link in links
        if str(link.get("ifname", "")).startswith(BRIDGE_PREFIX)
    ]


def _reclaim_stale_bridges() -> list[str]:
    """Remove the bridges of labs whose state dir is gone (killed before their down); return
    their names. A bridge without the lab's alias, or whose lab still exists, is left alone."""
    removed = []
    for name, alias in _lab_bridges():
        if not alias.startswith(BRIDGE_ALIAS_PREFIX):
            continue
        owner = Path(alias[len(BRIDGE_ALIAS_PREFIX) :])
        if (owner / STATE_FILE).exists():
            continue
        _remove_bridge(name)
        _log.warning("removed the bridge %s of a lab that is gone (%s)", name, owner)
        removed.append(name)
    return removed


def _make_bridge(plan: NetPlan, owner: Path) -> None:
    """Create the lab's bridge with the machine's address on it, named after the lab that owns
    it; refuse when the subnet is already routed here (never touch a network the lab did not
    make)."""
    used = _subnet_routed(plan.subnet)
    if used is not None:
        raise LabError(f"the lab subnet {plan.subnet} is already in use here: {used}")
    if _link_exists(plan.bridge):
        raise LabError(f"network device {plan.bridge} exists already (a lab not taken down?)")
    bridge = plan.bridge
    _ip("link", "add", bridge, "type", "bridge", "stp_state", "0", "forward_delay", "0")
    try:
        _ip("link", "set", "dev", bridge, "alias", f"{BRIDGE_ALIAS_PREFIX}{owner}")
        _ip("addr", "add", f"{plan.host_address}/{NET_PREFIX_LEN}", "dev", bridge)
        _ip("link", "set", bridge, "up")
    except BaseException:
        _remove_bridge(bridge)
        raise


def _remove_bridge(bridge: str) -> None:
    if _link_exists(bridge):
        _ip("link", "del", bridge, check=False)


def _kvm_usable() -> bool:
    try:
        fd = os.open("/dev/kvm", os.O_RDWR)
    except OSError:
        return False
    os.close(fd)
    return True


def choose_accel(requested: str = "auto") -> str:
    """The libvirt domain type for the guests: ``kvm`` or ``qemu`` (plain emulation).

    ``auto`` picks KVM when /dev/kvm opens, except under a PVM nested hypervisor
    (``/sys/module/kvm_pvm``), where the real-mode boot code is emulated one instruction at a
    time and TCG is orders of magnitude faster. ``BALANCER_LAB_ACCEL`` overrides."""
    requested = os.environ.get(ACCEL_ENV) or requested
    if requested in ("kvm", "qemu"):
        return requested
    if requested == "tcg":
        return "qemu"
    if requested != "auto":
        raise LabError(f"unknown accelerator {requested!r}: use auto, kvm or tcg")
    if not _kvm_usable() or Path("/sys/module/kvm_pvm").exists():
        return "qemu"
    return "kvm"


# -- records ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class LabVM:
    name: str
    kind: GuestKind
    home: str
    memory_mib: int
    cpu_features: tuple[str, ...] = ()
    extra_disks: tuple[str, ...] = ()
    #: "bootsector" (the tiny default guests) or "linux" (a real Linux guest on the bridge)
    os: str = "bootsector"
    number: int = 0  # the Linux guest's number in the lab (its MAC and address)
    mac: str = ""
    address: str = ""
    disk: DiskSource | None = None  # the Linux guest's writable data disk

    @property
    def echo_port(self) -> int | None:
        return ECHO_PORT if self.os == "linux" else None

    def to_json(self) -> dict[str, object]:
        doc: dict[str, object] = {"name": self.name, "os": self.os, "kind": self.kind.value}
        if self.os == "linux":
            doc |= {
                "mac": self.mac,
                "address": self.address,
                "echo_port": ECHO_PORT,
                "status_port": STATUS_PORT,
                "disk": asdict(self.disk) if self.disk else None,
            }
        return doc


@dataclass(frozen=True, slots=True, kw_only=True)
class LabHostStatus:
    name: str
    uri: str
    vms: tuple[str, ...]
    running: bool


@dataclass(frozen=True, slots=True, kw_only=True)
class LabStatus:
    state_dir: str
    hosts: tuple[LabHostStatus, ...]
    guests: tuple[LabVM, ...] = ()
    bridge: str | None = None

    def to_json(self) -> dict[str, object]:
        doc: dict[str, object] = {
            "hosts": [{"name": h.name, "uri": h.uri, "vms": list(h.vms)} for h in self.hosts],
            "guests": [
                {**g.to_json(), "on": [h.name for h in self.hosts if g.name in h.vms]}
                for g in self.guests
            ],
        }
        if self.bridge:
            doc["bridge"] = self.bridge
        return doc


@dataclass(slots=True, kw_only=True)
class _State:
    slot: int
    domain_type: str
    lacking_feature: str
    poor_host: str | None
    hosts: list[HostPlan]
    vms: list[LabVM] = field(default_factory=list)
    #: the lab bridge exists (made on the first Linux guest, removed by down)
    bridge: str | None = None
    linux_serial: int = 0  # Linux guests ever defined (each gets a new number)
    kernel: str | None = None  # the Linux guests' kernel (made with their initramfs)
    #: the hosts listen for qemu+tls:// (the lab made its certificates with certtool)
    tls: bool = False
    #: the hosts whose QEMU has migration TLS certificates
    migration_tls_hosts: list[str] = field(default_factory=list)

    def to_doc(self) -> dict[str, Any]:
        return {
            "slot": self.slot,
            "domain_type": self.domain_type,
            "lacking_feature": self.lacking_feature,
            "poor_host": self.poor_host,
            "bridge": self.bridge,
            "linux_serial": self.linux_serial,
            "kernel": self.kernel,
            "tls": self.tls,
            "migration_tls_hosts": list(self.migration_tls_hosts),
            "hosts": [asdict(h) for h in self.hosts],
            "vms": [
                {
                    **asdict(v),
                    "kind": v.kind.value,
                    "cpu_features": list(v.cpu_features),
                    "extra_disks": list(v.extra_disks),
                    "disk": asdict(v.disk) if v.disk else None,
                }
                for v in self.vms
            ],
        }

    @classmethod
    def from_doc(cls, doc: dict[str, Any]) -> _State:
        return cls(
            slot=int(doc["slot"]),
            domain_type=str(doc["domain_type"]),
            lacking_feature=str(doc["lacking_feature"]),
            poor_host=doc.get("poor_host"),
            bridge=doc.get("bridge"),
            linux_serial=int(doc.get("linux_serial", 0)),
            kernel=doc.get("kernel"),
            tls=bool(doc.get("tls", False)),
            migration_tls_hosts=list(doc.get("migration_tls_hosts", [])),
            hosts=[HostPlan(**h) for h in doc["hosts"]],
            vms=[
                LabVM(
                    name=v["name"],
                    kind=GuestKind(v["kind"]),
                    home=v["home"],
                    memory_mib=int(v["memory_mib"]),
                    cpu_features=tuple(v.get("cpu_features", ())),
                    extra_disks=tuple(v.get("extra_disks", ())),
                    os=v.get("os", "bootsector"),
                    number=int(v.get("number", 0)),
                    mac=v.get("mac", ""),
                    address=v.get("address", ""),
                    disk=DiskSource(**v["disk"]) if v.get("disk") else None,
                )
                for v in doc["vms"]
            ],
        )


# -- helpers ---------------------------------------------------------------------------------


def _quiet_libvirt() -> None:
    import libvirt

    def _ignore(_ctx: object, _err: object) -> None:
        return None

    libvirt.registerErrorHandler(_ignore, None)


def _port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _pick_slot(n_hosts: int) -> int:
    for slot in range(MAX_SLOTS):
        ports = [p for i in range(1, n_hosts + 1) for p in port_plan(slot, i)[:2]]
        ports += [p + off for p in ports[::2] for off in (TLS_PORT_OFFSET, SSH_PORT_OFFSET)]
        ports += [iscsi_port(slot), control_port(slot)]
        if all(_port_free(p) for p in ports) and _slot_network_free(slot):
            return slot
    raise LabError("no free loopback port range for the lab (all lab slots are in use)")


def _pids_referring_to(path: Path) -> list[int]:
    """Processes whose command line mentions ``path`` (our libvirtds, reapers and QEMUs)."""
    root = str(path).rstrip("/").encode()
    me = os.getpid()
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == me:
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                cmdline = f.read()
        except OSError:
            continue
        # the path itself or something under it, not a longer name (/tmp/lab vs /tmp/lab2)
        if _mentions(cmdline, root):
            pids.append(int(entry))
    return pids


_NAME_CHARS = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789._-")


def _mentions(cmdline: bytes, root: bytes) -> bool:
    """``root`` occurs in ``cmdline`` as a whole path (followed by ``/``, a quote, a separator
    or the end), so that /tmp/lab does not match /tmp/lab2 or /tmp/lab.py."""
    start = cmdline.find(root)
    while start >= 0:
        end = start + len(root)
        if end == len(cmdline) or cmdline[end] not in _NAME_CHARS:
            return True
        start = cmdline.find(root, start + 1)
    return False


def _alive(pid: int) -> bool:
    """True while ``pid`` runs (a zombie counts as gone; our own children are reaped here)."""
    with _children_lock:
        child = _children.get(pid)
    if child is not None:
        if child.poll() is not None:
            with _children_lock:
                _children.pop(pid, None)
            return False
        return True
    try:
        with open(f"/proc/{pid}/stat") as f:
            state = f.read().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in ("Z", "X")


def _wait_gone(pids: Sequence[int], timeout_s: float) -> list[int]:
    deadline = time.monotonic() + timeout_s
    left = [p for p in pids if _alive(p)]
    while left and time.monotonic() < deadline:
        time.sleep(0.05)
        left = [p for p in left if _alive(p)]
    return left


def _signal(pids: Sequence[int], sig: signal.Signals) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)


def _bounded(fn: Callable[[], T], timeout_s: float) -> T:
    """``fn()`` in a daemon thread; TimeoutError when it takes longer (a hung libvirtd)."""
    fut: Future[T] = Future()

    def run() -> None:
        try:
            fut.set_result(fn())
        except BaseException as exc:  # handed to the caller
            fut.set_exception(exc)

    threading.Thread(target=run, name="lab-call", daemon=True).start()
    return fut.result(timeout=timeout_s)


def _open_bounded(uri: str, timeout_s: float) -> libvirt.virConnect:
    import libvirt

    return _bounded(lambda: libvirt.open(uri), timeout_s)


def _tail(path: Path, lines: int = 6) -> str:
    try:
        text = path.read_text(errors="replace").strip().splitlines()
    except OSError:
        return ""
    return " | ".join(text[-lines:])


# -- the lab ---------------------------------------------------------------------------------


class Lab:
    """A running (or stopped) lab, found by its state dir. Use :meth:`up` to create one."""

    def __init__(self, state_dir: Path | str | None = None) -> None:
        self.state_dir = Path(state_dir) if state_dir is not None else default_state_dir()
        self._state: _State | None = None

    # -- lifecycle ---------------------------------------------------------------------------
    @classmethod
    def up(
        cls,
        hosts: int = 3,
        vms: int = 2,
        *,
        busy: int | None = None,
        state_dir: Path | str | None = None,
        memory_mib: int = 128,
        accel: str = "auto",
        lacking_feature: str = DEFAULT_LACKING_FEATURE,
        guest: str = "bootsector",
    ) -> Lab:
        """Start ``hosts`` lab hosts and ``vms`` guests (the first ``busy`` of them busy,
        default half rounded up), spread round-robin over the hosts.

        ``guest="linux"``: the guests are real Linux guests on the lab bridge (the busy ones
        write records to their data disk), see :meth:`define_linux_vm`."""
        check_prerequisites()
        if guest not in ("bootsector", "linux"):
            raise LabError(f"--guest must be bootsector or linux, not {guest!r}")
        if guest == "linux":
            missing = missing_linux_prerequisites()
            if missing:
                raise LabError("cannot run Linux lab guests, missing: " + "; ".join(missing))
        if not 1 <= hosts <= MAX_HOSTS:
            raise LabError(f"--hosts must be between 1 and {MAX_HOSTS}, not {hosts}")
        if vms < 0:
            raise LabError(f"--vms must be 0 or more, not {vms}")
        busy = (vms + 1) // 2 if busy is None else max(0, min(busy, vms))
        lab = cls(state_dir)
        root = lab.state_dir.resolve()
        lab.state_dir = root
        if (root / STATE_FILE).exists():
            raise LabError(f"a lab already exists in {root}: run 'balancer lab down' first")
        if str(root).startswith(str(Path(__file__).resolve().parents[2])):
            raise LabError(f"the lab state dir must not be inside the repository: {root}")
        _quiet_libvirt()
        domain_type = choose_accel(accel)
        root.mkdir(parents=True, exist_ok=True)
        try:
            _reclaim_stale_bridges()
            slot = _pick_slot(hosts)
            plans = []
            for i in range(1, hosts + 1):
                tcp, mig_min, mig_max = port_plan(slot, i)
                plans.append(
                    HostPlan(
                        name=host_name(i),
                        index=i,
                        tcp_port=tcp,
                        migration_port_min=mig_min,
                        migration_port_max=mig_max,
                        host_uuid=str(uuid.uuid4()),
                    )
                )
            lab._state = _State(
                slot=slot,
                domain_type=domain_type,
                lacking_feature=lacking_feature,
                poor_host=plans[-1].name if hosts >= 2 else None,
                hosts=plans,
            )
            lab._write_files()
            lab._save()
            # the first host probes QEMU once; the others reuse its capabilities cache
            lab.start_host(plans[0].name)
            lab._probe_and_share_caps()
            for p in plans[1:]:
                lab._launch(p)
            for p in plans[1:]:
                lab._wait_ready(p)
            lab._check_cpu_models()
            for p in plans:
                lab._define_pool(p)
            for i in range(1, vms + 1):
                kind = GuestKind.BUSY if i <= busy else GuestKind.IDLE
                home = plans[(i - 1) % hosts].name
                if guest == "linux":
                    lab.define_linux_vm(
                        f"linux-{i}", home, writer=kind is GuestKind.BUSY, memory_mib=memory_mib
                    )
                else:
                    lab.define_vm(f"{kind.value}-{i}", home, kind, memory_mib=memory_mib)
            for v in lab.vms:
                if v.os == "linux":
                    lab.wait_guest_ready(v.name)
        except BaseException:
            with contextlib.suppress(Exception):
                lab.down()
            raise
        return lab

    def down(self) -> None:
        """Destroy every guest, stop every lab libvirtd, kill leftovers, remove the state dir."""
        root = self.state_dir.resolve()
        if not root.exists():
            return
        state = self._load_optional()
        if state is not None:
            _quiet_libvirt()
            for plan in state.hosts:
                pid = self._daemon_pid(plan)
                if pid is not None:
                    _signal([pid], signal.SIGCONT)  # in case a test froze it
                    with contextlib.suppress(Exception):
                        _bounded(functools.partial(self._destroy_all, plan), 15.0)
            for plan in state.hosts:
                self.stop_host(plan.name, timeout_s=STOP_TIMEOUT_S)
        leftovers = _pids_referring_to(root)
        _signal(leftovers, signal.SIGKILL)
        still = _wait_gone(leftovers, 10.0)
        if still:
            raise LabError(f"lab down: processes {still} referring to {root} did not exit")
        if state is not None and state.bridge:
            _remove_bridge(state.bridge)
        if state is not None:
            IscsiServer(root, state.slot).cleanup_run_files()
        # our reaper children (if this process started them) exit with their last descendant
        with _children_lock:
            mine = list(_children)
        _wait_gone(mine, 5.0)
        shutil.rmtree(root, ignore_errors=True)
        if root.exists():
            raise LabError(f"lab down: could not remove {root}")
        self._state = None

    # -- status ------------------------------------------------------------------------------
    def exists(self) -> bool:
        return (self.state_dir / STATE_FILE).exists()

    @property
    def state(self) -> _State:
        if self._state is None:
            loaded = self._load_optional()
            if loaded is None:
                raise LabError(f"no lab in {self.state_dir}: run 'balancer lab up' first")
            self._state = loaded
        return self._state

    @property
    def hosts(self) -> list[HostPlan]:
        return list(self.state.hosts)

    @property
    def vms(self) -> list[LabVM]:
        return list(self.state.vms)

    @property
    def domain_type(self) -> str:
        return self.state.domain_type

    @property
    def lacking_feature(self) -> str:
        return self.state.lacking_feature

    @property
    def poor_host(self) -> str | None:
        """The host whose CPU lacks :attr:`lacking_feature` (None with a single host)."""
        return self.state.poor_host

    def host(self, name: str) -> HostPlan:
        for h in self.state.hosts:
            if h.name == name:
                return h
        raise LabError(f"no lab host {name!r} (hosts: {', '.join(self.host_names())})")

    def host_names(self) -> list[str]:
        return [h.name for h in self.state.hosts]

    def uri(self, host: str) -> str:
        return self.host(host).uri

    def status(self) -> LabStatus:
        rows = []
        for plan in self.state.hosts:
            running = self._daemon_pid(plan) is not None
            names: tuple[str, ...] = ()
            if running:
                try:
                    conn = self.connect(plan.name)
                    try:
                        names = tuple(
                            sorted(
                                d.name()
                                for d in conn.listAllDomains(
                                    _flag("VIR_CONNECT_LIST_DOMAINS_ACTIVE")
                                )
                            )
                        )
                    finally:
                        conn.close()
                except LabError:
                    running = False
            rows.append(LabHostStatus(name=plan.name, uri=plan.uri, vms=names, running=running))
        return LabStatus(
            state_dir=str(self.state_dir),
            hosts=tuple(rows),
            guests=tuple(self.state.vms),
            bridge=self.state.bridge,
        )

    def where(self, vm: str) -> list[str]:
        """The hosts on which ``vm`` is running now (a healthy lab answers with exactly one)."""
        found = []
        for plan in self.state.hosts:
            if self._daemon_pid(plan) is None:
                continue
            conn = self.connect(plan.name)
            try:
                with contextlib.suppress(Exception):
                    if conn.lookupByName(vm).isActive():
                        found.append(plan.name)
            finally:
                conn.close()
        return found

    # -- guests ------------------------------------------------------------------------------
    def define_vm(
        self,
        name: str,
        host: str,
        kind: GuestKind = GuestKind.IDLE,
        *,
        memory_mib: int = 128,
        cpu_features: Sequence[str] = (),
        extra_disks: Sequence[str] = (),
        start: bool = True,
    ) -> LabVM:
        """Define (persistently) and start a guest on ``host``."""
        state = self.state
        vm = LabVM(
            name=name,
            kind=kind,
            home=host,
            memory_mib=memory_mib,
            cpu_features=tuple(cpu_features),
            extra_disks=tuple(extra_disks),
        )
        xml = domain_xml(
            name=name,
            uuid=str(uuid.uuid4()),
            kind=kind,
            disk_path=str(self.state_dir / "disks" / f"{kind.value}.img"),
            memory_mib=memory_mib,
            domain_type=state.domain_type,
            cpu_features=vm.cpu_features,
            extra_disks=vm.extra_disks,
        )
        return self._define(vm, xml, start=start)

    def define_linux_vm(
        self,
        name: str,
        host: str,
        *,
        writer: bool = True,
        memory_mib: int = 128,
        disk: str | DiskSource | None = "iscsi",
        disk_mib: int = 64,
        start: bool = True,
    ) -> LabVM:
        """Define (persistently) and start a real Linux guest on ``host``: a fixed MAC and
        address on the lab bridge, the echo service on :data:`ECHO_PORT`, and (``writer``)
        records written to its data disk. ``disk``: ``"iscsi"`` (a LUN of the lab's
        iSCSI target: shared network storage), ``"local"`` (a qcow2 in the host's own
        image directory: not shared), a :class:`DiskSource` made by the caller, or None."""
        state = self.state
        self._ensure_linux()
        assert state.bridge is not None and state.kernel is not None
        state.linux_serial += 1
        number = state.linux_serial
        source: DiskSource | None
        if disk == "iscsi":
            source = self.storage().add_disk(number, name, disk_mib)
        elif disk == "local":
            rel = f"images/{name}.qcow2"
            _create_image(self._host_dir(self.host(host)) / "lib" / rel, "qcow2", disk_mib)
            source = DiskSource(kind="file", path=f"/var/lib/libvirt/{rel}", fmt="qcow2")
        elif disk is None or isinstance(disk, DiskSource):
            source = disk
        else:
            raise LabError(f"disk must be shared, local, a DiskSource or None, not {disk!r}")
        if writer and source is None:
            raise LabError(f"Linux guest {name}: a writer needs a data disk")
        address = guest_address(state.slot, number)
        vm = LabVM(
            name=name,
            kind=GuestKind.BUSY if writer else GuestKind.IDLE,
            home=host,
            memory_mib=memory_mib,
            os="linux",
            number=number,
            mac=guest_mac(state.slot, number),
            address=address,
            disk=source,
        )
        xml = linux_domain_xml(
            name=name,
            uuid=str(uuid.uuid4()),
            kernel=state.kernel,
            initrd=str(self.state_dir / "linux" / "initrd.gz"),
            cmdline=kernel_cmdline(address=address, prefix=NET_PREFIX_LEN, writer=writer),
            mac=vm.mac,
            bridge=state.bridge,
            disk=source,
            memory_mib=memory_mib,
            domain_type=state.domain_type,
        )
        return self._define(vm, xml, start=start)

    def _define(self, vm: LabVM, xml: str, *, start: bool) -> LabVM:
        conn = self.connect(vm.home)
        try:
            dom = conn.defineXML(xml)
            if start:
                dom.create()
        except Exception as exc:
            raise LabError(f"cannot start lab guest {vm.name} on {vm.home}: {exc}") from exc
        finally:
            conn.close()
        self.state.vms = [v for v in self.state.vms if v.name != vm.name] + [vm]
        self._save()
        return vm

    def vm(self, name: str) -> LabVM:
        for v in self.state.vms:
            if v.name == name:
                return v
        raise LabError(f"no lab guest {name!r}")

    def guest_status(self, vm: str, *, timeout_s: float = 5.0) -> tuple[float, int]:
        """(uptime in seconds, records written) as the Linux guest itself reports them."""
        guest = self.vm(vm)
        if guest.os != "linux":
            raise LabError(f"{vm} is not a Linux guest")
        try:
            with socket.create_connection((guest.address, STATUS_PORT), timeout=timeout_s) as s:
                s.settimeout(timeout_s)
                data = b""
                while not data.endswith(b"\n"):
                    chunk = s.recv(256)
                    if not chunk:
                        break
                    data += chunk
        except OSError as exc:
            raise LabError(f"the status service of {vm} ({guest.address}): {exc}") from exc
        try:
            up, seq = data.split()
            return float(up), int(seq)
        except ValueError as exc:
            raise LabError(f"the status service of {vm} answered {data!r}") from exc

    def wait_guest_ready(self, vm: str, timeout_s: float = 120.0) -> tuple[float, int]:
        """Wait until the Linux guest has booted and answers on its network (a writer: has
        written its first record); return its :meth:`guest_status`."""
        guest = self.vm(vm)
        deadline = time.monotonic() + timeout_s
        last: Exception | None = None
        while time.monotonic() < deadline:
            try:
                up, seq = self.guest_status(vm, timeout_s=2.0)
                if guest.kind is not GuestKind.BUSY or seq > 0:
                    return up, seq
            except LabError as exc:
                last = exc
            time.sleep(0.2)
        raise LabError(f"Linux guest {vm} not ready within {timeout_s:.0f}s: {last}")

    def storage(self) -> IscsiServer:
        """The lab's iSCSI target (started on first use)."""
        return IscsiServer(self.state_dir, self.state.slot)

    def read_disk(self, vm: str) -> bytes:
        """The guest's data disk as its storage holds it: an iSCSI disk read from the
        target, a file (raw or qcow2) from where the guest runs now."""
        guest = self.vm(vm)
        if guest.disk is not None and guest.disk.kind == "iscsi":
            return self.storage().read(guest.disk)
        path = self.disk_path(vm)
        if path.suffix != ".qcow2":
            return path.read_bytes()
        return read_image(str(path), path.with_suffix(".verify.raw"), "-U")

    def disk_path(self, vm: str) -> Path:
        """Where the machine reads the guest's data disk file (a local disk: on the host that
        runs the guest now, or ``host``)."""
        guest = self.vm(vm)
        if guest.disk is None or guest.disk.kind != "file":
            raise LabError(f"{vm} has no data disk file")
        path = Path(guest.disk.path)
        if path.is_relative_to("/var/lib/libvirt"):
            (host,) = self.where(vm) or [guest.home]
            return self._host_dir(self.host(host)) / "lib" / path.relative_to("/var/lib/libvirt")
        return path

    def verify_disk(self, vm: str, data: bytes | None = None) -> RecordCheck:
        """Check every record on the guest's data disk (:meth:`read_disk`, or ``data``)."""
        return verify_records(self.read_disk(vm) if data is None else data)

    def remove_vm(self, name: str) -> None:
        """Destroy and undefine ``name`` wherever it is."""
        for plan in self.state.hosts:
            if self._daemon_pid(plan) is None:
                continue
            conn = self.connect(plan.name)
            try:
                with contextlib.suppress(Exception):
                    dom = conn.lookupByName(name)
                    with contextlib.suppress(Exception):
                        dom.destroy()
                    dom.undefine()
            finally:
                conn.close()
        for v in self.state.vms:
            if v.name == name and v.disk is not None and v.disk.kind == "iscsi":
                self.storage().remove_disk(v.number, name)
        self.state.vms = [v for v in self.state.vms if v.name != name]
        self._save()

    def read_counter(self, vm: str, host: str | None = None) -> int:
        """The busy guest's 32-bit counter, read with the monitor command ``xp``."""
        import libvirt
        import libvirt_qemu

        hosts = [host] if host else self.where(vm)
        if len(hosts) != 1:
            raise LabError(f"guest {vm} runs on {len(hosts)} hosts ({hosts}), expected one")
        conn = self.connect(hosts[0])
        try:
            dom = conn.lookupByName(vm)
            out = libvirt_qemu.qemuMonitorCommand(
                dom,
                f"xp /1wx {COUNTER_GPA:#x}",
                libvirt_qemu.VIR_DOMAIN_QEMU_MONITOR_COMMAND_HMP,
            )
        except libvirt.libvirtError as exc:
            raise LabError(f"cannot read the counter of {vm} on {hosts[0]}: {exc}") from exc
        finally:
            conn.close()
        return parse_xp_word(out)

    def qemu_pid(self, vm: str, host: str | None = None) -> int:
        """The pid of the QEMU process running ``vm``."""
        hosts = [host] if host else self.where(vm)
        if len(hosts) != 1:
            raise LabError(f"guest {vm} runs on {len(hosts)} hosts ({hosts}), expected one")
        pids = self._qemu_pids(self.host(hosts[0]), names=(vm,))
        if not pids:
            raise LabError(f"no QEMU process for {vm} on {hosts[0]}")
        return pids[0]

    def wait_counter_running(self, vm: str, timeout_s: float = 60.0) -> int:
        """Wait until the busy guest has booted and its counter moves; return its value."""
        deadline = time.monotonic() + timeout_s
        last = -1
        while time.monotonic() < deadline:
            with contextlib.suppress(LabError):
                value = self.read_counter(vm)
                if last >= 0 and value > last:
                    return value
                last = value
            time.sleep(0.3)
        raise LabError(f"the counter of {vm} did not move within {timeout_s:.0f}s (last {last})")

    # -- hosts -------------------------------------------------------------------------------
    def connect(self, host: str, *, timeout_s: float = 10.0) -> libvirt.virConnect:
        import libvirt

        plan = self.host(host)
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                return _open_bounded(plan.uri, max(0.5, deadline - time.monotonic()))
            except (libvirt.libvirtError, TimeoutError) as exc:
                if time.monotonic() >= deadline:
                    raise LabError(
                        f"lab host {host} ({plan.uri}) does not answer: {exc or 'timeout'}"
                    ) from exc
            time.sleep(0.1)

    def start_host(self, host: str) -> None:
        """(Re)start the host's libvirtd; the guests it left running are picked up again."""
        plan = self.host(host)
        if self._daemon_pid(plan) is None:
            self._launch(plan)
        self._wait_ready(plan)
        self._check_cpu_models([host])

    def stop_host(self, host: str, *, timeout_s: float = STOP_TIMEOUT_S) -> None:
        """Stop the host's libvirtd (SIGTERM); its guests keep running, as on a real host."""
        plan = self.host(host)
        pid = self._daemon_pid(plan)
        if pid is None:
            return
        _signal([pid], signal.SIGTERM)
        _signal([pid], signal.SIGCONT)  # a frozen daemon must run to exit
        if _wait_gone([pid], timeout_s):
            _signal([pid], signal.SIGKILL)
            _wait_gone([pid], 5.0)
        with contextlib.suppress(FileNotFoundError):
            (self._host_dir(plan) / "libvirtd.pid").unlink()

    def kill_host(self, host: str, *, guests: bool | Sequence[str] = True) -> None:
        """The host dies: SIGKILL its libvirtd and its guests' QEMUs (``guests=True``), only
        the named guests' QEMUs (a list, e.g. an incoming migration's), or none (False)."""
        plan = self.host(host)
        pid = self._daemon_pid(plan)
        if pid is not None:
            _signal([pid], signal.SIGKILL)
            _wait_gone([pid], 5.0)
        if guests is False:
            qemus: list[int] = []
        elif guests is True:
            qemus = self._qemu_pids(plan)
        else:
            qemus = self._qemu_pids(plan, names=tuple(guests))
        _signal(qemus, signal.SIGKILL)
        _wait_gone(qemus, 5.0)
        with contextlib.suppress(FileNotFoundError):
            (self._host_dir(plan) / "libvirtd.pid").unlink()

    def freeze_host(self, host: str) -> None:
        """SIGSTOP the host's libvirtd: it accepts connections but never answers (a hung host)."""
        pid = self._daemon_pid(self.host(host))
        if pid is None:
            raise LabError(f"lab host {host} is not running")
        _signal([pid], signal.SIGSTOP)

    def thaw_host(self, host: str) -> None:
        """SIGCONT the host's libvirtd after :meth:`freeze_host`."""
        pid = self._daemon_pid(self.host(host))
        if pid is not None:
            _signal([pid], signal.SIGCONT)

    def start_ssh(self, timeout_s: float = 30.0) -> None:
        """An ``sshd`` per lab host on its own loopback port, running inside that host's
        mount namespace, so a ``qemu+ssh://`` session's ``virt-ssh-helper`` reaches that
        host's libvirtd. Root logs in with the lab's key only; known hosts are kept in the
        lab's dir (the ``command=`` wrapper), nothing is written to ~/.ssh. Idempotent."""
        sdir = self.state_dir / "ssh"
        key = sdir / "id_ed25519"
        if not key.exists():
            if shutil.which("sshd", path="/usr/sbin:/sbin") is None:
                raise LabError("cannot run qemu+ssh:// lab hosts: apt-get install openssh-server")
            sdir.mkdir(parents=True, exist_ok=True)
            for k in (key, sdir / "host_ed25519"):
                subprocess.run(
                    ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(k)],
                    check=True,
                    capture_output=True,
                    timeout=30,
                )
            (sdir / "authorized_keys").write_text(key.with_suffix(".pub").read_text())
            wrapper = sdir / "ssh"
            wrapper.write_text(
                "#!/bin/sh\n"
                f"exec ssh -o UserKnownHostsFile='{sdir}/known_hosts' "
                '-o StrictHostKeyChecking=no -o BatchMode=yes -o LogLevel=ERROR "$@"\n'
            )
            wrapper.chmod(0o755)
        Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)  # sshd's privilege separation dir
        for plan in self.state.hosts:
            pidfile = sdir / f"{plan.name}.pid"
            with contextlib.suppress(OSError, ValueError):
                if _alive(int(pidfile.read_text())):
                    continue
            pid = self._daemon_pid(plan)
            if pid is None:
                raise LabError(f"lab host {plan.name} is not running: cannot start its sshd")
            conf = sdir / f"{plan.name}.conf"
            conf.write_text(
                "\n".join(
                    [
                        f"Port {plan.ssh_port}",
                        "ListenAddress 127.0.0.1",
                        f"HostKey {sdir / 'host_ed25519'}",
                        f"AuthorizedKeysFile {sdir / 'authorized_keys'}",
                        "PermitRootLogin prohibit-password",
                        "PasswordAuthentication no",
                        "KbdInteractiveAuthentication no",
                        "UsePAM no",
                        "StrictModes no",
                        f"PidFile {pidfile}",
                        "",
                    ]
                )
            )
            with open(sdir / f"{plan.name}.log", "ab") as log:
                proc = subprocess.Popen(
                    ["nsenter", "-t", str(pid), "-m", "/usr/sbin/sshd", "-D", "-f", str(conf)],
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
            with _children_lock:
                _children[proc.pid] = proc
            deadline = time.monotonic() + timeout_s
            while _port_free(plan.ssh_port):
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise LabError(
                        f"the sshd of lab host {plan.name} did not start: "
                        f"{_tail(sdir / f'{plan.name}.log')}"
                    )
                time.sleep(0.05)

    def uri_for(self, host: str, transport: str = "tcp") -> str:
        """The host's libvirt URI over ``transport`` (tcp, tls or ssh)."""
        if transport == "tls" and not self.state.tls:
            raise LabError("this lab has no TLS certificates: apt-get install gnutls-bin")
        if transport == "ssh":
            self.start_ssh()
        return self.host(host).uri_for(
            transport,
            pki=str(self.state_dir / "pki" / "client"),
            ssh_key=str(self.state_dir / "ssh" / "id_ed25519"),
            ssh_command=str(self.state_dir / "ssh" / "ssh"),
        )

    def backend(
        self, *, timeout_s: float = 5.0, transport: str = "tcp", **kwargs: Any
    ) -> LibvirtBackend:
        """A :class:`balancer.libvirt.LibvirtBackend` for this lab's hosts (``timeout_s`` per
        host call; ``transport``: tcp, tls or ssh management connections; other keyword
        arguments go to the backend). Hosts with QEMU migration certificates can encrypt
        the migration stream (``MigrationOptions(tls=...)``)."""
        from balancer.libvirt import HostConfig, LibvirtBackend

        configs = [
            HostConfig(
                name=h.name,
                uri=self.uri_for(h.name, transport),
                migration_tls=h.name in self.state.migration_tls_hosts,
                timeout_s=timeout_s,
                migration_uri="tcp://127.0.0.1",
                listen_address="127.0.0.1",
                measure_host_overhead=False,
                virt_type=self.state.domain_type,
                shared_storage_prefixes=(str(self.state_dir / "disks"),),
            )
            for h in self.state.hosts
        ]
        return LibvirtBackend(configs, **kwargs)

    # -- internals ---------------------------------------------------------------------------
    def _host_dir(self, plan: HostPlan) -> Path:
        return self.state_dir / "hosts" / plan.name

    def _save(self) -> None:
        assert self._state is not None
        path = self.state_dir / STATE_FILE
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self._state.to_doc(), indent=2))
        tmp.replace(path)

    def _load_optional(self) -> _State | None:
        try:
            doc = json.loads((self.state_dir / STATE_FILE).read_text())
        except FileNotFoundError:
            return None
        except (OSError, ValueError, KeyError) as exc:
            raise LabError(f"{self.state_dir / STATE_FILE}: unreadable lab state: {exc}") from exc
        return _State.from_doc(doc)

    def _write_files(self) -> None:
        state = self.state
        disks = self.state_dir / "disks"
        disks.mkdir(parents=True, exist_ok=True)
        for kind in GuestKind:
            data = boot_sector(kind)
            (disks / f"{kind.value}.img").write_bytes(data + b"\0" * (DISK_SIZE - len(data)))
        state.tls = not missing_pki_prerequisites()
        if state.tls:
            # every host but the weaker one gets QEMU migration certificates
            state.migration_tls_hosts = [h.name for h in state.hosts if h.name != state.poor_host]
            make_lab_pki(
                self.state_dir / "pki",
                {h.name: self._host_dir(h) / "etc" for h in state.hosts},
                qemu_certs=set(state.migration_tls_hosts),
            )
        for plan in state.hosts:
            hdir = self._host_dir(plan)
            for _, sub in BIND_MOUNTS:
                (hdir / sub).mkdir(parents=True, exist_ok=True)
            (hdir / "lib" / "images").mkdir(exist_ok=True)
            (hdir / "log" / "qemu").mkdir(exist_ok=True)  # the Linux guests' consoles
            (hdir / "etc" / "libvirtd.conf").write_text(
                libvirtd_conf(
                    tcp_port=plan.tcp_port,
                    host_uuid=plan.host_uuid,
                    log_path="/var/log/libvirt/libvirtd.log",
                    tls_port=plan.tls_port if state.tls else None,
                )
            )
            (hdir / "etc" / "qemu.conf").write_text(
                qemu_conf(
                    migration_port_min=plan.migration_port_min,
                    migration_port_max=plan.migration_port_max,
                )
            )
            (hdir / "etc" / "libvirt.conf").write_text("# balancer lab\n")

    def _launch(self, plan: HostPlan) -> None:
        hdir = self._host_dir(plan)
        lines = ["set -e"]
        for target, sub in BIND_MOUNTS:
            lines.append(f"mkdir -p {target}")
            lines.append(f"mount --bind '{hdir / sub}' {target}")
        # the host's own SMBIOS data (labels that live with the host: ``virsh sysinfo``)
        fake = hdir / "dmidecode"
        fake.write_text(dmidecode_script(plan, self.state.slot))
        fake.chmod(0o755)
        lines.append(f"mount --bind '{fake}' {DMIDECODE}")
        # pinned to one CPU: libvirt keeps its QEMU capabilities cache only while the CPUID it
        # reads at start matches the cache's, and on a virtual machine CPUID differs by CPU
        # (APIC IDs). Unpinned, a host whose daemon starts on another CPU than the first
        # host's re-probes QEMU ("host cpuid changed") and the poor host gets its feature
        # back. QEMU does not inherit the pin: libvirt gives a guest without a cpuset every
        # online CPU.
        lines.append(
            f"exec taskset -c {_daemon_cpu()} libvirtd --listen -f /etc/libvirt/libvirtd.conf "
            f"-p '{hdir / 'libvirtd.pid'}'"
        )
        cmd = [
            sys.executable,
            "-m",
            "balancer.lab.reaper",
            "unshare",
            "--mount",
            "--propagation",
            "private",
            "sh",
            "-c",
            "\n".join(lines),
        ]
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(
            [str(Path(__file__).resolve().parents[2]), env.get("PYTHONPATH", "")]
        ).rstrip(os.pathsep)
        env["PATH"] = env.get("PATH", "") + ":/usr/sbin:/sbin"
        with open(hdir / "libvirtd.out", "ab") as out:
            proc = subprocess.Popen(
                cmd,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                env=env,
                cwd=str(self.state_dir),
            )
        with _children_lock:
            _children[proc.pid] = proc
        (hdir / "reaper.pid").write_text(str(proc.pid))

    def _daemon_pid(self, plan: HostPlan) -> int | None:
        try:
            pid = int((self._host_dir(plan) / "libvirtd.pid").read_text().strip())
        except (OSError, ValueError):
            return None
        return pid if _alive(pid) else None

    def _wait_ready(self, plan: HostPlan, timeout_s: float = START_TIMEOUT_S) -> None:
        import libvirt

        hdir = self._host_dir(plan)
        deadline = time.monotonic() + timeout_s
        reaper = int((hdir / "reaper.pid").read_text()) if (hdir / "reaper.pid").exists() else 0
        while time.monotonic() < deadline:
            try:
                conn = _open_bounded(plan.uri, 10.0)
            except (libvirt.libvirtError, TimeoutError):
                if reaper and not _alive(reaper) and self._daemon_pid(plan) is None:
                    break
                time.sleep(0.1)
                continue
            conn.close()
            return
        raise LabError(
            f"lab host {plan.name} did not start on {plan.uri} within {timeout_s:.0f}s: "
            f"{_tail(hdir / 'libvirtd.out')} {_tail(hdir / 'log' / 'libvirtd.log')}".strip()
        )

    def _check_cpu_models(self, hosts: Sequence[str] | None = None) -> None:
        """Raise unless the poor host's hypervisor lacks :attr:`lacking_feature` and the
        others offer it: the premise of every CPU-compatibility test (a daemon that re-probed
        QEMU instead of using the shared cache would silently offer it everywhere)."""
        import libvirt

        state = self.state
        if state.poor_host is None:
            return
        xml = required_cpu_xml([state.lacking_feature])
        for name in hosts or self.host_names():
            conn = self.connect(name)
            try:
                result = conn.compareHypervisorCPU(None, "x86_64", None, state.domain_type, xml, 0)
            finally:
                conn.close()
            offers = result in (libvirt.VIR_CPU_COMPARE_IDENTICAL, libvirt.VIR_CPU_COMPARE_SUPERSET)
            if offers == (name == state.poor_host):
                raise LabError(
                    f"lab host {name} {'offers' if offers else 'lacks'} CPU feature "
                    f"{state.lacking_feature}, but only {state.poor_host} should lack it: its "
                    "libvirtd did not use the lab's QEMU capabilities cache "
                    f"(see {self._host_dir(self.host(name)) / 'log' / 'libvirtd.log'})"
                )

    def _probe_and_share_caps(self) -> None:
        state = self.state
        first = state.hosts[0]
        conn = self.connect(first.name)
        try:
            conn.getDomainCapabilities(None, "x86_64", None, state.domain_type, 0)
        finally:
            conn.close()
        src = self._host_dir(first) / "cache" / "qemu" / "capabilities"
        for plan in state.hosts[1:]:
            dst = self._host_dir(plan) / "cache" / "qemu" / "capabilities"
            dst.mkdir(parents=True, exist_ok=True)
            for f in src.glob("*.xml"):
                text = f.read_text()
                if plan.name == state.poor_host:
                    text = strip_cpu_feature(text, state.lacking_feature)
                (dst / f.name).write_text(text)

    def _ensure_linux(self) -> None:
        """The lab bridge and the Linux guests' initramfs, made on first use."""
        state = self.state
        if state.kernel is None:
            missing = missing_linux_prerequisites()
            if missing:
                raise LabError("cannot run Linux lab guests, missing: " + "; ".join(missing))
            kernel = find_kernel()
            out = self.state_dir / "linux"
            out.mkdir(parents=True, exist_ok=True)
            (out / "initrd.gz").write_bytes(build_initramfs(kernel))
            state.kernel = str(kernel.image)
            self._save()
        if state.bridge is None:
            plan = net_plan(state.slot)
            _make_bridge(plan, self.state_dir)
            state.bridge = plan.bridge
            self._save()

    def _define_pool(self, plan: HostPlan) -> None:
        conn = self.connect(plan.name)
        try:
            pool = conn.storagePoolDefineXML(images_pool_xml(), 0)
            pool.setAutostart(1)
            pool.create(0)
        except Exception as exc:
            raise LabError(f"cannot define the image pool on {plan.name}: {exc}") from exc
        finally:
            conn.close()

    def _destroy_all(self, plan: HostPlan) -> None:
        conn = self.connect(plan.name, timeout_s=3.0)
        try:
            for dom in conn.listAllDomains(0):
                with contextlib.suppress(Exception):
                    if dom.isActive():
                        dom.destroy()
                with contextlib.suppress(Exception):
                    dom.undefine()
        finally:
            conn.close()

    def _qemu_pids(self, plan: HostPlan, names: tuple[str, ...] | None = None) -> list[int]:
        pids = []
        for pidfile in (self._host_dir(plan) / "run" / "qemu").glob("*.pid"):
            if names is not None and pidfile.stem not in names:
                continue
            with contextlib.suppress(OSError, ValueError):
                pid = int(pidfile.read_text().strip())
                if _alive(pid):
                    pids.append(pid)
        return pids


def _create_image(path: Path, fmt: str, size_mib: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        ["qemu-img", "create", "-q", "-f", fmt, str(path), f"{size_mib}M"],
        check=True,
        capture_output=True,
        timeout=60,
    )


def _flag(name: str) -> int:
    import libvirt

    return int(getattr(libvirt, name))


@contextlib.contextmanager
def lab_session(
    hosts: int = 3,
    vms: int = 3,
    *,
    busy: int = 1,
    state_dir: Path | str | None = None,
    **kwargs: Any,
) -> Iterator[Lab]:
    """``with lab_session(3, 3) as lab:`` a lab that is always taken down afterwards."""
    lab = Lab.up(hosts, vms, busy=busy, state_dir=state_dir, **kwargs)
    try:
        yield lab
    finally:
        lab.down()
