"""Transports and migration encryption, the pure parts: lab URIs and configs, the backend's
TLS decision, the audit note, settings' migration_address."""

from __future__ import annotations

from pathlib import Path

import pytest

from balancer.errors import MigrationError
from balancer.executor.engine import transport_note
from balancer.lab.config import HostPlan, libvirtd_conf, qemu_conf
from balancer.libvirt import HostConfig, LibvirtBackend
from balancer.libvirt.backend import backend_from_settings
from balancer.port import JobState, MigrationProgress
from balancer.settings import LibvirtHost

PLAN = HostPlan(
    name="h1",
    index=1,
    tcp_port=16601,
    migration_port_min=50000,
    migration_port_max=50019,
    host_uuid="u",
)


def test_lab_host_uris_per_transport() -> None:
    assert PLAN.uri_for("tcp") == "qemu+tcp://127.0.0.1:16601/system"
    assert PLAN.uri_for("tls", pki="/s/pki") == "qemu+tls://127.0.0.1:16701/system?pkipath=/s/pki"
    ssh = PLAN.uri_for("ssh", ssh_key="/s/key", ssh_command="/s/ssh")
    assert ssh.startswith("qemu+ssh://root@127.0.0.1:16801/system?keyfile=/s/key")
    assert "command=/s/ssh" in ssh and "proxy=native" in ssh
    with pytest.raises(ValueError, match="tcp, tls or ssh"):
        PLAN.uri_for("udp")


def test_tls_listener_and_migration_certificates_in_the_configs() -> None:
    conf = libvirtd_conf(tcp_port=16601, host_uuid="u", log_path="/l", tls_port=16701)
    assert "listen_tls = 1" in conf and 'tls_port = "16701"' in conf
    assert 'cert_file = "/etc/libvirt/pki/libvirt/servercert.pem"' in conf
    assert "listen_tcp = 1" in conf  # tcp stays for the fast tests
    qconf = qemu_conf(migration_port_min=1, migration_port_max=2)
    assert 'migrate_tls_x509_cert_dir = "/etc/libvirt/pki/qemu"' in qconf


def _backend(*, h1_tls: bool, h2_tls: bool) -> LibvirtBackend:
    return LibvirtBackend(
        [
            HostConfig(name="h1", uri="qemu+tcp://127.0.0.1:1/system", migration_tls=h1_tls),
            HostConfig(name="h2", uri="qemu+tcp://127.0.0.1:2/system", migration_tls=h2_tls),
        ]
    )


@pytest.mark.parametrize(
    ("tls", "h1", "h2", "expected"),
    [
        ("off", True, True, False),
        ("preferred", True, True, True),
        ("preferred", True, False, False),
        ("required", True, True, True),
    ],
)
def test_when_the_stream_is_encrypted(tls: str, h1: bool, h2: bool, expected: bool) -> None:
    be = _backend(h1_tls=h1, h2_tls=h2)
    try:
        assert be._encrypt("vm", "h1", "h2", tls) is expected
    finally:
        be.close()


def test_required_without_certificates_names_the_hosts() -> None:
    be = _backend(h1_tls=False, h2_tls=False)
    try:
        with pytest.raises(MigrationError, match="migration_tls_unavailable") as info:
            be._encrypt("vm", "h1", "h2", "required")
        assert "h1 and h2 have no migration TLS certificates" in str(info.value)
        with pytest.raises(MigrationError, match="off, preferred or required"):
            be._encrypt("vm", "h1", "h2", "always")
    finally:
        be.close()


def test_the_audit_note_says_how_it_moved() -> None:
    p = MigrationProgress(job_id="j", vm="v", source="a", target="b", state=JobState.SUCCEEDED)
    assert transport_note(p) == ""  # a simulated move: nothing known
    enc = MigrationProgress(
        job_id="j",
        vm="v",
        source="a",
        target="b",
        state=JobState.SUCCEEDED,
        encrypted=True,
        storage="copied",
    )
    assert transport_note(enc) == "stream: TLS; storage: copied"


def test_settings_migration_address_reaches_the_backend() -> None:
    hosts = [
        LibvirtHost(name="a", uri="qemu+tls://a/system", migration_address="10.9.0.1"),
        LibvirtHost(name="b", uri="qemu+ssh://b/system", migration_address="fd00::2"),
        LibvirtHost(name="c", uri="qemu+tcp://c/system", migration_tls=True),
    ]
    be = backend_from_settings(hosts)
    try:
        a, b, c = (be._state(h).config for h in ("a", "b", "c"))
        assert (a.migration_uri, a.listen_address) == ("tcp://10.9.0.1", "10.9.0.1")
        assert b.migration_uri == "tcp://[fd00::2]"
        assert c.migration_uri is None and c.migration_tls and not a.migration_tls
    finally:
        be.close()


def test_cluster_wide_defaults_and_host_labels_reach_the_backend() -> None:
    from balancer.settings import LibvirtBackend

    settings = LibvirtBackend.model_validate(
        {
            "kind": "libvirt",
            "defaults": {
                "timeout_s": 9.0,
                "labels": {"site": "par", "rack": "r0"},
                "shared_storage": ["/srv/nfs"],
                "virt_type": "qemu",
            },
            "hosts": [
                {"name": "a", "uri": "qemu+tls://a/system", "labels": {"rack": "r1"}},
                {
                    "name": "b",
                    "uri": "qemu+tls://b/system",
                    "timeout_s": 2.0,
                    "shared_storage": [],
                    "migration_tls": True,
                },
            ],
        }
    )
    be = backend_from_settings(settings.resolved_hosts())
    try:
        a, b = (be._state(h).config for h in ("a", "b"))
        assert dict(a.labels) == {"site": "par", "rack": "r1"} and a.timeout_s == 9.0
        assert dict(b.labels) == {"site": "par", "rack": "r0"} and b.timeout_s == 2.0
        assert a.shared_storage_prefixes == ("/srv/nfs",) and b.shared_storage_prefixes == ()
        assert a.virt_type == b.virt_type == "qemu"
        assert b.migration_tls and not a.migration_tls
    finally:
        be.close()


def test_a_host_given_twice_or_a_bad_label_is_refused(tmp_path: Path) -> None:
    import yaml

    from balancer.errors import SettingsError
    from balancer.settings import load_settings

    base = {"policy": "p", "database": "sqlite://", "state_dir": str(tmp_path)}
    twice = {"kind": "libvirt", "hosts": [{"name": "a", "uri": "qemu:///system"}] * 2}
    bad = {
        "kind": "libvirt",
        "hosts": [{"name": "a", "uri": "qemu:///system", "labels": {"no spaces": "x"}}],
    }
    for backend, words in ((twice, "a given more than once"), (bad, "labels")):
        f = tmp_path / "balancer.yaml"
        f.write_text(yaml.safe_dump({**base, "backend": backend}))
        with pytest.raises(SettingsError) as err:
            load_settings(f)
        assert words in str(err.value) and "balancer.yaml" in str(err.value), err.value


def test_lab_down_kills_only_processes_of_its_own_state_dir() -> None:
    from balancer.lab.lab import _mentions

    root = b"/tmp/lg/lab"
    assert _mentions(b"libvirtd\0-p\0/tmp/lg/lab/hosts/h1/libvirtd.pid\0", root)
    assert _mentions(b'qemu\0-blockdev\0{"filename":"/tmp/lg/lab/disks/a.img"}\0', root)
    assert _mentions(b"sh\0-c\0mount --bind '/tmp/lg/lab' /x\0", root)
    assert _mentions(b"tool\0/tmp/lg/lab", root)
    assert not _mentions(b"python\0/tmp/lg/lab.py\0", root)
    assert not _mentions(b"qemu\0/tmp/lg/lab2/disks/a.img\0", root)


def test_the_example_libvirt_settings_load_and_reach_the_backend() -> None:
    from balancer.settings import LibvirtBackend, load_settings

    repo = Path(__file__).resolve().parents[2]
    settings = load_settings(repo / "config" / "examples" / "libvirt.yaml")
    assert isinstance(settings.backend, LibvirtBackend)
    be = backend_from_settings(settings.backend.resolved_hosts())
    try:
        kvm01 = be._state("kvm01").config
        assert dict(kvm01.labels) == {"site": "par1", "rack": "r1"}
        assert kvm01.migration_uri == "tcp://10.20.0.11" and kvm01.migration_tls
        assert kvm01.shared_storage_prefixes == ("/var/lib/libvirt/images/shared",)
    finally:
        be.close()


def test_dirty_rate_measurements_take_turns_and_never_compete_with_a_migration() -> None:
    from balancer.libvirt.backend import pick_for_dirty_rate

    running = ["c", "a", "b", "d"]
    assert pick_for_dirty_rate(running, {}, 2, migrating=False) == ["a", "b"]
    # the least recently measured go first: never measured, then the oldest
    assert pick_for_dirty_rate(running, {"a": 5.0, "b": 6.0}, 2, migrating=False) == ["c", "d"]
    assert pick_for_dirty_rate(running, {"a": 5.0, "b": 1.0, "c": 7.0, "d": 9.0}, 3,
                               migrating=False) == ["b", "a", "c"]  # fmt: skip
    assert pick_for_dirty_rate(running, {}, 2, migrating=True) == []
    assert pick_for_dirty_rate(running, {}, 0, migrating=False) == []


def test_the_dirty_rate_settings_reach_the_backend(tmp_path: Path) -> None:
    import yaml

    from balancer.service.runtime import make_port
    from balancer.settings import load_settings

    f = tmp_path / "balancer.yaml"
    doc = {
        "backend": {
            "kind": "libvirt",
            "dirty_rate": {"per_host": 5},
            "hosts": [{"name": "a", "uri": "qemu+tcp://127.0.0.1:1/system"}],
        },
        "policy": "p",
        "database": "sqlite://",
        "state_dir": str(tmp_path),
    }
    f.write_text(yaml.safe_dump(doc))
    port, name, close = make_port(load_settings(f))
    try:
        assert name == "libvirt" and isinstance(port, LibvirtBackend)
        assert port._measure_dirty_rate and port._dirty_per_host == 5
    finally:
        close()
    doc["backend"]["dirty_rate"] = {"enabled": False}  # type: ignore[index]
    f.write_text(yaml.safe_dump(doc))
    port, _, close = make_port(load_settings(f))
    try:
        assert isinstance(port, LibvirtBackend) and not port._measure_dirty_rate
    finally:
        close()
