"""The placement optimizer (pure): filters, CP-SAT model, heuristic warm start, metrics,
threshold semantics, infeasibility explanation, the migration assistant and the validator.

Entry points: :func:`optimize` (target placement with reasons), :func:`assist` (ranked targets
for one VM), :func:`validate_plan` (independent step-by-step check of a plan). The ordered,
executable plan comes from :func:`balancer.planner.make_plan`.
"""

from __future__ import annotations

from balancer.optimizer.assist import Assistance, assist
from balancer.optimizer.core import Solution, optimize
from balancer.optimizer.validate import Violation, validate_plan

__all__ = ["Assistance", "Solution", "Violation", "assist", "optimize", "validate_plan"]
