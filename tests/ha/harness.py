"""Real service processes against a real PostgreSQL server, for the HA tests and benchmark.

* :class:`Postgres` -- a throwaway server like ``tests/pg.py`` (same binaries, same helpers)
  that can also be stopped and started again on the same port (the restart test).
* :class:`Deployment` -- N ``balancer serve`` processes on free loopback ports sharing one
  database and, per cluster, one simulated-cluster state file; fast intervals, short leases.

Every wait is bounded; :meth:`Deployment.close` stops every process (SIGCONT, SIGTERM, then
SIGKILL) and is safe to call on failure.
"""

from __future__ import annotations

import contextlib
import json
import os
import pwd
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psycopg
import yaml

from tests.pg import _as_owner, _free_port, _run, find_bin_dir

REPO = Path(__file__).resolve().parents[2]
TOKEN = "ha-test-operator-token"
TOKEN_ENV = "BALANCER_TOKEN_HA_OPERATOR"

POLICY = """\
automation: partial
threshold: 1
goal: balance
balance: {cpu: 1.0, memory: 1.0}
headroom: {cpu: 0.0, memory: 0.0}
limits: {moves_per_cycle: 64, concurrent_per_host: 2, concurrent_total: 8}
cooldown_minutes: 60
migration:
  bandwidth_mib_s: 0
  max_downtime_ms: 300
  auto_converge: true
  post_copy: false
  allow_storage_copy: false
  stall_timeout_s: 120
  time_limit_s: 600
"""


class Postgres:
    """A PostgreSQL server in a temporary directory that can be restarted on its port."""

    def __init__(self) -> None:
        bin_dir = find_bin_dir()
        if bin_dir is None:
            raise RuntimeError("PostgreSQL server binaries (initdb, pg_ctl) not found")
        self.bin = bin_dir
        self.run_as = "postgres" if os.geteuid() == 0 else None
        self.root = Path(tempfile.mkdtemp(prefix="balancer-ha-pg-"))
        self.data = self.root / "data"
        self.log = self.root / "server.log"
        self.port = 0
        self.running = False
        if self.run_as:
            pw = pwd.getpwnam(self.run_as)
            os.chown(self.root, pw.pw_uid, pw.pw_gid)
        os.chmod(self.root, 0o700)
        res = _run(
            _as_owner(
                [
                    str(self.bin / "initdb"),
                    *("-D", str(self.data), "-A", "trust", "-U", "postgres", "-E", "UTF8"),
                    "--no-sync",
                    "--no-instructions",
                ],
                self.run_as,
            ),
            120,
        )
        if res.returncode != 0:
            raise RuntimeError(f"initdb failed: {res.stderr.strip() or res.stdout.strip()}")

    def _ctl(self, *args: str, timeout: float = 70) -> subprocess.CompletedProcess[str]:
        return _run(
            _as_owner([str(self.bin / "pg_ctl"), "-D", str(self.data), *args], self.run_as), timeout
        )

    def start(self) -> None:
        for _ in range(3):
            port = self.port or _free_port()
            opts = (
                f"-h 127.0.0.1 -p {port} -k {self.root} -c fsync=off -c synchronous_commit=off "
                "-c full_page_writes=off -c max_connections=300"
            )
            res = self._ctl("-l", str(self.log), "-o", opts, "-w", "-t", "60", "start")
            if res.returncode == 0:
                self.port = port
                self.running = True
                return
            if self.port:
                break
        raise RuntimeError(f"pg_ctl start failed: {self.log.read_text()[-2000:]}")

    def stop(self, mode: str = "fast") -> None:
        if self.running:
            self._ctl("-m", mode, "-w", "stop")
            self.running = False

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    def create_database(self) -> str:
        name = f"ha_{uuid.uuid4().hex[:10]}"
        with psycopg.connect(self.url(), autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.stop("immediate")
        shutil.rmtree(self.root, ignore_errors=True)


@contextlib.contextmanager
def postgres() -> Iterator[Postgres]:
    pg = Postgres()
    try:
        pg.start()
        yield pg
    finally:
        pg.close()


@dataclass
class Instance:
    name: str
    port: int
    config: Path
    log: Path
    proc: subprocess.Popen[bytes] | None = None
    http: httpx.Client = field(default_factory=lambda: httpx.Client(timeout=5.0))

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        env = {**os.environ, TOKEN_ENV: TOKEN, "PYTHONUNBUFFERED": "1"}
        out = self.log.open("ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "balancer", "serve", "--config", str(self.config)],
            cwd=REPO,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        out.close()

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def signal(self, sig: int) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, sig)

    def kill(self) -> None:
        self.signal(signal.SIGKILL)
        if self.proc is not None:
            self.proc.wait(timeout=10)

    def stop(self, timeout_s: float = 20.0) -> None:
        if self.proc is None:
            return
        self.signal(signal.SIGCONT)
        self.signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            self.signal(signal.SIGKILL)
            self.proc.wait(timeout=10)

    def get(self, path: str, *, timeout: float = 5.0, cluster: str | None = None) -> Any:
        prefix = f"/clusters/{cluster}" if cluster else ""
        r = self.http.get(
            f"{self.url}{prefix}/api/v1{path}",
            headers={"Authorization": f"Bearer {TOKEN}"},
            timeout=timeout,
        )
        r.raise_for_status()
        return r.json()

    def post(self, path: str, body: Any = None, *, cluster: str | None = None) -> Any:
        prefix = f"/clusters/{cluster}" if cluster else ""
        r = self.http.post(
            f"{self.url}{prefix}/api/v1{path}",
            headers={"Authorization": f"Bearer {TOKEN}"},
            json=body,
            timeout=30.0,
        )
        if r.status_code >= 400:
            raise RuntimeError(f"POST {path}: {r.status_code} {r.text}")
        return r.json()

    def roles(self, timeout: float = 1.0) -> dict[str, bool] | None:
        """The clusters this instance believes it leads; None when it does not answer."""
        try:
            return dict(self.get("/ha/roles", timeout=timeout)["leading"])
        except (httpx.HTTPError, ValueError, KeyError):
            return None

    def log_text(self) -> str:
        try:
            return self.log.read_text(errors="replace")
        except OSError:
            return ""


class Deployment:
    """N instances of the service sharing one database and the simulated clusters."""

    def __init__(
        self,
        root: Path,
        database: str,
        *,
        instances: int,
        clusters: list[str] | None = None,
        lease_s: float = 2.0,
        hosts: int = 4,
        vms: int = 24,
        link_mib_s: float = 1100.0,
        collect_s: float = 1.0,
    ) -> None:
        self.root = root
        self.database = database
        self.clusters = clusters
        self.lease_s = lease_s
        policy_dir = root / "policies"
        policy_dir.mkdir(parents=True, exist_ok=True)
        (policy_dir / "policy.yaml").write_text(POLICY)
        self.state_files: dict[str, Path] = {}
        names = clusters or ["default"]
        backends: dict[str, dict[str, Any]] = {}
        for n in names:
            self.state_files[n] = root / f"sim-{n}.json"
            backends[n] = {
                "kind": "simulated",
                "hosts": hosts,
                "vms": vms,
                "seed": 1,
                "state_file": str(self.state_files[n]),
                "link_mib_s": link_mib_s,
            }
        self.instances: list[Instance] = []
        for i in range(instances):
            name = f"i{i + 1}"
            port = _free_port()
            doc: dict[str, Any] = {
                "policy": str(policy_dir),
                "database": database,
                "state_dir": str(root / f"state-{name}"),
                "api": {
                    "listen": f"127.0.0.1:{port}",
                    "tokens": [{"user": "op", "role": "admin", "token_env": TOKEN_ENV}],
                },
                "intervals": {"collect_s": collect_s, "balance_s": 3600, "policy_reload_s": 60},
                "service": {"executor_poll_s": 0.2, "drain_timeout_s": 5},
                "ha": {"instance": name, "lease_seconds": lease_s},
            }
            if clusters is None:
                doc["backend"] = backends["default"]
            else:
                doc["clusters"] = [
                    {"name": n, "backend": backends[n], "policy": str(policy_dir)} for n in names
                ]
            cfg = root / f"{name}.yaml"
            cfg.write_text(yaml.safe_dump(doc))
            self.instances.append(
                Instance(name=name, port=port, config=cfg, log=root / f"{name}.log")
            )

    def start(self, timeout_s: float = 90.0) -> None:
        for inst in self.instances:
            inst.start()
        for inst in self.instances:
            self.wait_ready(inst, timeout_s)

    def wait_ready(self, inst: Instance, timeout_s: float = 90.0) -> None:
        wait_for(
            lambda: inst.roles() is not None,
            timeout_s,
            f"{inst.name} did not answer",
            check=lambda: inst.alive,
            logs=inst.log_text,
        )

    def by_name(self, name: str) -> Instance:
        return next(i for i in self.instances if i.name == name)

    def leaders(self) -> dict[str, list[str]]:
        """Per cluster, the instances that believe they lead it now (asked in parallel)."""
        from concurrent.futures import ThreadPoolExecutor

        live = [i for i in self.instances if i.alive]
        with ThreadPoolExecutor(max(1, len(live))) as pool:
            answers = list(pool.map(lambda i: (i.name, i.roles()), live))
        out: dict[str, list[str]] = {c: [] for c in (self.clusters or ["default"])}
        for name, roles in answers:
            for c, lead in (roles or {}).items():
                if lead:
                    out.setdefault(c, []).append(name)
        return out

    def leader_of(self, cluster: str = "default", timeout_s: float = 30.0) -> Instance:
        found: list[str] = []

        def one() -> bool:
            found[:] = self.leaders().get(cluster, [])
            return len(found) == 1

        wait_for(one, timeout_s, f"no single leader of {cluster}")
        return self.by_name(found[0])

    def url_of(self, cluster: str) -> str:
        if self.clusters is None:
            return self.database
        from balancer.ha.node import cluster_schema, cluster_url

        return cluster_url(self.database, cluster_schema(cluster))

    def sim_state(self, cluster: str = "default") -> dict[str, Any]:
        return dict(json.loads(self.state_files[cluster].read_text()))

    def close(self) -> None:
        for inst in self.instances:
            with contextlib.suppress(Exception):
                inst.stop()
            inst.http.close()


def wait_for(
    cond: Callable[[], bool],
    timeout_s: float,
    what: str,
    *,
    interval_s: float = 0.1,
    check: Callable[[], bool] | None = None,
    logs: Callable[[], str] | None = None,
) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if cond():
            return
        if check is not None and not check():
            tail = logs()[-3000:] if logs else ""
            raise AssertionError(f"{what}: the process exited\n{tail}")
        time.sleep(interval_s)
    tail = logs()[-3000:] if logs else ""
    raise AssertionError(f"{what} within {timeout_s} s\n{tail}")
