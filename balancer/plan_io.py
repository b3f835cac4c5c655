"""The plan's JSON form (``balancer plan --json``), read back by ``balancer execute``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from balancer.errors import InputError
from balancer.plan import Blocked, BlockedReason, Metrics, Move, MoveReason, Plan, PlanStatus


def _metrics(m: Metrics) -> dict[str, float]:
    return {
        "imbalance": round(m.imbalance, 6),
        "cpu_stddev": round(m.cpu_stddev, 6),
        "memory_stddev": round(m.memory_stddev, 6),
        "max_cpu_load": round(m.max_cpu_load, 6),
        "max_memory_load": round(m.max_memory_load, 6),
    }


def plan_to_dict(plan: Plan) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "status": plan.status.value,
        "moves": [
            {
                "vm": m.vm,
                "source": m.source,
                "target": m.target,
                "step": m.step,
                "reason": m.reason_label,
                "gain": round(m.gain, 6),
            }
            for m in plan.moves
        ],
        "blocked": [
            {"vm": b.vm, "reason": b.reason.value}
            | ({"detail": b.detail} if b.detail else {})
            | ({"rule": b.rule} if b.rule else {})
            for b in plan.blocked
        ],
        "before": _metrics(plan.before),
        "after": _metrics(plan.after),
        "solve_seconds": round(plan.solve_seconds, 3),
    }
    if plan.conflicts:
        doc["conflicts"] = list(plan.conflicts)
    if plan.causes:
        doc["causes"] = [
            {"code": c.code, "kind": c.kind.value, "rules": list(c.rules), "vms": list(c.vms)}
            | {"message": c.message}
            for c in plan.causes
        ]
    return doc


def _parse_reason(label: str, where: str) -> tuple[MoveReason, str | None]:
    if label.startswith("rule:"):
        return MoveReason.RULE, label[5:]
    try:
        return MoveReason(label), None
    except ValueError:
        raise InputError(f"{where}: reason: unknown reason {label!r}") from None


def plan_from_dict(doc: Any, *, source: str = "<plan>") -> Plan:
    """Parse a plan document; errors name the file, the item and the field."""
    if not isinstance(doc, dict):
        raise InputError(f"{source}: a plan is a JSON object")
    try:
        moves = []
        for i, m in enumerate(doc.get("moves", [])):
            where = f"{source}: moves[{i}]"
            for key in ("vm", "source", "target"):
                if not isinstance(m.get(key), str):
                    raise InputError(f"{where}: {key}: a string is required")
            reason, rule = _parse_reason(str(m.get("reason", "balance")), where)
            moves.append(
                Move(
                    vm=m["vm"],
                    source=m["source"],
                    target=m["target"],
                    step=int(m.get("step", 0)),
                    reason=reason,
                    rule=rule,
                    gain=float(m.get("gain", 0.0)),
                )
            )
        blocked = [
            Blocked(
                vm=str(b["vm"]),
                reason=BlockedReason(b["reason"]),
                detail=str(b.get("detail", "")),
                rule=b.get("rule"),
            )
            for b in doc.get("blocked", [])
        ]
        zero = {
            "imbalance": 0.0,
            "cpu_stddev": 0.0,
            "memory_stddev": 0.0,
            "max_cpu_load": 0.0,
            "max_memory_load": 0.0,
        }
        before = Metrics(**{k: float(v) for k, v in (doc.get("before") or zero).items()})
        after = Metrics(**{k: float(v) for k, v in (doc.get("after") or zero).items()})
        return Plan(
            status=PlanStatus(doc.get("status", "moves")),
            moves=tuple(moves),
            blocked=tuple(blocked),
            before=before,
            after=after,
            solve_seconds=float(doc.get("solve_seconds", 0.0)),
            conflicts=tuple(doc.get("conflicts", ())),
        )
    except InputError:
        raise
    except (KeyError, TypeError, ValueError) as exc:
        raise InputError(f"{source}: invalid plan: {exc}") from exc


def load_plan(path: str | Path) -> Plan:
    p = Path(path)
    try:
        doc = json.loads(p.read_text())
    except json.JSONDecodeError as exc:
        raise InputError(f"{p}:{exc.lineno}: not valid JSON: {exc.msg}") from exc
    return plan_from_dict(doc, source=str(p))
