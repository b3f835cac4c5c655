"""Host and VM specs of a simulation (pure parsing: text in, values out, no I/O).

Host spec: comma-separated groups ``COUNTxTYPE``; a TYPE is a named host type or a size in
parentheses::

    100x(2c,16384)            100 hosts of 2 cores and 16384 MiB
    50xG4,50xG5               the paper's HP ProLiant ML110 G4 and G5 (2 cores, 4096 MiB)
    20x(8c,64G,120,300)       8 cores, 64 GiB, 120 W idle, 300 W at full CPU
    10x(4c,32G)@gen2          the hosts carry CPU features of a generation of
                              :data:`balancer.sim.generator.CPU_GENERATIONS` (optional)

Memory is in MiB, or in GiB with a ``G`` suffix. Watts (idle, peak) feed the linear power
model ``P = idle + (peak - idle) x cpu_load``; without them a host uses
:data:`DEFAULT_IDLE_W` / :data:`DEFAULT_PEAK_W`. Hosts are named ``h000``, ``h001``... in spec
order. (A snapshot file instead of a spec is read by the CLI: its hosts are used, its VMs not.)

VM types: comma-separated ``(CORESc,MEMORY)`` sizes, e.g. ``(1.25c,870),(1c,1740)``. Cores may be
fractional: a trace's utilisation is a share of the VM's allotted capacity, so a VM of type
``(0.5c, ...)`` at 40 % uses 0.2 cores. :data:`PAPER_VM_TYPES` are the four types of Beloglazov &
Buyya (2500/2000/1000/500 MIPS) in cores of 2000 MIPS, with their 870/1740/1740/613 MB.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

from balancer.errors import InputError
from balancer.model import Host
from balancer.sim.generator import CPU_GENERATIONS

DEFAULT_IDLE_W = 100.0
DEFAULT_PEAK_W = 200.0


@dataclass(frozen=True, slots=True, kw_only=True)
class HostType:
    cpu_cores: int
    memory_mib: int
    idle_w: float = DEFAULT_IDLE_W
    peak_w: float = DEFAULT_PEAK_W
    generation: str = ""
    name: str = ""

    @property
    def label(self) -> str:
        return self.name or f"({self.cpu_cores}c,{self.memory_mib})"


@dataclass(frozen=True, slots=True, kw_only=True)
class HostGroup:
    count: int
    type: HostType


@dataclass(frozen=True, slots=True, kw_only=True)
class VMType:
    cpu_cores: float
    memory_mib: int

    @property
    def vcpus(self) -> int:
        return max(1, math.ceil(self.cpu_cores - 1e-9))


#: named host types: HP ProLiant ML110 G4 / G5 with the SPECpower idle and peak watts used by
#: Beloglazov & Buyya (2012). Both have 2 cores; their MIPS difference (1860 vs 2660) is not
#: modelled (a host's capacity is an integer core count).
NAMED_HOST_TYPES: dict[str, HostType] = {
    "G4": HostType(cpu_cores=2, memory_mib=4096, idle_w=86.0, peak_w=117.0, name="G4"),
    "G5": HostType(cpu_cores=2, memory_mib=4096, idle_w=93.7, peak_w=135.0, name="G5"),
}

PAPER_VM_TYPES: tuple[VMType, ...] = (
    VMType(cpu_cores=1.25, memory_mib=870),
    VMType(cpu_cores=1.0, memory_mib=1740),
    VMType(cpu_cores=0.5, memory_mib=1740),
    VMType(cpu_cores=0.25, memory_mib=613),
)

_GROUP = re.compile(r"^\s*(\d+)\s*[xX*]\s*(.+?)\s*$")
_SIZE = re.compile(r"^\(\s*([^)]*)\)\s*(?:@\s*(\w+))?$")
_NAMED = re.compile(r"^(\w+)\s*(?:@\s*(\w+))?$")
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(s|m|min|h)?\s*$")


def _split_top(text: str) -> list[str]:
    """Split on commas that are not inside parentheses."""
    parts: list[str] = []
    depth = 0
    cur: list[str] = []
    for ch in text:
        if ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
        if ch == "," and depth == 0:
            parts.append("".join(cur))
            cur = []
        else:
            cur.append(ch)
    parts.append("".join(cur))
    return [p.strip() for p in parts if p.strip()]


def _memory_mib(text: str, spec: str) -> int:
    t = text.strip().lower().removesuffix("ib").removesuffix("b")
    try:
        if t.endswith("g"):
            return round(float(t[:-1]) * 1024)
        if t.endswith("m"):
            t = t[:-1]
        return round(float(t))
    except ValueError:
        raise InputError(f"host spec {spec!r}: bad memory {text!r}", subject=spec) from None


def _cores(text: str, spec: str) -> float:
    t = text.strip().lower().removesuffix("c")
    try:
        value = float(t)
    except ValueError:
        raise InputError(f"{spec!r}: bad core count {text!r}", subject=spec) from None
    if value <= 0:
        raise InputError(f"{spec!r}: core count must be positive", subject=spec)
    return value


def _generation(gen: str | None, spec: str) -> str:
    if not gen:
        return ""
    known = [g for g, _ in CPU_GENERATIONS]
    if gen not in known:
        raise InputError(
            f"host spec {spec!r}: unknown CPU generation {gen!r} (known: {', '.join(known)})",
            subject=spec,
        )
    return gen


def parse_host_type(text: str, spec: str) -> HostType:
    m = _SIZE.match(text)
    if m:
        fields = [f.strip() for f in m.group(1).split(",")]
        if len(fields) not in (2, 4):
            raise InputError(
                f"host spec {spec!r}: a size is (CORESc,MEMORY) or (CORESc,MEMORY,IDLE_W,PEAK_W)",
                subject=spec,
            )
        cores = _cores(fields[0], spec)
        if cores != int(cores):
            raise InputError(f"host spec {spec!r}: host cores must be whole", subject=spec)
        idle, peak = DEFAULT_IDLE_W, DEFAULT_PEAK_W
        if len(fields) == 4:
            try:
                idle, peak = float(fields[2]), float(fields[3])
            except ValueError:
                raise InputError(f"host spec {spec!r}: bad watts", subject=spec) from None
            if not 0 <= idle <= peak:
                raise InputError(f"host spec {spec!r}: need 0 <= idle <= peak watts", subject=spec)
        memory = _memory_mib(fields[1], spec)
        if memory <= 0:
            raise InputError(f"host spec {spec!r}: memory must be positive", subject=spec)
        return HostType(
            cpu_cores=int(cores),
            memory_mib=memory,
            idle_w=idle,
            peak_w=peak,
            generation=_generation(m.group(2), spec),
        )
    m = _NAMED.match(text)
    if m and m.group(1).upper() in NAMED_HOST_TYPES:
        base = NAMED_HOST_TYPES[m.group(1).upper()]
        gen = _generation(m.group(2), spec)
        return HostType(
            cpu_cores=base.cpu_cores,
            memory_mib=base.memory_mib,
            idle_w=base.idle_w,
            peak_w=base.peak_w,
            generation=gen,
            name=base.name,
        )
    raise InputError(
        f"host spec {spec!r}: {text!r} is neither (CORESc,MEMORY) nor a named type "
        f"({', '.join(NAMED_HOST_TYPES)})",
        subject=spec,
    )


def parse_host_spec(spec: str) -> tuple[HostGroup, ...]:
    """``"50xG4,50x(4c,16G)"`` -> host groups (see the module docstring)."""
    groups: list[HostGroup] = []
    for part in _split_top(spec):
        m = _GROUP.match(part)
        if not m:
            raise InputError(
                f"host spec {spec!r}: {part!r} is not COUNTxTYPE (e.g. 100x(2c,4096))",
                subject=spec,
            )
        count = int(m.group(1))
        if count <= 0:
            raise InputError(f"host spec {spec!r}: count must be positive", subject=spec)
        groups.append(HostGroup(count=count, type=parse_host_type(m.group(2), spec)))
    if not groups:
        raise InputError("empty host spec", subject=spec)
    return tuple(groups)


def build_hosts(groups: tuple[HostGroup, ...]) -> tuple[tuple[Host, ...], dict[str, HostType]]:
    """Hosts ``h000``... of the groups, and each host's type (for the power model)."""
    features = dict(CPU_GENERATIONS)
    total = sum(g.count for g in groups)
    width = max(3, len(str(total - 1)))
    hosts: list[Host] = []
    types: dict[str, HostType] = {}
    for g in groups:
        for _ in range(g.count):
            name = f"h{len(hosts):0{width}d}"
            labels = {"type": g.type.label}
            if g.type.generation:
                labels["cpu_generation"] = g.type.generation
            hosts.append(
                Host(
                    name=name,
                    cpu_cores=g.type.cpu_cores,
                    memory_mib=g.type.memory_mib,
                    cpu_features=features.get(g.type.generation, frozenset()),
                    labels=labels,
                )
            )
            types[name] = g.type
    return tuple(hosts), types


def parse_vm_types(spec: str) -> tuple[VMType, ...]:
    """``"(1.25c,870),(1c,1740)"`` -> VM types; ``"paper"`` -> :data:`PAPER_VM_TYPES`."""
    if spec.strip().lower() in ("", "paper"):
        return PAPER_VM_TYPES
    out: list[VMType] = []
    for part in _split_top(spec):
        m = _SIZE.match(part)
        fields = [f.strip() for f in m.group(1).split(",")] if m else []
        if len(fields) != 2:
            raise InputError(f"VM types {spec!r}: {part!r} is not (CORESc,MEMORY)", subject=spec)
        memory = _memory_mib(fields[1], spec)
        if memory <= 0:
            raise InputError(f"VM types {spec!r}: memory must be positive", subject=spec)
        out.append(VMType(cpu_cores=_cores(fields[0], spec), memory_mib=memory))
    if not out:
        raise InputError("no VM types given", subject=spec)
    return tuple(out)


def parse_duration_s(text: str) -> float:
    """``"5m"`` -> 300.0; ``"30s"``, ``"1h"``, a bare number is seconds."""
    m = _DURATION.match(text)
    if not m:
        raise InputError(f"bad duration {text!r} (e.g. 5m, 300s, 1h)", subject=text)
    value = float(m.group(1))
    unit = m.group(2) or "s"
    factor = {"s": 1.0, "m": 60.0, "min": 60.0, "h": 3600.0}[unit]
    if value <= 0:
        raise InputError(f"duration {text!r} must be positive", subject=text)
    return value * factor


_DAY_RANGE = re.compile(r"^\s*(\d{1,5})\s*(?:-\s*(\d{1,5})\s*)?$")


def parse_day_range(text: str) -> tuple[int, int]:
    """``"15-20"`` -> (15, 20), ``"15"`` -> (15, 15): days numbered from 1, both ends in."""
    m = _DAY_RANGE.match(text)
    if not m:
        raise InputError(f"bad day range {text!r} (e.g. 15-20, or 3)", subject=text)
    first = int(m.group(1))
    last = int(m.group(2) or first)
    if not 1 <= first <= last:
        raise InputError(
            f"day range {text!r}: days are numbered from 1 and the first must not be after "
            "the last",
            subject=text,
        )
    return first, last
