"""A throwaway PostgreSQL server for tests (a pytest plugin: ``pytest_plugins = ["tests.pg"]``).

Fixtures:

* ``postgres_server`` (session): starts a cluster with Debian's binaries
  (``/usr/lib/postgresql/<version>/bin``; ``$BALANCER_PG_BIN`` overrides), data and unix socket in
  a temporary directory, listening on 127.0.0.1 and a free port, trust authentication; stops
  and removes it at the end. As root, the server runs as the ``postgres`` user (``runuser``),
  since PostgreSQL refuses to run as root.
* ``postgres_url`` (function): a fresh, empty database on that server, as a
  ``postgresql://`` URL; dropped after the test.

Without the binaries the tests are skipped, unless ``BALANCER_REQUIRE_SERVICES=1`` (CI), where
they fail. Mark tests that use them ``@pytest.mark.postgres``.
"""

from __future__ import annotations

import atexit
import contextlib
import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

REQUIRE_ENV = "BALANCER_REQUIRE_SERVICES"
BIN_ENV = "BALANCER_PG_BIN"
START_TIMEOUT_S = 60


@dataclass(frozen=True, slots=True)
class PostgresServer:
    host: str
    port: int
    user: str
    socket_dir: Path

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://{self.user}@{self.host}:{self.port}/{database}"


def _missing(message: str) -> None:
    if os.environ.get(REQUIRE_ENV) == "1":
        pytest.fail(f"{message} (required: {REQUIRE_ENV}=1)", pytrace=False)
    pytest.skip(message)


def find_bin_dir() -> Path | None:
    env = os.environ.get(BIN_ENV)
    if env:
        return Path(env) if (Path(env) / "initdb").exists() else None
    found = sorted(
        glob.glob("/usr/lib/postgresql/*/bin/initdb"),
        key=lambda p: (
            int(Path(p).parent.parent.name) if Path(p).parent.parent.name.isdigit() else 0
        ),
    )
    if found:
        return Path(found[-1]).parent
    on_path = shutil.which("initdb")
    return Path(on_path).parent if on_path else None


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _as_owner(cmd: list[str], run_as: str | None) -> list[str]:
    return ["runuser", "-u", run_as, "--", *cmd] if run_as else cmd


def _run(cmd: list[str], timeout: float) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)


@contextlib.contextmanager
def running_postgres() -> Iterator[PostgresServer]:
    """Start a throwaway server; stop and remove it on exit (also on failure)."""
    bin_dir = find_bin_dir()
    if bin_dir is None:
        _missing(
            "PostgreSQL server binaries (initdb, pg_ctl) not found; apt-get install postgresql"
        )
    assert bin_dir is not None
    run_as: str | None = None
    if os.geteuid() == 0:
        if shutil.which("runuser") is None:
            _missing("running as root needs runuser to start PostgreSQL as another user")
        try:
            pw = pwd.getpwnam("postgres")
        except KeyError:
            _missing("running as root needs a `postgres` user to start PostgreSQL")
        run_as = "postgres"
    root = Path(tempfile.mkdtemp(prefix="balancer-pg-"))
    data = root / "data"
    log = root / "server.log"
    if run_as:
        os.chown(root, pw.pw_uid, pw.pw_gid)
    os.chmod(root, 0o700)
    pg_ctl = str(bin_dir / "pg_ctl")
    started = False

    def stop() -> None:
        nonlocal started
        if started:
            _run(_as_owner([pg_ctl, "-D", str(data), "-m", "immediate", "-w", "stop"], run_as), 60)
            started = False
        shutil.rmtree(root, ignore_errors=True)

    atexit.register(stop)
    try:
        res = _run(
            _as_owner(
                [
                    str(bin_dir / "initdb"),
                    "-D",
                    str(data),
                    "-A",
                    "trust",
                    "-U",
                    "postgres",
                    "-E",
                    "UTF8",
                    "--no-sync",
                    "--no-instructions",
                ],
                run_as,
            ),
            120,
        )
        if res.returncode != 0:
            raise RuntimeError(f"initdb failed: {res.stderr.strip() or res.stdout.strip()}")
        for _attempt in range(3):
            port = _free_port()
            opts = (
                f"-h 127.0.0.1 -p {port} -k {root} -c fsync=off -c synchronous_commit=off "
                "-c full_page_writes=off -c max_connections=200"
            )
            res = _run(
                _as_owner(
                    [
                        pg_ctl,
                        "-D",
                        str(data),
                        "-l",
                        str(log),
                        "-o",
                        opts,
                        "-w",
                        "-t",
                        str(START_TIMEOUT_S),
                        "start",
                    ],
                    run_as,
                ),
                START_TIMEOUT_S + 10,
            )
            if res.returncode == 0:
                started = True
                break
            tail = log.read_text()[-2000:] if log.exists() else res.stderr
            if "could not bind" not in tail and "in use" not in tail:
                raise RuntimeError(f"pg_ctl start failed: {tail.strip()}")
        if not started:
            raise RuntimeError("pg_ctl start failed: no free port")
        yield PostgresServer(host="127.0.0.1", port=port, user="postgres", socket_dir=root)
    finally:
        stop()
        atexit.unregister(stop)


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    with running_postgres() as server:
        yield server


def _admin(server: PostgresServer, sql: str) -> None:
    import psycopg

    with psycopg.connect(server.url(), autocommit=True) as conn:
        conn.execute(sql)


@pytest.fixture
def postgres_url(postgres_server: PostgresServer) -> Iterator[str]:
    name = f"t_{uuid.uuid4().hex[:12]}"
    _admin(postgres_server, f'CREATE DATABASE "{name}"')
    try:
        yield postgres_server.url(name)
    finally:
        _admin(postgres_server, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
