"""Continuous traces (collectors.continuous): one matrix across day files, cores from vcpus."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from balancer.errors import InputError
from collectors.continuous import read_continuous_trace
from tests.forecast.helpers import write_trace_dir


def test_days_are_joined_in_order_and_scaled_to_cores(tmp_path: Path) -> None:
    d = write_trace_dir(tmp_path / "t", days=3, vms=("x", "y"), vcpus=(2, 8))
    tr = read_continuous_trace(d)
    assert tr.names == ("x", "y") and tr.vcpus.tolist() == [2, 8]
    assert tr.demand_cores.shape == (2, 3 * 288) and tr.steps_per_file == (288, 288, 288)
    # the 08:00 peak (80 %) of each day, in cores
    peaks = tr.demand_cores[:, 96::288]
    assert np.allclose(peaks[0], 1.6, atol=0.2) and np.allclose(peaks[1], 6.4, atol=0.6)


def test_an_empty_directory_and_duplicate_vms_are_refused(tmp_path: Path) -> None:
    (tmp_path / "e").mkdir()
    with pytest.raises(InputError, match="no day files"):
        read_continuous_trace(tmp_path / "e")
    d = write_trace_dir(tmp_path / "t", days=1)
    (d / "vms.csv").write_text("vm,vcpus\na,2\na,2\nb,1\nc,1\n")
    with pytest.raises(InputError, match=r"vms\.csv: row 3: VM 'a' listed twice"):
        read_continuous_trace(d)
    (d / "vms.csv").write_text("name,cpus\na,2\n")
    with pytest.raises(InputError, match="missing column 'vm'"):
        read_continuous_trace(d)
