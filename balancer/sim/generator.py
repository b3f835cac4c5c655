"""Seeded generator of realistic synthetic clusters (pure: a seed in, a snapshot out).

Mixed host sizes, two or three CPU generations (newer generations have a superset of the
older ones' features), VMs of common sizes whose CPU model is pinned to a generation, and a
skewed load: a few hot hosts carry much more measured CPU than the rest. The initial
placement is valid for memory and CPU features (it is how a real cluster looks after months of
placements), but not balanced.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from balancer.model import VM, Host, Snapshot

#: CPU generations, oldest first; each has every feature of the ones before it
CPU_GENERATIONS: tuple[tuple[str, frozenset[str]], ...] = (
    ("gen1", frozenset({"sse4_2", "popcnt", "aes", "avx"})),
    ("gen2", frozenset({"sse4_2", "popcnt", "aes", "avx", "avx2", "fma", "bmi2"})),
    (
        "gen3",
        frozenset(
            {
                "sse4_2",
                "popcnt",
                "aes",
                "avx",
                "avx2",
                "fma",
                "bmi2",
                "avx512f",
                "avx512bw",
                "avx512vl",
            }
        ),
    ),
)

#: (cpu_cores, memory_mib, weight)
HOST_SIZES: tuple[tuple[int, int, int], ...] = (
    (32, 256 * 1024, 3),
    (48, 384 * 1024, 2),
    (64, 512 * 1024, 2),
    (96, 768 * 1024, 1),
)

#: (vcpus, memory_mib, weight)
VM_SIZES: tuple[tuple[int, int, int], ...] = (
    (1, 2048, 4),
    (2, 4096, 6),
    (4, 8192, 5),
    (8, 16384, 2),
    (16, 32768, 1),
)

APPS = ("web", "db", "cache", "batch", "api", "queue")


@dataclass(frozen=True, slots=True, kw_only=True)
class GeneratorSpec:
    hosts: int = 8
    vms: int = 200
    seed: int = 1
    generations: int = 3
    #: share of hosts that are "hot" (carry skewed CPU load)
    hot_share: float = 0.15
    #: target average memory fill of the cluster (configured VM memory / host memory)
    memory_fill: float = 0.55
    #: target average CPU load of the cluster (measured demand / cores)
    cpu_fill: float = 0.40


def _pick(rng: random.Random, table: tuple[tuple[int, int, int], ...]) -> tuple[int, int]:
    a, b, _ = rng.choices(table, weights=[w for *_, w in table])[0]
    return a, b


def generate(spec: GeneratorSpec) -> Snapshot:
    """Generate a cluster of ``spec.hosts`` hosts and about ``spec.vms`` VMs."""
    rng = random.Random(spec.seed)
    gens = CPU_GENERATIONS[-max(1, min(spec.generations, len(CPU_GENERATIONS))) :]
    hosts: list[Host] = []
    width = max(2, len(str(spec.hosts)))
    for i in range(spec.hosts):
        cores, mem = _pick(rng, HOST_SIZES)
        gen_name, feats = gens[i % len(gens)]
        hosts.append(
            Host(
                name=f"h{i + 1:0{width}d}",
                cpu_cores=cores,
                memory_mib=mem,
                cpu_features=feats,
                labels={"rack": f"r{i % 4 + 1}", "cpu_gen": gen_name},
            )
        )
    total_cores = sum(h.cpu_cores for h in hosts)
    total_mem = sum(h.memory_mib for h in hosts)

    # scale VM sizes so that the requested count fills memory to about memory_fill
    raw = [_pick(rng, VM_SIZES) for _ in range(spec.vms)]
    raw_mem = sum(m for _, m in raw) or 1
    scale = max(0.125, min(4.0, spec.memory_fill * total_mem / raw_mem))
    sizes = [(vc, max(512, int(m * scale) // 512 * 512)) for vc, m in raw]

    hot_count = max(1, round(spec.hot_share * spec.hosts)) if spec.hosts > 1 else 0
    hot = set(rng.sample(range(spec.hosts), hot_count)) if hot_count else set()
    free_mem = [int(h.memory_mib * 0.92) for h in hosts]
    # per-VM base CPU use so that the cluster ends near cpu_fill
    total_vcpus = sum(vc for vc, _ in sizes) or 1
    base_util = spec.cpu_fill * total_cores / total_vcpus

    vms: list[VM] = []
    width_v = max(3, len(str(spec.vms)))
    order = list(range(spec.vms))
    for j in order:
        vcpus, mem = sizes[j]
        gen_idx = rng.randrange(len(gens))
        feats = gens[gen_idx][1]
        candidates = [
            i for i, h in enumerate(hosts) if feats <= h.cpu_features and free_mem[i] >= mem
        ]
        if not candidates:
            continue
        # hot hosts attract VMs: placement skew is what produces the imbalance
        weights = [(3.0 if i in hot else 1.0) * free_mem[i] for i in candidates]
        i = rng.choices(candidates, weights=weights)[0]
        free_mem[i] -= mem
        util = base_util * rng.uniform(0.3, 1.7) * (1.8 if i in hot else 1.0)
        cpu_used = round(min(float(vcpus), vcpus * util), 3)
        app = rng.choice(APPS)
        vms.append(
            VM(
                name=f"vm{j + 1:0{width_v}d}",
                host=hosts[i].name,
                vcpus=vcpus,
                memory_mib=mem,
                cpu_used_cores=cpu_used,
                memory_used_mib=int(mem * rng.uniform(0.4, 0.95)),
                cpu_features=feats,
                labels={"app": app},
                dirty_rate_mib_s=round(rng.uniform(1.0, 60.0), 1),
            )
        )
    return Snapshot(hosts=tuple(hosts), vms=tuple(vms))
