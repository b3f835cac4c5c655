"""The agent's hardware error counters: EDAC corrected / uncorrected errors summed over the
memory controllers and machine checks from /proc/interrupts, read under a fake root; sent in
the sample's document (optional: an older agent's document without them is still taken)."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

from collectors.agent import host_sample_doc, host_sample_from_doc
from collectors.hostagent import HostAgentSampler, read_hardware
from collectors.samples import HardwareErrors

INTERRUPTS = """\
           CPU0       CPU1
  0:         22          0   IO-APIC    2-edge      timer
MCE:          2          3   Machine check exceptions
MCP:        101        101   Machine check polls
"""


def fake_root(tmp_path: Path, counts: dict[str, tuple[int, int]], mce: bool = True) -> Path:
    for mc, (ce, ue) in counts.items():
        d = tmp_path / "sys/devices/system/edac/mc" / mc
        d.mkdir(parents=True)
        (d / "ce_count").write_text(f"{ce}\n")
        (d / "ue_count").write_text(f"{ue}\n")
    if mce:
        (tmp_path / "proc").mkdir()
        (tmp_path / "proc/interrupts").write_text(INTERRUPTS)
    return tmp_path


def test_edac_counters_are_summed_over_memory_controllers(tmp_path: Path) -> None:
    root = fake_root(tmp_path, {"mc0": (3, 0), "mc1": (4, 1)})
    assert read_hardware(root) == HardwareErrors(edac_corrected=7, edac_uncorrected=1, mce=5)


def test_what_the_kernel_does_not_give_is_none(tmp_path: Path) -> None:
    assert read_hardware(tmp_path) is None
    only_edac = fake_root(tmp_path, {"mc0": (2, 0)}, mce=False)
    assert read_hardware(only_edac) == HardwareErrors(edac_corrected=2, edac_uncorrected=0)
    (only_edac / "sys/devices/system/edac/mc/mc0/ue_count").write_text("garbage\n")
    assert read_hardware(only_edac) == HardwareErrors(edac_corrected=2)


def test_the_sample_carries_them_and_older_documents_are_still_taken(tmp_path: Path) -> None:
    root = fake_root(tmp_path, {"mc0": (3, 0)})
    now = datetime.now(UTC)
    sampler = HostAgentSampler(now, host="hv1", system_root=root)
    (sample,) = sampler.sample(now).hosts
    assert sample.hardware == HardwareErrors(edac_corrected=3, edac_uncorrected=0, mce=5)
    doc = host_sample_doc(sample)
    assert doc["hardware"] == {"edac_corrected": 3, "edac_uncorrected": 0, "mce": 5}
    assert host_sample_from_doc(doc) == sample
    older = {k: v for k, v in doc.items() if k != "hardware"}
    assert host_sample_from_doc(older).hardware is None
