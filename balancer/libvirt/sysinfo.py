"""Host labels that live with the host: read from its SMBIOS data, as libvirt reports it
(``virConnectGetSysinfo``, the ``<sysinfo type='smbios'>`` document).

Words:

* an **OEM label** is an SMBIOS OEM string (type 11) written ``kvm-balancer:KEY=VALUE``; every
  such string on a host is one of its labels (firmware, a BMC or, for a nested host, QEMU's
  ``-smbios type=11,value=...`` set them);
* a **sysinfo field** is one entry of the document, named ``SECTION.ENTRY`` (``chassis.asset``,
  the asset tag many BMCs let ops write; ``system.product``, the hardware model;
  ``baseBoard.location``): the settings' ``labels_from_sysinfo: {rack: chassis.asset}`` makes
  the entry's value the host's ``rack`` label.

Labels written in the settings win over both (explicit configuration is the last word); a
string or a value that is not a valid label is ignored and said once in the log.
"""

from __future__ import annotations

import logging
import re
import xml.etree.ElementTree as ET
from collections.abc import Mapping

log = logging.getLogger("balancer.libvirt")

OEM_PREFIX = "kvm-balancer:"
#: the sections of the document a sysinfo field may name
SECTIONS = ("bios", "system", "baseBoard", "chassis")
LABEL_KEY = re.compile(r"^[A-Za-z0-9_./-]{1,63}$")
MAX_VALUE = 253
#: values firmware fills in when nobody set the field: no label
_UNSET = frozenset({"", "not specified", "to be filled by o.e.m.", "default string", "none"})


def sysinfo_labels(xml: str, fields: Mapping[str, str], *, host: str = "") -> dict[str, str]:
    """The host's OEM labels, then the labels named by ``fields`` (label key -> sysinfo
    field) over them; ``{}`` for a document that cannot be read."""
    try:
        root = ET.fromstring(xml)
    except ET.ParseError as exc:
        log.warning("%s: its sysinfo is not XML (%s): no labels from it", host, exc)
        return {}
    out: dict[str, str] = {}
    oem = root.find("oemStrings")
    for entry in oem.findall("entry") if oem is not None else ():
        text = (entry.text or "").strip()
        if not text.startswith(OEM_PREFIX):
            continue
        key, sep, value = text[len(OEM_PREFIX) :].partition("=")
        if not sep or not _valid(key, value):
            log.warning("%s: OEM string %r is not KEY=VALUE with a valid label", host, text)
            continue
        out[key] = value
    for key, name in fields.items():
        section, _, entry_name = name.partition(".")
        node = root.find(f"{section}/entry[@name='{entry_name}']")
        value = (node.text or "").strip() if node is not None else ""
        if value.lower() in _UNSET:
            continue
        if not _valid(key, value):
            log.warning("%s: sysinfo %s = %r is not a valid label value", host, name, value)
            continue
        out[key] = value
    return out


def _valid(key: str, value: str) -> bool:
    return bool(LABEL_KEY.match(key)) and len(value) <= MAX_VALUE and "\n" not in value
