"""Host labels from the host's own SMBIOS data (``virsh sysinfo``): OEM strings
``kvm-balancer:KEY=VALUE`` and the fields the settings name; settings labels win."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from balancer.errors import SettingsError
from balancer.libvirt.backend import backend_from_settings
from balancer.libvirt.sysinfo import sysinfo_labels
from balancer.settings import LibvirtBackend, load_settings

SYSINFO = """<sysinfo type='smbios'>
  <system>
    <entry name='manufacturer'>Dell Inc.</entry>
    <entry name='product'>PowerEdge R650</entry>
    <entry name='serial'>Not Specified</entry>
  </system>
  <chassis>
    <entry name='asset'>rack-b07</entry>
  </chassis>
  <oemStrings>
    <entry>Dell System</entry>
    <entry>kvm-balancer:row=3</entry>
    <entry>kvm-balancer:zone=eu-west-1a</entry>
    <entry>kvm-balancer:bad key=x</entry>
    <entry>kvm-balancer:no-equals-sign</entry>
  </oemStrings>
</sysinfo>"""


def test_oem_strings_are_labels_and_named_fields_are_read_over_them() -> None:
    fields = {"rack": "chassis.asset", "model": "system.product", "row": "chassis.asset"}
    assert sysinfo_labels(SYSINFO, fields) == {
        "row": "rack-b07",  # a named field wins over an OEM label of the same key
        "zone": "eu-west-1a",
        "rack": "rack-b07",
        "model": "PowerEdge R650",
    }
    assert sysinfo_labels(SYSINFO, {}) == {"row": "3", "zone": "eu-west-1a"}


def test_unset_missing_or_unreadable_fields_give_no_label() -> None:
    # firmware placeholders ("Not Specified") and absent entries are no label
    fields = {"serial": "system.serial", "sku": "system.sku", "loc": "baseBoard.location"}
    assert sysinfo_labels(SYSINFO, fields) == {"row": "3", "zone": "eu-west-1a"}
    assert sysinfo_labels("<sysinfo", {"rack": "chassis.asset"}, host="h1") == {}
    assert sysinfo_labels("<sysinfo type='smbios'/>", {"rack": "chassis.asset"}) == {}


def test_labels_from_sysinfo_merge_from_the_defaults_and_reach_the_backend() -> None:
    settings = LibvirtBackend.model_validate(
        {
            "kind": "libvirt",
            "defaults": {"labels_from_sysinfo": {"rack": "chassis.asset"}},
            "hosts": [
                {"name": "a", "uri": "qemu+tls://a/system"},
                {"name": "b", "uri": "qemu+tls://b/system",
                 "labels_from_sysinfo": {"model": "system.product"}},
            ],
        }
    )  # fmt: skip
    be = backend_from_settings(settings.resolved_hosts())
    try:
        a, b = (be._state(h).config for h in ("a", "b"))
        assert dict(a.sysinfo_labels) == {"rack": "chassis.asset"}
        assert dict(b.sysinfo_labels) == {"rack": "chassis.asset", "model": "system.product"}
    finally:
        be.close()


@pytest.mark.parametrize("field", ["chassis", "memory.size", "chassis.asset']", "bios."])
def test_a_bad_sysinfo_field_is_refused_naming_it(tmp_path: Path, field: str) -> None:
    backend = {
        "kind": "libvirt",
        "hosts": [{"name": "a", "uri": "qemu:///system", "labels_from_sysinfo": {"rack": field}}],
    }
    f = tmp_path / "balancer.yaml"
    f.write_text(
        yaml.safe_dump(
            {"policy": "p", "database": "sqlite://", "state_dir": str(tmp_path), "backend": backend}
        )
    )
    with pytest.raises(SettingsError) as err:
        load_settings(f)
    assert "labels_from_sysinfo" in str(err.value) and "balancer.yaml" in str(err.value)
