"""Pure readers of libvirt XML documents (domain, domain capabilities, CPU definitions).

Values in, values out: these functions never talk to libvirt, so they are unit tested with
literal XML. "domain" and "guest" are libvirt's words and stay inside this package.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from enum import StrEnum

#: storage pool types whose volumes every host of a cluster sees (no copy needed)
#: pool types whose volumes can be seen by several hosts: a network file system or a network
#: block target. Whether two hosts really share a volume is decided by comparing the pools'
#: sources (:func:`pool_source_identity`): a local ``zfs``, ``scsi``, ``logical`` or ``mpath``
#: pool is never shared.
SHARED_POOL_TYPES = frozenset({"netfs", "gluster", "rbd", "iscsi", "iscsi-direct", "vstorage"})


def pool_source_identity(pool_xml: str) -> tuple[str, str] | None:
    """(pool type, canonical ``<source>``) of a pool whose volumes other hosts can see, or
    None for a local pool. Two hosts share a volume when both list its path in pools with the
    same identity (the same NFS export, the same iSCSI target, the same RBD pool)."""
    root = ET.fromstring(pool_xml)
    kind = root.get("type", "")
    if kind not in SHARED_POOL_TYPES:
        return None
    src = root.find("source")
    if src is None:
        return None
    parts = []
    for el in src.iter():
        attrs = ",".join(f"{k}={v}" for k, v in sorted(el.attrib.items()) if k != "port" or v)
        parts.append(f"{el.tag}[{attrs}]{(el.text or '').strip()}")
    return kind, "/".join(sorted(parts))


class CpuMode(StrEnum):
    DEFAULT = "default"  # no <cpu> element: the hypervisor's default model (qemu64)
    CUSTOM = "custom"
    HOST_MODEL = "host-model"
    HOST_PASSTHROUGH = "host-passthrough"
    MAXIMUM = "maximum"


@dataclass(frozen=True, slots=True, kw_only=True)
class DiskInfo:
    target: str
    device: str  # disk, cdrom, floppy, lun
    source_type: str  # file, block, network, volume, dir, nvme
    source: str | None
    readonly: bool
    shareable: bool


@dataclass(frozen=True, slots=True, kw_only=True)
class DomainInfo:
    name: str
    uuid: str
    domain_type: str  # kvm or qemu
    arch: str
    vcpus: int
    memory_mib: int
    cpu_mode: CpuMode
    #: a ``<cpu mode='custom'>`` document that libvirt can compare, or None (DEFAULT mode)
    cpu_xml: str | None
    cpu_model: str | None
    required_features: frozenset[str]
    disks: tuple[DiskInfo, ...]
    #: the balancer's labels from the domain's ``<metadata>`` (see :func:`parse_labels`)
    labels: tuple[tuple[str, str], ...] = ()


def _text(el: ET.Element | None, default: str = "") -> str:
    return (el.text or default).strip() if el is not None else default


def _mib(el: ET.Element | None) -> int:
    if el is None or not el.text:
        return 0
    value = int(el.text.strip())
    unit = (el.get("unit") or "KiB").lower()
    factor = {
        "b": 1 / (1024 * 1024),
        "bytes": 1 / (1024 * 1024),
        "k": 1 / 1024,
        "kib": 1 / 1024,
        "kb": 1000 / (1024 * 1024),
        "m": 1,
        "mib": 1,
        "mb": 1e6 / (1024 * 1024),
        "g": 1024,
        "gib": 1024,
        "gb": 1e9 / (1024 * 1024),
    }.get(unit, 1 / 1024)
    return int(value * factor)


def cpu_definition(
    model: str | None, features: Iterable[tuple[str, str]], vendor: str | None = None
) -> str:
    """A ``<cpu mode='custom' match='exact'>`` document (features as (policy, name) pairs)."""
    root = ET.Element("cpu", {"mode": "custom", "match": "exact"})
    if model:
        m = ET.SubElement(root, "model", {"fallback": "forbid"})
        m.text = model
    if vendor:
        ET.SubElement(root, "vendor").text = vendor
    for policy, name in sorted(set(features), key=lambda pn: (pn[1], pn[0])):
        ET.SubElement(root, "feature", {"policy": policy, "name": name})
    return ET.tostring(root, encoding="unicode")


def parse_cpu(cpu: ET.Element | None) -> tuple[CpuMode, str | None, str | None, frozenset[str]]:
    """(mode, comparable custom CPU XML, model, required features) of a ``<cpu>`` element."""
    if cpu is None:
        return CpuMode.DEFAULT, None, None, frozenset()
    mode = CpuMode(cpu.get("mode", "custom"))
    model_el = cpu.find("model")
    model = _text(model_el) or None
    feats = [(f.get("policy", "require"), f.get("name", "")) for f in cpu.findall("feature")]
    required = frozenset(n for p, n in feats if p in ("require", "force") and n)
    if mode in (CpuMode.HOST_PASSTHROUGH, CpuMode.MAXIMUM):
        return mode, None, model, required
    if model is None and not feats:
        return (CpuMode.DEFAULT if mode is CpuMode.CUSTOM else mode), None, None, frozenset()
    kept = [(p, n) for p, n in feats if p in ("require", "force", "disable", "forbid") and n]
    kept = [("require" if p == "force" else p, n) for p, n in kept]
    return mode, cpu_definition(model, kept, _text(cpu.find("vendor")) or None), model, required


#: the XML namespace of the balancer's labels in a domain's ``<metadata>``
LABELS_NS = "urn:kvm-balancer:labels:1"


def _local(tag: str) -> str:
    return tag.rsplit("}", 1)[-1]


def parse_labels(metadata: ET.Element | None) -> tuple[tuple[str, str], ...]:
    """A VM's labels (for the policy's label selectors) from its domain ``<metadata>``::

        <metadata>
          <balancer:labels xmlns:balancer="urn:kvm-balancer:labels:1">
            <label key="app">cache</label>
          </balancer:labels>
        </metadata>

    (``virsh metadata DOM --uri urn:kvm-balancer:labels:1 --key balancer --live --config
    --set '<labels><label key="app">cache</label></labels>'``). A ``label`` without a key is
    ignored; a key given twice keeps its last value."""
    if metadata is None:
        return ()
    out: dict[str, str] = {}
    for block in metadata:
        if block.tag != f"{{{LABELS_NS}}}labels":
            continue
        for el in block:
            key = (el.get("key") or "").strip()
            if _local(el.tag) == "label" and key:
                out[key] = (el.text or "").strip()
    return tuple(sorted(out.items()))


def parse_domain(xml: str) -> DomainInfo:
    root = ET.fromstring(xml)
    os_type = root.find("os/type")
    vcpu_el = root.find("vcpu")
    vcpus = int(vcpu_el.get("current") or _text(vcpu_el, "1")) if vcpu_el is not None else 1
    mode, cpu_xml, model, required = parse_cpu(root.find("cpu"))
    disks = []
    for d in root.findall("devices/disk"):
        src = d.find("source")
        source: str | None = None
        if src is not None:
            source = (
                src.get("file")
                or src.get("dev")
                or src.get("name")
                or src.get("dir")
                or (f"{src.get('pool')}/{src.get('volume')}" if src.get("pool") else None)
            )
        tgt = d.find("target")
        disks.append(
            DiskInfo(
                target=tgt.get("dev", "?") if tgt is not None else "?",
                device=d.get("device", "disk"),
                source_type=d.get("type", "file"),
                source=source,
                readonly=d.find("readonly") is not None,
                shareable=d.find("shareable") is not None,
            )
        )
    return DomainInfo(
        name=_text(root.find("name")),
        uuid=_text(root.find("uuid")),
        domain_type=root.get("type", "kvm"),
        arch=(os_type.get("arch") if os_type is not None else None) or "x86_64",
        vcpus=vcpus,
        memory_mib=_mib(root.find("memory")),
        cpu_mode=mode,
        cpu_xml=cpu_xml,
        cpu_model=model,
        required_features=required,
        disks=tuple(disks),
        labels=parse_labels(root.find("metadata")),
    )


def disks_needing_copy(
    disks: Sequence[DiskInfo], shared_prefixes: Sequence[str] = ()
) -> tuple[DiskInfo, ...]:
    """The disks a live migration would have to copy, before asking the target's pools.

    Read-only, shareable, network and empty (no source) disks never need a copy; nor do files
    under a configured shared prefix (an NFS mount, a cluster file system)."""
    out = []
    for d in disks:
        if d.readonly or d.shareable or d.source_type == "network" or not d.source:
            continue
        if d.device in ("cdrom", "floppy"):
            continue
        if any(
            d.source == p.rstrip("/") or d.source.startswith(p.rstrip("/") + "/")
            for p in shared_prefixes
        ):
            continue
        out.append(d)
    return tuple(out)


def host_model_cpu(domcaps_xml: str) -> str | None:
    """The hypervisor's host-model CPU from domain capabilities, as a custom CPU definition."""
    root = ET.fromstring(domcaps_xml)
    for mode in root.findall("cpu/mode"):
        if mode.get("name") == "host-model" and mode.get("supported") == "yes":
            feats = [
                (f.get("policy", "require"), f.get("name", "")) for f in mode.findall("feature")
            ]
            return cpu_definition(
                _text(mode.find("model")) or None, feats, _text(mode.find("vendor")) or None
            )
    return None


def cpu_model_and_features(cpu_xml: str) -> tuple[str | None, frozenset[str]]:
    """(model, required or forced features) of a CPU definition (e.g. an expanded baseline)."""
    root = ET.fromstring(cpu_xml)
    cpu = root if root.tag == "cpu" else root.find("cpu")
    if cpu is None:
        return None, frozenset()
    feats = frozenset(
        f.get("name", "")
        for f in cpu.findall("feature")
        if f.get("policy", "require") in ("require", "force") and f.get("name")
    )
    return _text(cpu.find("model")) or None, feats
