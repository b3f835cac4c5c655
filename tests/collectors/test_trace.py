"""Trace replay: a small generated CSV and one real PlanetLab day."""

from __future__ import annotations

import gzip
import os
from pathlib import Path

import numpy as np
import pytest

from balancer.errors import InputError
from collectors.trace import TraceSampler, assign_in_order, load_traces
from tests.collectors.helpers import at
from tests.factories import make_host, make_snapshot, make_vm

PLANETLAB = Path("/work/shared/traces/planetlab/20110303.csv.gz")


def small(tmp_path: Path, gz: bool = False) -> Path:
    text = "vm,t0,t1,t2,t3\nalpha,0,50,100,25\nbeta,10,10,10,10\n"
    if gz:
        p = tmp_path / "small.csv.gz"
        p.write_bytes(gzip.compress(text.encode()))
    else:
        p = tmp_path / "small.csv"
        p.write_text(text)
    return p


@pytest.mark.parametrize("gz", [False, True])
def test_small_trace_is_scaled_to_vcpus_and_replayed(tmp_path: Path, gz: bool) -> None:
    traces = load_traces([small(tmp_path, gz)], step_s=60)
    assert traces.steps == 4
    snap = make_snapshot(
        [make_host("h1", overhead_cpu_cores=0.25)],
        [make_vm("a", "h1", vcpus=4), make_vm("b", "h1", vcpus=2)],
    )
    sampler = TraceSampler(
        traces, snap, start=at(0), assignment=assign_in_order(["a", "b"], traces)
    )
    cpu = [sampler.apply(snap, at(t)).vm("a").cpu_used_cores for t in (0, 59, 60, 120, 180, 240)]
    assert cpu == [0.0, 0.0, 2.0, 4.0, 1.0, 0.0]  # held per step, wraps after 4 steps
    batch = sampler.sample(at(60))
    by_vm = {v.vm: v.cpu_used_cores for v in batch.vms}
    assert by_vm == {"a": 2.0, "b": 0.2}
    assert batch.hosts[0].cpu_used_cores == pytest.approx(2.0 + 0.2 + 0.25)
    # pure: same inputs, same output
    assert sampler.sample(at(60)) == batch


def test_no_loop_holds_the_last_step(tmp_path: Path) -> None:
    traces = load_traces([small(tmp_path)], step_s=60)
    snap = make_snapshot([make_host("h1")], [make_vm("a", "h1", vcpus=1)])
    s = TraceSampler(traces, snap, start=at(0), assignment={"a": 0}, loop=False)
    assert s.apply(snap, at(10_000)).vm("a").cpu_used_cores == 0.25


def test_bad_trace_file_names_the_row(tmp_path: Path) -> None:
    p = tmp_path / "bad.csv"
    p.write_text("vm,t0,t1\nx,1,2\ny,3,oops\n")
    with pytest.raises(InputError, match="row 3"):
        load_traces([p])


@pytest.mark.skipif(not PLANETLAB.exists(), reason="PlanetLab traces not present")
def test_real_planetlab_day() -> None:
    traces = load_traces([PLANETLAB])
    assert traces.steps == 288
    assert len(traces.names) == 1052
    assert traces.percent.dtype == np.float32
    assert float(traces.percent.min()) >= 0 and float(traces.percent.max()) <= 100
    vms = [make_vm(f"vm{i}", "h1", vcpus=2) for i in range(100)]
    snap = make_snapshot([make_host("h1")], vms)
    s = TraceSampler(traces, snap, start=at(0))
    day = np.array([[v.cpu_used_cores for v in s.apply(snap, at(k * 300)).vms] for k in range(288)])
    assert day.shape == (288, 100)
    assert day.min() >= 0.0 and day.max() <= 2.0
    assert day.std(axis=0).mean() > 0.01  # it really varies over the day


def test_trace_files_go_through_the_input_layer(tmp_path: Path) -> None:
    """Non-UTF-8 bytes are located, a gzip bomb is cut at the limit, a FIFO never blocks."""
    bad = tmp_path / "bad.csv"
    bad.write_bytes(b"vm,t0\nx\xff,1\n")
    with pytest.raises(InputError, match=r"bad.csv: not valid CSV: line 2, column 2: byte 0xff"):
        load_traces([bad])
    bomb = tmp_path / "bomb.csv.gz"
    bomb.write_bytes(gzip.compress(b"0" * (65 * 1024 * 1024)))
    with pytest.raises(InputError, match=r"bomb\.csv\.gz: decompresses to more than the limit"):
        load_traces([bomb])
    broken = tmp_path / "broken.csv.gz"
    broken.write_bytes(gzip.compress(b"vm,t0\nx,1\n")[:-12])
    with pytest.raises(InputError, match=r"broken\.csv\.gz: not a valid gzip file"):
        load_traces([broken])
    fifo = tmp_path / "pipe.csv"
    os.mkfifo(fifo)
    with pytest.raises(InputError, match=r"pipe.csv: is a FIFO \(named pipe\)"):
        load_traces([fifo])
