"""Threshold semantics, defined in ONE place (documented in docs/optimizer.md).

The policy's ``threshold`` (1..5, DRS-style "migration threshold") sets two things:

* ``target_imbalance``: the imbalance (weighted stddev of host loads, see
  :mod:`balancer.optimizer.metrics`) at or below which the cluster counts as balanced. At or
  below it no balancing move is made. Threshold 1 has no target: only mandatory moves
  (maintenance evacuation, quarantine evacuation, hard-rule repair) are ever made.
* the cost-benefit rule: a balancing move is worth making only when it lowers the *total load
  deviation* (the sum over hosts of ``|load - cluster average|``, weighted per resource) by
  more than its cost: ``move_cost + copy_cost_per_gib x GiB copied``. Higher thresholds accept
  smaller benefits. The optimizer minimises ``deviation + max-load term + sum(move costs)``,
  so this rule is part of its objective and not a filter bolted on afterwards.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from balancer.model import VM


@dataclass(frozen=True, slots=True, kw_only=True)
class ThresholdRule:
    threshold: int
    #: imbalance at or below which no balancing move is made (inf: never balance)
    target_imbalance: float
    #: fixed cost of one balancing move, in units of total load deviation
    move_cost: float
    #: extra cost per GiB copied (memory x dirty-rate factor), same units
    copy_cost_per_gib: float

    @property
    def balances(self) -> bool:
        return math.isfinite(self.target_imbalance)


#: threshold -> rule. 1 = mandatory moves only; 5 = most aggressive.
THRESHOLDS: dict[int, ThresholdRule] = {
    1: ThresholdRule(threshold=1, target_imbalance=math.inf, move_cost=0.0, copy_cost_per_gib=0.0),
    2: ThresholdRule(threshold=2, target_imbalance=0.20, move_cost=0.010, copy_cost_per_gib=4e-4),
    3: ThresholdRule(threshold=3, target_imbalance=0.10, move_cost=0.004, copy_cost_per_gib=2e-4),
    4: ThresholdRule(threshold=4, target_imbalance=0.05, move_cost=0.002, copy_cost_per_gib=1e-4),
    5: ThresholdRule(threshold=5, target_imbalance=0.01, move_cost=0.001, copy_cost_per_gib=5e-5),
}

#: a cycle's balancing moves are made only when they lower the imbalance by at least this share
#: of its current value, or lower the highest host load by at least MIN_MAX_LOAD_GAIN. This is
#: the hysteresis that keeps a near-target cluster still: without it a time-limited solve that
#: stopped a little short of its optimum would be followed, next cycle, by a few moves of
#: negligible gain (Proxmox's balancer uses the same idea: a minimum-improvement margin).
MIN_RELATIVE_GAIN = 0.10
MIN_MAX_LOAD_GAIN = 0.05

#: a VM that stays on a host violating one of its soft (should/should_not) rules costs this,
#: in units of total load deviation (so a soft rule outweighs a few moves, not a hot host)
SOFT_RULE_PENALTY = 0.25

#: reference link speed for the dirty-rate factor when the policy sets no bandwidth limit
REFERENCE_BANDWIDTH_MIB_S = 1000


def worth_a_cycle(
    imbalance_before: float, imbalance_after: float, max_load_before: float, max_load_after: float
) -> bool:
    """Whether a cycle's balancing moves improve enough to be made at all."""
    if imbalance_before - imbalance_after >= MIN_RELATIVE_GAIN * imbalance_before:
        return True
    return max_load_before - max_load_after >= MIN_MAX_LOAD_GAIN


def threshold_rule(threshold: int) -> ThresholdRule:
    """The rule for a threshold (values outside 1..5 are clamped)."""
    return THRESHOLDS[max(1, min(5, threshold))]


def copied_gib(vm: VM, bandwidth_mib_s: int) -> float:
    """Expected GiB copied by a live migration: memory, raised by the dirty rate.

    Pre-copy re-sends dirtied pages; with link bandwidth B and dirty rate D the total is about
    ``memory / (1 - D/B)`` (capped at 4x memory when D nears B), times the VM's
    ``copy_factor``: what its past migrations really copied against this model's figure.
    """
    bandwidth = bandwidth_mib_s or REFERENCE_BANDWIDTH_MIB_S
    dirty = vm.dirty_rate_mib_s or 0.0
    factor = 1.0 / max(0.25, 1.0 - dirty / bandwidth)
    return vm.memory_mib * factor * vm.copy_factor / 1024.0


def balance_move_cost(rule: ThresholdRule, vm: VM, bandwidth_mib_s: int) -> float:
    """Cost of moving ``vm`` for balance, in units of total load deviation."""
    return rule.move_cost + rule.copy_cost_per_gib * copied_gib(vm, bandwidth_mib_s)
