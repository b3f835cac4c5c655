"""Policy hot reload waits until the files settle: a file being written is not loaded."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from balancer.service.runtime import Runtime
from balancer.settings import load_settings
from tests.service.running import settled, write_settings

pytestmark = pytest.mark.timeout(120)


def test_a_policy_file_being_written_is_not_loaded_until_it_settles(tmp_path: Path) -> None:
    # an ops editor or `cat > rules.yaml` truncates the file, then writes it: a poll in between
    # may read a prefix that is valid YAML with the rules missing. A file modified less than
    # POLICY_SETTLE_S ago is left for the next poll.
    cfg = write_settings(tmp_path, policy={"goal": "balance", "threshold": 4})
    rt = Runtime.build(load_settings(cfg))
    try:
        rt.start()
        svc = rt.service
        good = svc.policy
        assert good is not None and good.threshold == 4
        policy_file = next((tmp_path / "policies").glob("*.yaml"))
        full = policy_file.read_text().replace("threshold: 4", "threshold: 2")
        prefix = full[: full.index("threshold: 2") + len("threshold: 2")]
        assert yaml.safe_load(prefix) and prefix != full
        settled(policy_file)  # nothing recent in the directory
        policy_file.write_text(prefix)  # half written, and valid
        assert svc.reload_policy() is False
        assert svc.policy is good and svc.policy_view().last_error is None
        policy_file.write_text(full)
        settled(policy_file)
        assert svc.reload_policy() is True
        assert svc.policy is not None and svc.policy.threshold == 2
        assert svc.policy.digest != good.digest
    finally:
        rt.begin_stop("test")
        rt.drain()
        rt.close()
