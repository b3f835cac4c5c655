"""Reading domain and capabilities XML (pure)."""

from __future__ import annotations

from balancer.libvirt.domxml import (
    CpuMode,
    DiskInfo,
    cpu_model_and_features,
    disks_needing_copy,
    host_model_cpu,
    parse_domain,
)

DOMAIN = """<domain type='kvm' id='3'>
  <name>web-1</name><uuid>11111111-2222-3333-4444-555555555555</uuid>
  <memory unit='KiB'>2097152</memory>
  <vcpu placement='static' current='2'>4</vcpu>
  <os><type arch='x86_64' machine='pc-q35-7.2'>hvm</type></os>
  <cpu mode='custom' match='exact' check='partial'>
    <model fallback='forbid'>Skylake-Server</model>
    <feature policy='require' name='avx512f'/>
    <feature policy='disable' name='hle'/>
    <feature policy='optional' name='pcid'/>
  </cpu>
  <devices>
    <disk type='file' device='disk'><source file='/nfs/web-1.qcow2'/><target dev='vda'/></disk>
    <disk type='file' device='disk'><source file='/var/lib/libvirt/images/scratch.img'/>
      <target dev='vdb'/></disk>
    <disk type='network' device='disk'><source protocol='rbd' name='pool/web-1-data'/>
      <target dev='vdc'/></disk>
    <disk type='file' device='cdrom'><target dev='sda'/><readonly/></disk>
    <disk type='block' device='disk'><source dev='/dev/sdb'/><target dev='vdd'/><shareable/>
    </disk>
  </devices>
</domain>"""


def test_parse_domain_reads_size_cpu_and_disks() -> None:
    info = parse_domain(DOMAIN)
    assert (info.name, info.domain_type, info.arch) == ("web-1", "kvm", "x86_64")
    assert info.vcpus == 2 and info.memory_mib == 2048
    assert info.cpu_mode is CpuMode.CUSTOM and info.cpu_model == "Skylake-Server"
    assert info.required_features == frozenset({"avx512f"})
    assert info.cpu_xml is not None
    model, feats = cpu_model_and_features(info.cpu_xml)
    assert model == "Skylake-Server" and feats == frozenset({"avx512f"})
    assert "hle" in info.cpu_xml and "pcid" not in info.cpu_xml  # optional dropped
    assert [d.target for d in info.disks] == ["vda", "vdb", "vdc", "sda", "vdd"]


def test_only_unshared_writable_disks_need_a_copy() -> None:
    info = parse_domain(DOMAIN)
    needs = disks_needing_copy(info.disks, shared_prefixes=("/nfs/",))
    assert [d.target for d in needs] == ["vdb"]
    assert [d.target for d in disks_needing_copy(info.disks)] == ["vda", "vdb"]


def test_disk_exactly_at_a_shared_prefix_or_without_source() -> None:
    disks = (
        DiskInfo(
            target="a",
            device="disk",
            source_type="file",
            source="/s",
            readonly=False,
            shareable=False,
        ),
        DiskInfo(
            target="b",
            device="disk",
            source_type="file",
            source=None,
            readonly=False,
            shareable=False,
        ),
        DiskInfo(
            target="c",
            device="disk",
            source_type="file",
            source="/shared2/x",
            readonly=False,
            shareable=False,
        ),
    )
    assert [d.target for d in disks_needing_copy(disks, ("/s", "/shared"))] == ["c"]


def test_default_and_passthrough_cpus() -> None:
    plain = parse_domain("<domain type='qemu'><name>a</name><uuid>u</uuid></domain>")
    assert plain.cpu_mode is CpuMode.DEFAULT and plain.cpu_xml is None
    passthrough = parse_domain(
        "<domain type='kvm'><name>a</name><uuid>u</uuid><cpu mode='host-passthrough'/></domain>"
    )
    assert passthrough.cpu_mode is CpuMode.HOST_PASSTHROUGH and passthrough.cpu_xml is None


DOMCAPS = """<domainCapabilities><cpu>
  <mode name='host-passthrough' supported='yes'/>
  <mode name='host-model' supported='yes'>
    <model fallback='forbid'>EPYC-Milan</model><vendor>AMD</vendor>
    <feature policy='require' name='x2apic'/><feature policy='disable' name='avx2'/>
  </mode>
</cpu></domainCapabilities>"""


def test_host_model_cpu_becomes_a_custom_definition() -> None:
    cpu = host_model_cpu(DOMCAPS)
    assert cpu is not None
    assert 'mode="custom"' in cpu or "mode='custom'" in cpu
    model, feats = cpu_model_and_features(cpu)
    assert model == "EPYC-Milan" and feats == frozenset({"x2apic"})
    assert host_model_cpu("<domainCapabilities><cpu/></domainCapabilities>") is None


def test_labels_come_from_the_domains_metadata() -> None:
    from balancer.libvirt.domxml import LABELS_NS, parse_domain

    xml = f"""<domain type='kvm'><name>web</name><uuid>u</uuid><memory unit='KiB'>1024</memory>
      <metadata>
        <other:x xmlns:other="urn:else"><label key="app">wrong</label></other:x>
        <balancer:labels xmlns:balancer="{LABELS_NS}">
          <label key="app">cache</label>
          <balancer:label key="tier"> front </balancer:label>
          <label>no key</label>
          <label key="app">web</label>
        </balancer:labels>
      </metadata></domain>"""
    assert parse_domain(xml).labels == (("app", "web"), ("tier", "front"))
    plain = "<domain><name>x</name><memory unit='KiB'>1024</memory></domain>"
    assert parse_domain(plain).labels == ()
