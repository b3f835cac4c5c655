"""Snapshot file format, version 1 (JSON): the interchange format of ``plan``, ``simulate``,
benchmarks and tests.

```json
{"version": 1,
 "hosts": [{"name": "h01", "cpu_cores": 32, "memory_mib": 262144, "state": "active",
            "cpu_features": ["sse4_2", "avx2"], "labels": {"rack": "r1"}}],
 "vms": [{"name": "vm001", "host": "h01", "vcpus": 4, "memory_mib": 8192,
          "cpu_used_cores": 1.5, "memory_used_mib": 6000,
          "cpu_features": ["sse4_2"], "labels": {"app": "web"}, "dirty_rate_mib_s": 12.0}]}
```

Optional: ``state``, ``cpu_features``, ``labels``, ``memory_used_mib`` (defaults to
``memory_mib``), ``dirty_rate_mib_s``, ``copy_factor`` (GiB really copied / GiB expected,
learned from the VM's past migrations; 1 when absent, written only when not 1); on hosts also
``overhead_cpu_cores`` and ``overhead_memory_mib`` (unmanaged load), written only when not
zero. Every rejection names the
item (``vms[3] 'vm004'``) and the field.

Bounds (:mod:`balancer.model`): a host has 1..65536 cores and 1..2^30 MiB; a VM 1..65536 vCPUs
and 1..2^30 MiB; every figure is finite and not negative. Impossible states are refused
(:func:`balancer.model.state_problems`): a VM using more cores than its vCPUs or configured with
more memory than its host, a host's own use beyond its capacity. A VM on a host that lacks CPU
features it needs is accepted (it is what the cluster runs; the optimizer reports it blocked).
The file is read through :mod:`balancer.inputs` (regular file, at most 256 MiB, strict UTF-8).
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from balancer.errors import SnapshotError
from balancer.inputs import SNAPSHOT, HugeNumber, load_json, printable
from balancer.model import (
    MAX_COPY_FACTOR,
    MAX_DIRTY_RATE_MIB_S,
    MAX_HOST_CPU_CORES,
    MAX_MEMORY_MIB,
    MAX_VCPUS,
    VM,
    Host,
    HostState,
    Snapshot,
    state_problems,
)

SNAPSHOT_VERSION = 1
#: a host or VM name has at most this many characters (a DNS name: 253)
MAX_NAME = 253

_HOST_REQUIRED = ("name", "cpu_cores", "memory_mib")
_HOST_OPTIONAL = ("state", "cpu_features", "labels", "overhead_cpu_cores", "overhead_memory_mib")
_VM_REQUIRED = ("name", "host", "vcpus", "memory_mib", "cpu_used_cores")
_VM_OPTIONAL = ("memory_used_mib", "cpu_features", "labels", "dirty_rate_mib_s", "copy_factor")


class _Reader:
    def __init__(self, path: str | None) -> None:
        self.path = path

    def fail(
        self, message: str, item: str | None = None, field: str | None = None
    ) -> SnapshotError:
        return SnapshotError(message, item=item, field=field, path=self.path)

    def keys(
        self, obj: Any, item: str, required: tuple[str, ...], optional: tuple[str, ...]
    ) -> tuple[Mapping[str, Any], str]:
        """Check the keys of one item; returns it and its label (with its name if it has one)."""
        if not isinstance(obj, dict):
            raise self.fail("must be a JSON object", item)
        if isinstance(obj.get("name"), str) and obj["name"].strip():
            item = f"{item} {printable(obj['name'])!r}"
        unknown = sorted(set(obj) - set(required) - set(optional))
        if unknown:
            raise self.fail(
                f"unknown key {printable(unknown[0])!r} "
                f"(allowed: {', '.join(required + optional)})",
                item,
                printable(unknown[0]),
            )
        for k in required:
            if k not in obj:
                raise self.fail("is required", item, k)
        return obj, item

    def name(self, obj: Mapping[str, Any], item: str) -> str:
        v = obj["name"]
        if not isinstance(v, str) or not v.strip():
            raise self.fail("must be a non-empty string", item, "name")
        if len(v) > MAX_NAME or not v.isprintable():
            raise self.fail(f"must be at most {MAX_NAME} printable characters", item, "name")
        return v

    def positive_int(self, obj: Mapping[str, Any], key: str, item: str, maximum: int) -> int:
        v = obj[key]
        if isinstance(v, HugeNumber):
            raise self.fail(f"{v!r} is out of range (at most {maximum})", item, key)
        if isinstance(v, bool) or not isinstance(v, int):
            raise self.fail(f"must be a whole number, got {_shown(v)}", item, key)
        if v <= 0:
            raise self.fail(f"must be greater than zero, got {v}", item, key)
        if v > maximum:
            raise self.fail(f"{v} is out of range (at most {maximum})", item, key)
        return v

    def number(
        self,
        obj: Mapping[str, Any],
        key: str,
        item: str,
        *,
        default: float | None,
        maximum: float,
    ) -> float | None:
        if key not in obj or obj[key] is None:
            return default
        v = obj[key]
        if isinstance(v, HugeNumber):
            raise self.fail(f"{v!r} is out of range (at most {maximum:g})", item, key)
        if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v):
            raise self.fail(f"must be a finite number, got {_shown(v)}", item, key)
        if v < 0:
            raise self.fail(f"must not be negative, got {v}", item, key)
        if v > maximum:
            raise self.fail(f"{v} is out of range (at most {maximum:g})", item, key)
        return float(v)

    def strings(self, obj: Mapping[str, Any], key: str, item: str) -> frozenset[str]:
        v = obj.get(key, [])
        if not isinstance(v, list) or not all(isinstance(s, str) for s in v):
            raise self.fail("must be a list of strings", item, key)
        return frozenset(v)

    def labels(self, obj: Mapping[str, Any], item: str) -> dict[str, str]:
        v = obj.get("labels", {})
        if not isinstance(v, dict) or not all(
            isinstance(k, str) and isinstance(x, str) for k, x in v.items()
        ):
            raise self.fail("must be an object of string to string", item, "labels")
        return dict(v)


def _shown(v: Any) -> str:
    """A value for a message: its repr, cut to one short line."""
    text = repr(v)
    return text if len(text) <= 60 else f"{text[:40]}... ({type(v).__name__})"


def snapshot_from_dict(doc: Any, *, path: str | None = None) -> Snapshot:
    """Validate and build a snapshot; raises :class:`SnapshotError` naming item and field."""
    r = _Reader(path)
    top, _ = r.keys(doc, "snapshot", ("version", "hosts", "vms"), ())
    if top["version"] != SNAPSHOT_VERSION:
        raise r.fail(
            f"unsupported version {top['version']!r} (this build reads version {SNAPSHOT_VERSION})",
            "snapshot",
            "version",
        )
    if not isinstance(top["hosts"], list):
        raise r.fail("must be a list", "snapshot", "hosts")
    if not isinstance(top["vms"], list):
        raise r.fail("must be a list", "snapshot", "vms")

    hosts: list[Host] = []
    seen: set[str] = set()
    for i, raw in enumerate(top["hosts"]):
        h, item = r.keys(raw, f"hosts[{i}]", _HOST_REQUIRED, _HOST_OPTIONAL)
        name = r.name(h, item)
        if name in seen:
            raise r.fail("duplicate host name", item, "name")
        seen.add(name)
        state_raw = h.get("state", "active")
        try:
            state = HostState(state_raw)
        except ValueError:
            raise r.fail(
                f"unknown state {state_raw!r} (one of {', '.join(s.value for s in HostState)})",
                item,
                "state",
            ) from None
        hosts.append(
            Host(
                name=name,
                cpu_cores=r.positive_int(h, "cpu_cores", item, MAX_HOST_CPU_CORES),
                memory_mib=r.positive_int(h, "memory_mib", item, MAX_MEMORY_MIB),
                state=state,
                cpu_features=r.strings(h, "cpu_features", item),
                labels=r.labels(h, item),
                overhead_cpu_cores=r.number(
                    h, "overhead_cpu_cores", item, default=0.0, maximum=MAX_HOST_CPU_CORES
                )
                or 0.0,
                overhead_memory_mib=int(
                    r.number(h, "overhead_memory_mib", item, default=0.0, maximum=MAX_MEMORY_MIB)
                    or 0
                ),
            )
        )

    vms: list[VM] = []
    seen_vm: set[str] = set()
    for i, raw in enumerate(top["vms"]):
        v, item = r.keys(raw, f"vms[{i}]", _VM_REQUIRED, _VM_OPTIONAL)
        name = r.name(v, item)
        if name in seen_vm:
            raise r.fail("duplicate VM name", item, "name")
        seen_vm.add(name)
        host = v["host"]
        if not isinstance(host, str) or host not in seen:
            raise r.fail(f"unknown host {host!r}", item, "host")
        memory = r.positive_int(v, "memory_mib", item, MAX_MEMORY_MIB)
        used: int | None = None
        if v.get("memory_used_mib") is not None:
            used_raw = v["memory_used_mib"]
            if isinstance(used_raw, bool) or not isinstance(used_raw, int) or used_raw < 0:
                raise r.fail(
                    f"must be a whole number >= 0, got {_shown(used_raw)}", item, "memory_used_mib"
                )
            if used_raw > memory:
                raise r.fail(f"{used_raw} is above memory_mib {memory}", item, "memory_used_mib")
            used = used_raw
        vms.append(
            VM(
                name=name,
                host=host,
                vcpus=r.positive_int(v, "vcpus", item, MAX_VCPUS),
                memory_mib=memory,
                cpu_used_cores=r.number(v, "cpu_used_cores", item, default=0.0, maximum=MAX_VCPUS)
                or 0.0,
                memory_used_mib=used,
                cpu_features=r.strings(v, "cpu_features", item),
                labels=r.labels(v, item),
                dirty_rate_mib_s=r.number(
                    v, "dirty_rate_mib_s", item, default=None, maximum=MAX_DIRTY_RATE_MIB_S
                ),
                copy_factor=r.number(v, "copy_factor", item, default=1.0, maximum=MAX_COPY_FACTOR)
                or 1.0,
            )
        )
    snap = Snapshot(hosts=tuple(hosts), vms=tuple(vms), version=SNAPSHOT_VERSION)
    for problem in state_problems(snap):
        raise r.fail(
            problem.message, f"{problem.kind}[{problem.index}] {problem.name!r}", problem.field
        )
    return snap


def snapshot_to_dict(snapshot: Snapshot) -> dict[str, Any]:
    hosts: list[dict[str, Any]] = []
    for h in snapshot.hosts:
        d: dict[str, Any] = {
            "name": h.name,
            "cpu_cores": h.cpu_cores,
            "memory_mib": h.memory_mib,
            "state": h.state.value,
            "cpu_features": sorted(h.cpu_features),
            "labels": dict(h.labels),
        }
        if h.overhead_cpu_cores:
            d["overhead_cpu_cores"] = h.overhead_cpu_cores
        if h.overhead_memory_mib:
            d["overhead_memory_mib"] = h.overhead_memory_mib
        hosts.append(d)
    vms: list[dict[str, Any]] = []
    for v in snapshot.vms:
        dv: dict[str, Any] = {
            "name": v.name,
            "host": v.host,
            "vcpus": v.vcpus,
            "memory_mib": v.memory_mib,
            "cpu_used_cores": v.cpu_used_cores,
            "memory_used_mib": v.memory_used,
            "cpu_features": sorted(v.cpu_features),
            "labels": dict(v.labels),
        }
        if v.dirty_rate_mib_s is not None:
            dv["dirty_rate_mib_s"] = v.dirty_rate_mib_s
        if v.copy_factor != 1.0:
            dv["copy_factor"] = v.copy_factor
        vms.append(dv)
    return {"version": SNAPSHOT_VERSION, "hosts": hosts, "vms": vms}


def load_snapshot(path: str | Path) -> Snapshot:
    """Read (:func:`balancer.inputs.load_json`) and validate a snapshot file."""
    return snapshot_from_dict(load_json(path, SNAPSHOT), path=str(path))


def write_json_atomic(path: str | Path, doc: Any) -> None:
    """Write JSON so that a crash leaves either the old or the new file, never half of one."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=p.parent, prefix=f".{p.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(doc, f, indent=1)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, p)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def dump_snapshot(snapshot: Snapshot, path: str | Path) -> None:
    write_json_atomic(path, snapshot_to_dict(snapshot))
