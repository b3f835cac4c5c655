"""The peers benchmark's metric code and its GiB lower bound (benchmarks.optimizer.peers), on
tiny clusters with hand-computed values, and the bound against real plans."""

from __future__ import annotations

import math
import random

import pytest
from hypothesis import HealthCheck, assume, given, note, settings
from hypothesis import strategies as st

from balancer.model import HostState, Snapshot
from balancer.optimizer import validate_plan
from balancer.plan import Move, MoveReason
from balancer.planner import end_state, make_plan
from benchmarks.optimizer.peers import (
    best_peer,
    figures,
    gib_lower_bound,
    moves_lower_bound,
    parse_peers,
)
from tests.factories import make_host, make_snapshot, make_vm
from tests.optimizer.helpers import policy

README = """# Peers
| cluster | peer | moves | GiB | cpu stddev | mem stddev | max cpu | errors |
|---|---|---|---|---|---|---|---|
| 4x10 | greedy | 3 | 12 | 0.100 | 0.050 | 0.800 | 1 |
| 4x10 | solver | 0 | 0 | 0.010 | 0.010 | 0.900 | 0 |
| 4x10 | smart | 9 | 40 | 0.020 | 0.030 | 0.500 | 2 |
| 8x20 | greedy | 5 | 20.5 | 0.200 | 0.100 | 0.700 | 0 |
Before any plan: 4x10 cpu/mem stddev 0.3/0.2.
"""


def _moves(before: Snapshot, placement: dict[str, str]) -> tuple[Move, ...]:
    where = before.placement()
    return tuple(
        Move(vm=vm, source=where[vm], target=host, step=1, reason=MoveReason.BALANCE)
        for vm, host in sorted(placement.items())
        if where[vm] != host
    )


def test_parse_peers_reads_every_row_and_best_peer_skips_peers_that_moved_nothing() -> None:
    rows = parse_peers(README)
    assert sorted(rows) == ["4x10", "8x20"]
    assert [r.peer for r in rows["4x10"]] == ["greedy", "solver", "smart"]
    assert rows["8x20"][0].figures.gib == 20.5 and rows["4x10"][0].errors == 1
    # "solver" has the lowest stddev but moved nothing; "smart" (mean 0.025) beats "greedy"
    best = best_peer(rows["4x10"])
    assert best.peer == "smart"
    assert best.figures.moves == 9 and best.figures.mem_stddev == 0.030


def test_parse_peers_names_the_line_of_a_bad_number() -> None:
    with pytest.raises(ValueError, match="line 4, field 'moves': 'three' is not a number"):
        parse_peers(README.replace("| 3 | 12 |", "| three | 12 |"))


def test_figures_by_hand() -> None:
    hosts = [
        make_host("a", cpu_cores=4, memory_mib=1024),
        make_host("b", cpu_cores=4, memory_mib=1024),
        make_host("m", cpu_cores=4, memory_mib=1024, state=HostState.MAINTENANCE),
    ]
    vms = [
        make_vm("v1", "a", memory_mib=512, cpu_used_cores=2.0),
        make_vm("v2", "a", memory_mib=256, cpu_used_cores=1.0),
        make_vm("v3", "b", memory_mib=256, cpu_used_cores=1.0),
        make_vm("v4", "m", memory_mib=256, cpu_used_cores=0.5),
    ]
    before = make_snapshot(hosts, vms)
    # as it is (active hosts only): cpu 0.75 and 0.25, memory 0.75 and 0.25
    now = figures(before, (), before)
    assert now.cpu_stddev == pytest.approx(0.25) and now.mem_stddev == pytest.approx(0.25)
    assert (now.moves, now.gib, now.max_cpu) == (0, 0.0, 0.75)
    placement = {"v4": "b", "v2": "b"}
    after = before.with_placement(placement)
    f = figures(before, _moves(before, placement), after)
    # a: v1 -> cpu 2/4, memory 512/1024; b: v2, v3, v4 -> cpu 2.5/4, memory 768/1024
    assert f.cpu_stddev == pytest.approx(0.0625)
    assert f.mem_stddev == pytest.approx(0.125)
    assert f.max_cpu == pytest.approx(0.625)
    assert f.moves == 2
    assert f.gib == pytest.approx(0.5)


def _loads(*hosts: tuple[str, int, int, HostState]) -> Snapshot:
    """Hosts (name, memory MiB, VM memory MiB on it, state), the VM memory in 100 MiB VMs."""
    hs = [make_host(n, memory_mib=m, state=s) for n, m, _, s in hosts]
    vms = [
        make_vm(f"{n}-{k}", n, memory_mib=100)
        for n, _, used, _ in hosts
        for k in range(used // 100)
    ]
    return make_snapshot(hs, vms)


A = HostState.ACTIVE


def test_bound_by_hand_equal_hosts() -> None:
    s = _loads(("a", 1000, 900, A), ("b", 1000, 500, A), ("c", 1000, 400, A))
    # cv = 0, so xbar = 1800 / 3000 = 0.6; only a is hot (d = 0.3); n * sigma^2 = 0.0075:
    # e_a = sqrt(0.0075), and a sends at least (0.3 - e_a) * 1000 MiB
    assert gib_lower_bound(s, 0.05) == pytest.approx((0.3 - math.sqrt(0.0075)) * 1000 / 1024)
    # a maintenance host holding 300 MiB: it must be emptied, and xbar = 2100 / 3000 = 0.7
    s = _loads(
        ("a", 1000, 900, A),
        ("b", 1000, 500, A),
        ("c", 1000, 400, A),
        ("m", 1000, 300, HostState.MAINTENANCE),
    )
    expected = 300 + (0.2 - math.sqrt(0.0075)) * 1000
    assert gib_lower_bound(s, 0.05) == pytest.approx(expected / 1024)
    # a balanced enough target asks nothing of the active hosts
    assert gib_lower_bound(s, 1.0) == pytest.approx(300 / 1024)


def test_bound_by_hand_two_hot_hosts_of_different_sizes() -> None:
    s = _loads(("p", 1000, 900, A), ("q", 2000, 1600, A), ("r", 1000, 200, A), ("s", 2000, 600, A))
    # c = 3300 / 6000 = 0.55; memory 1000, 2000, 1000, 2000: cv = 500 / 1500 = 1/3;
    # sigma 0.03: xbar = 0.55 + 0.01 = 0.56; d_p = 0.34, d_q = 0.24; n * sigma^2 = 0.0036;
    # e = mu * m below both caps: e_q = 2 e_p and 5 e_p^2 = 0.0036
    e_p = math.sqrt(0.0036 / 5)
    expected = (0.34 - e_p) * 1000 + (0.24 - 2 * e_p) * 2000
    assert gib_lower_bound(s, 0.03) == pytest.approx(expected / 1024)


def test_moves_bound_by_hand() -> None:
    s = _loads(("a", 1000, 900, A), ("b", 1000, 500, A), ("c", 1000, 400, A))
    # as in the GiB case: xbar = 0.6, only a is hot (d = 0.3), e_a <= sqrt(0.0075) = 0.0866;
    # a's VMs are 100 MiB (0.1 of its load each): 0.3 - 0.1 k <= 0.0866 needs k = 3
    # (CPU: 1 core per VM on 32 cores, far inside a stddev of 1)
    assert moves_lower_bound(s, 1.0, 0.05) == 3
    s = _loads(
        ("a", 1000, 900, A),
        ("b", 1000, 500, A),
        ("c", 1000, 400, A),
        ("m", 1000, 300, HostState.MAINTENANCE),
    )
    # the 3 VMs of m, and xbar = 0.7: 0.2 - 0.1 k <= 0.0866 needs k = 2
    assert moves_lower_bound(s, 1.0, 0.05) == 5
    assert moves_lower_bound(s, 1.0, 1.0) == 3


def test_moves_bound_takes_the_largest_vms_and_the_resource_that_asks_more() -> None:
    hosts = [make_host(n, memory_mib=1000, cpu_cores=10) for n in "ab"]
    vms = [make_vm("big", "a", memory_mib=400, cpu_used_cores=0.1)]
    vms += [make_vm(f"s{k}", "a", memory_mib=50, cpu_used_cores=1.0) for k in range(8)]
    s = make_snapshot(hosts, vms)
    # memory: a 0.8, b 0, xbar 0.4, d_a 0.4; budget 2 * 0.01^2: the big VM alone leaves
    # e_a = 0, one move. CPU: a 8.1 / 10, xbar 0.405, d_a 0.405; each small VM lowers it by
    # 0.1: 0.405 - 0.1 k <= sqrt(0.0002) = 0.0141 needs k = 4
    assert moves_lower_bound(s, 1.0, 0.01) == 1
    assert moves_lower_bound(s, 0.01, 1.0) == 4
    assert moves_lower_bound(s, 0.01, 0.01) == 4


def test_bound_uses_an_upper_bound_on_the_final_mean() -> None:
    """Two hosts of 1 and 3 units at loads 0.9 and 0.5 already have stddev 0.2: the empty plan
    reaches it, so the bound must be 0 (with the capacity-weighted mean 0.6 as the final mean,
    host a would have to send (0.3 - sqrt(0.08)) units)."""
    s = _loads(("a", 1000, 900, A), ("b", 3000, 1500, A))
    assert figures(s, (), s).mem_stddev == pytest.approx(0.2)
    assert gib_lower_bound(s, 0.2) == 0.0


STATES = [A] * 5 + [
    HostState.MAINTENANCE,
    HostState.ENTERING_MAINTENANCE,
    HostState.QUARANTINED,
    HostState.UNREACHABLE,
]


@st.composite
def clusters(draw: st.DrawFn, states: list[HostState] = STATES) -> Snapshot:
    n_hosts = draw(st.integers(2, 6))
    hosts = [
        make_host(
            f"h{i}",
            memory_mib=draw(st.sampled_from([8192, 16384, 32768])),
            state=A if i == 0 else draw(st.sampled_from(states)),
        )
        for i in range(n_hosts)
    ]
    vms = [
        make_vm(
            f"v{j}",
            f"h{draw(st.integers(0, n_hosts - 1))}",
            memory_mib=draw(st.sampled_from([512, 1024, 2048, 4096])),
            cpu_used_cores=draw(st.sampled_from([0.25, 1.0, 2.0, 4.0])),
        )
        for j in range(draw(st.integers(0, 14)))
    ]
    return make_snapshot(hosts, vms)


@settings(max_examples=300, deadline=None)
@given(clusters(), st.randoms(use_true_random=False))
def test_bound_never_exceeds_what_a_placement_moved(s: Snapshot, rnd: random.Random) -> None:
    """Any end placement that empties the hosts to be emptied: the bound at its own memory
    stddev is at most its GiB (VMs may leave active and quarantined hosts, not unreachable
    ones), and the bound falls as the target stddev rises."""
    active = [h.name for h in s.hosts if h.state is A]
    hosts = s.host_map()
    placement = {}
    for v in s.vms:
        state = hosts[v.host].state
        if state.must_evacuate or (state.can_send and rnd.random() < 0.5):
            placement[v.name] = rnd.choice(active)
    after = s.with_placement(placement)
    f = figures(s, _moves(s, placement), after)
    note(f"placement {placement}, figures {f}")
    bound = gib_lower_bound(s, f.mem_stddev)
    assert bound <= f.gib + 1e-9
    assert moves_lower_bound(s, f.cpu_stddev, f.mem_stddev) <= f.moves
    assert gib_lower_bound(s, f.mem_stddev + 0.05) <= bound + 1e-12
    evacuated = sum(v.memory_mib for v in s.vms if hosts[v.host].state.must_evacuate) / 1024
    assert bound >= evacuated - 1e-12


@settings(
    max_examples=12,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
@given(clusters(states=[A] * 3 + [HostState.MAINTENANCE]), st.integers(1, 5))
def test_bound_never_exceeds_the_gib_of_a_real_plan(s: Snapshot, threshold: int) -> None:
    pol = policy(threshold=threshold)
    plan = make_plan(s, pol, time_limit_s=1.0, seed=1)
    assert not validate_plan(s, pol, plan)
    after = end_state(s, plan)
    left = [v for v in after.vms if s.host(v.host).state.must_evacuate]
    assume(not left)  # the bound is for plans that empty the maintenance hosts
    f = figures(s, plan.moves, after)
    note(f"plan {plan.moves}, figures {f}")
    assert gib_lower_bound(s, f.mem_stddev) <= f.gib + 1e-9
    assert moves_lower_bound(s, f.cpu_stddev, f.mem_stddev) <= f.moves
