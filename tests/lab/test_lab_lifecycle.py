"""The lab itself: status format, a clean down, clear errors when it cannot start."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from balancer.lab import Lab
from balancer.lab.config import MAX_SLOTS, net_plan
from balancer.lab.lab import (
    BRIDGE_ALIAS_PREFIX,
    _ip,
    _lab_bridges,
    _link_exists,
    _pick_slot,
    _remove_bridge,
    _slot_network_free,
)
from balancer.lab.testing import require_lab

pytestmark = [pytest.mark.lab, pytest.mark.timeout(180)]
BALANCER = [sys.executable, "-c", "from balancer.cli import main; main()"]


def _cli(
    *args: str, env: dict[str, str] | None = None, user: str | None = None
) -> subprocess.CompletedProcess[str]:
    cmd = [*BALANCER, *args]
    if user is not None:
        cmd = ["setpriv", f"--reuid={user}", f"--regid={user}", "--clear-groups", *cmd]
    return subprocess.run(
        cmd,
        check=False,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, **(env or {})},
        cwd="/",
    )


def test_status_json_lists_hosts_uris_and_vms(lab: Lab) -> None:
    res = _cli("lab", "status", "--json", env={"BALANCER_LAB_DIR": str(lab.state_dir)})
    assert res.returncode == 0, res.stderr
    doc = json.loads(res.stdout)
    assert [h["name"] for h in doc["hosts"]] == lab.host_names()
    for h in doc["hosts"]:
        assert set(h) == {"name", "uri", "vms"}
        assert h["uri"].startswith("qemu+tcp://127.0.0.1:")
    assert sorted(v for h in doc["hosts"] for v in h["vms"]) == sorted(
        v.name for v in lab.vms if lab.where(v.name)
    )


def test_up_and_down_leave_no_process_mount_or_file(tmp_path: Path) -> None:
    require_lab()
    state = tmp_path / "lab"
    res = _cli(
        "lab",
        "up",
        "--hosts",
        "1",
        "--vms",
        "1",
        "--busy",
        "0",
        "--state-dir",
        str(state),
        "--json",
    )
    try:
        assert res.returncode == 0, res.stderr
        assert json.loads(res.stdout)["hosts"][0]["vms"] == ["idle-1"]
    finally:
        down = _cli("lab", "down", "--state-dir", str(state))
    assert down.returncode == 0, down.stderr
    assert not state.exists()
    needle = str(state).encode()
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
            mounts = Path(f"/proc/{pid}/mountinfo").read_bytes()
        except OSError:
            continue
        assert needle not in cmdline, f"process {pid} left behind"
        assert needle not in mounts, f"mount left behind in the namespace of {pid}"


def test_up_without_root_says_what_is_missing(tmp_path: Path) -> None:
    require_lab()
    res = _cli("lab", "up", "--state-dir", str(tmp_path / "x"), user="65534")
    assert res.returncode == 7
    assert "missing: root" in res.stderr
    assert "Traceback" not in res.stderr
    assert not (tmp_path / "x").exists()


def test_a_killed_labs_bridge_is_reclaimed_and_a_foreign_one_is_never_touched(
    tmp_path: Path,
) -> None:
    """A lab killed before its down leaves its bridge behind (the CI run that found ``blab0``
    on the machine and refused every Linux guest). The next lab removes a bridge whose lab is
    gone, and steps over a network it did not make instead of failing on it."""
    require_lab()
    first = _pick_slot(1)  # the slot the next lab would take
    second = next(s for s in range(first + 1, MAX_SLOTS) if _slot_network_free(s))
    foreign, stale = net_plan(first).bridge, net_plan(second).bridge
    _ip("link", "add", foreign, "type", "bridge")
    _ip("link", "add", stale, "type", "bridge")
    gone = f"{BRIDGE_ALIAS_PREFIX}{tmp_path / 'gone'}"
    _ip("link", "set", "dev", stale, "alias", gone)
    state = tmp_path / "lab"
    try:
        res = _cli(
            "lab", "up", "--hosts", "1", "--vms", "1", "--busy", "0", "--guest", "linux",
            "--state-dir", str(state), "--json",
        )  # fmt: skip
        try:
            assert res.returncode == 0, res.stderr
            bridge = json.loads(res.stdout)["bridge"]
            assert bridge not in (None, foreign)
            # the gone lab's bridge is removed (its slot may be the new lab's now)
            aliases = dict(_lab_bridges())
            assert aliases.get(stale) != gone, "the bridge of a lab that is gone was kept"
            assert aliases[bridge] == f"{BRIDGE_ALIAS_PREFIX}{state}"
            assert _link_exists(foreign), "a bridge the lab did not make was removed"
        finally:
            down = _cli("lab", "down", "--state-dir", str(state))
        assert down.returncode == 0, down.stderr
        assert not _link_exists(bridge)
    finally:
        _remove_bridge(foreign)
        _remove_bridge(stale)
