"""Schemathesis over every endpoint of a running service, once with each role's token (viewer,
operator, admin): the coverage and fuzzing phases per operation, then stateful sequences that
follow the OpenAPI links (a task created then cancelled, a host from the status entered into
maintenance then exited, a plan from a balance read back, ...).

Asserted: no 5xx (schemathesis' own checks, and the service's count of last-resort 500s stays
0), responses conform to the schema, and every error names what is wrong (tests/fuzz/st_hooks:
an ``error`` message and the request id; a 413/422 names the field). Bounded: a fixed seed,
few examples per operation and a time budget per role, about 80 s in all. (A request may
take long on a loaded machine -- entering maintenance solves an evacuation plan -- hence the
generous per-request timeout: a slow answer is not what this suite looks for.)
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.service.running import REPO, ROLES, TOKENS, Service, running, wait_for, write_settings

pytestmark = pytest.mark.timeout(300)

CONFIG = Path(__file__).with_name("schemathesis.toml")
#: the time budget of one role's run (schemathesis repeats fuzzing and stateful until spent)
BUDGET_S = 20


def schemathesis_exe() -> str:
    exe = Path(sys.executable).parent / "schemathesis"
    if not exe.exists():
        pytest.fail("schemathesis is not installed (pip install -e '.[dev]')")
    return str(exe)


def run_schemathesis(url: str, token: str, *, phases: str, budget_s: int, examples: int) -> str:
    """One schemathesis run with the error-body check of st_hooks; returns its output after
    asserting that it passed."""
    r = subprocess.run(
        [
            schemathesis_exe(),
            "--config-file",
            str(CONFIG),
            "run",
            f"{url}/openapi.json",
            "--checks",
            "all",
            "--max-examples",
            str(examples),
            "--seed",
            "1",
            "--no-shrink",
            "--workers",
            "1",
            "--max-time",
            str(budget_s),
            "--request-timeout",
            "60",
            # "--checks all" includes a 10 s response-time limit: a timing assertion, which belongs
            # in benchmarks; only an answer slower than the request timeout (a hang) fails here
            "--max-response-time",
            "60",
            "--phases",
            phases,
            "-H",
            f"Authorization: Bearer {token}",
        ],
        cwd=REPO,
        env=dict(os.environ, SCHEMATHESIS_HOOKS="tests.fuzz.st_hooks", PYTHONPATH=str(REPO)),
        capture_output=True,
        check=False,
        text=True,
        timeout=budget_s + 90,
    )
    out = r.stdout + r.stderr
    assert r.returncode == 0, out[-6000:]
    assert "Server error" not in out and "error_names_what_is_wrong" not in out, out[-6000:]
    return out


def internal_errors(url: str) -> float:
    for line in httpx.get(f"{url}/metrics").text.splitlines():
        if line.startswith("balancer_api_internal_errors_total "):
            return float(line.split()[1])
    raise AssertionError("no balancer_api_internal_errors_total in /metrics")


@pytest.fixture(scope="module")
def svc(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    root = tmp_path_factory.mktemp("api-fuzz")
    cfg = write_settings(
        root,
        policy={"automation": "manual"},
        intervals={"collect_s": 1, "balance_s": 5, "policy_reload_s": 2},
    )
    with running(cfg) as s:
        wait_for("recommendations", lambda: s.get("/recommendations"), timeout_s=60)
        yield s


@pytest.mark.parametrize("user", ["vic", "bob", "alice"], ids=lambda u: ROLES[u])
def test_every_endpoint_with_every_role_and_stateful_sequences(svc: Service, user: str) -> None:
    before = internal_errors(svc.url)
    t0 = time.monotonic()
    out = run_schemathesis(
        svc.url, TOKENS[user], phases="coverage,fuzzing,stateful", budget_s=BUDGET_S, examples=3
    )
    doc = httpx.get(f"{svc.url}/openapi.json").json()
    n = sum(len(ops) for ops in doc["paths"].values())
    assert f"{n} selected / {n} total" in out, out[:2000]  # every endpoint
    assert "Stateful" in out and "Scenarios:" in out, out[-3000:]  # the stateful phase ran
    assert internal_errors(svc.url) == before, svc.tail()
    cases = out.split("Test cases:", 1)[-1].strip().splitlines()[0]
    print(f"schemathesis as {ROLES[user]}: {cases}")  # shown with -s
    assert time.monotonic() - t0 < BUDGET_S + 60
    # the service is still well after the run
    assert httpx.get(f"{svc.url}/healthz").json()["status"] == "ok"
