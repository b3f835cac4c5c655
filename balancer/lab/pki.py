"""The lab's certificates, made with ``certtool`` (gnutls-bin): one lab CA, and per lab host a
server and a client certificate for 127.0.0.1. They serve both libvirt's ``qemu+tls://``
management connections (``listen_tls``) and QEMU's TLS migration stream
(``migrate_tls_x509_cert_dir``).

Layout under ``STATE/pki``: ``ca/`` (the CA's key and cert), ``client/`` (what a libvirt
client passes as ``?pkipath=``: ``cacert.pem``, ``clientcert.pem``, ``clientkey.pem``) and,
in each host's own ``etc/pki``: ``libvirt/`` (the daemon's ``servercert.pem``,
``serverkey.pem``, ``cacert.pem``) and ``qemu/`` (QEMU's ``ca-cert.pem``,
``server-cert.pem``, ``server-key.pem``, ``client-cert.pem``, ``client-key.pem``).
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

from balancer.errors import LabError


def missing_pki_prerequisites() -> list[str]:
    if shutil.which("certtool") is None:
        return ["certtool (apt-get install gnutls-bin)"]
    return []


def _certtool(*args: str) -> None:
    res = subprocess.run(
        ["certtool", *args], check=False, capture_output=True, text=True, timeout=60
    )
    if res.returncode != 0:
        raise LabError(f"certtool {' '.join(args)}: {res.stderr.strip()[-300:]}")


def _key(path: Path) -> Path:
    # RSA: libvirt insists on the key-encipherment usage, which an ECDSA key cannot have
    _certtool("--generate-privkey", "--key-type", "rsa", "--bits", "2048", "--outfile", str(path))
    path.chmod(0o600)
    return path


def _template(path: Path, lines: list[str]) -> Path:
    path.write_text("\n".join(lines) + "\n")
    return path


def make_ca(root: Path) -> tuple[Path, Path]:
    """The lab CA: (cert, key) under ``root/ca``."""
    ca = root / "ca"
    ca.mkdir(parents=True, exist_ok=True)
    key = _key(ca / "cakey.pem")
    tmpl = _template(
        ca / "ca.info", ["cn = balancer lab CA", "ca", "cert_signing_key", "expiration_days = 30"]
    )
    cert = ca / "cacert.pem"
    _certtool(
        "--generate-self-signed",
        "--load-privkey",
        str(key),
        "--template",
        str(tmpl),
        "--outfile",
        str(cert),
    )
    return cert, key


def issue(ca: tuple[Path, Path], out: Path, name: str, *, server: bool) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1/localhost signed by the lab CA: (cert, key) in ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    role = "server" if server else "client"
    key = _key(out / f"{name}-{role}key.pem")
    lines = [
        f"cn = {'127.0.0.1' if server else name}",
        "organization = balancer lab",
        "dns_name = localhost",
        "ip_address = 127.0.0.1",
        "signing_key",
        "encryption_key",
        "tls_www_server" if server else "tls_www_client",
        "expiration_days = 30",
    ]
    tmpl = _template(out / f"{name}-{role}.info", lines)
    cert = out / f"{name}-{role}cert.pem"
    _certtool(
        "--generate-certificate",
        "--load-privkey",
        str(key),
        "--load-ca-certificate",
        str(ca[0]),
        "--load-ca-privkey",
        str(ca[1]),
        "--template",
        str(tmpl),
        "--outfile",
        str(cert),
    )
    (out / f"{name}-{role}.info").unlink()
    return cert, key


def _install(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(src, dst)
    if "key" in dst.name:
        dst.chmod(0o600)


def make_lab_pki(root: Path, host_etc: dict[str, Path], *, qemu_certs: set[str]) -> Path:
    """The CA, the client's pkipath dir and every host's libvirt certificates; QEMU migration
    certificates only for the hosts in ``qemu_certs``. Returns the client pkipath dir."""
    ca = make_ca(root)
    client = root / "client"
    ccert, ckey = issue(ca, root / "issued", "client", server=False)
    _install(ca[0], client / "cacert.pem")
    _install(ccert, client / "clientcert.pem")
    _install(ckey, client / "clientkey.pem")
    for host, etc in host_etc.items():
        scert, skey = issue(ca, root / "issued", host, server=True)
        hcert, hkey = issue(ca, root / "issued", host, server=False)
        lib = etc / "pki" / "libvirt"
        _install(ca[0], lib / "cacert.pem")
        _install(scert, lib / "servercert.pem")
        _install(skey, lib / "serverkey.pem")
        # the daemon is a client too: peer-to-peer migration connects to the target daemon
        _install(hcert, lib / "clientcert.pem")
        _install(hkey, lib / "clientkey.pem")
        qemu = etc / "pki" / "qemu"
        qemu.mkdir(parents=True, exist_ok=True)
        if host in qemu_certs:
            _install(ca[0], qemu / "ca-cert.pem")
            _install(scert, qemu / "server-cert.pem")
            _install(skey, qemu / "server-key.pem")
            _install(hcert, qemu / "client-cert.pem")
            _install(hkey, qemu / "client-key.pem")
    return client
