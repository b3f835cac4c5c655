"""The plan's JSON form (``balancer plan --json``), read back by ``balancer execute``.

Format version 1::

    {"version": 1, "status": "moves",
     "moves": [{"vm": "vm1", "source": "h1", "target": "h2", "step": 0, "reason": "balance",
                "gain": 0.2}],
     "blocked": [{"vm": "vm9", "reason": "cpu_incompatible", "detail": "...", "rule": "r"}],
     "before": {"imbalance": 0.3, "cpu_stddev": ..., "memory_stddev": ..., "max_cpu_load": ...,
                "max_memory_load": ...},
     "after": {...}, "solve_seconds": 0.4, "conflicts": ["rule-a"], "made_at": "2026-...Z",
     "violations": [{"rule": "apart", "kind": "anti_affinity", "cause": "needs_concurrency",
                     "vms": ["vm3"], "hosts": ["h2"], "needed": 3, "message": "..."}],
     "soft_violations": [{"rule": "web-apart", "kind": "anti_affinity", "mode": "should",
                          "vms": ["web1", "web2"], "hosts": ["h1"]}]}

``status`` is one of moves, balanced, partial (a hard rule stays violated at the end: each
one is in ``violations`` with its cause) and infeasible; ``violations`` is optional (plans
written before it existed are read as having none); so is ``soft_violations``, the soft rules
(``should`` / ``should_not``) the end state still breaks, which are allowed.

Only ``moves`` is required (``vm``, ``source`` and ``target`` of each move); the rest is
optional. A document without ``version`` is read as version 1 (the format written before the
field existed); any other version is refused. Unknown keys are refused, every number is finite
and bounded, and every error names the file, the item (``moves[3]``) and the field. The file
is read through :mod:`balancer.inputs` (regular file, at most 64 MiB, strict UTF-8).
"""

from __future__ import annotations

import math
from enum import StrEnum
from pathlib import Path
from typing import Any, TypeVar

from balancer.errors import InputError
from balancer.inputs import PLAN, HugeNumber, load_json, printable
from balancer.plan import (
    Blocked,
    BlockedReason,
    Metrics,
    Move,
    MoveReason,
    Plan,
    PlanStatus,
    SoftViolation,
    Violation,
    ViolationCause,
    parse_reason_label,
)
from policies.model import RuleKind, RuleMode


def _metrics(m: Metrics) -> dict[str, float]:
    return {
        "imbalance": round(m.imbalance, 6),
        "cpu_stddev": round(m.cpu_stddev, 6),
        "memory_stddev": round(m.memory_stddev, 6),
        "max_cpu_load": round(m.max_cpu_load, 6),
        "max_memory_load": round(m.max_memory_load, 6),
    }


PLAN_VERSION = 1
#: a plan holds at most this many moves (and as many blocked VMs)
MAX_ITEMS = 1_000_000
_METRICS = ("imbalance", "cpu_stddev", "memory_stddev", "max_cpu_load", "max_memory_load")
_TOP = ("version", "status", "moves", "blocked", "before", "after", "solve_seconds", "conflicts")
_TOP_OPTIONAL = (*_TOP, "made_at", "violations", "soft_violations")
_MOVE = ("vm", "source", "target", "step", "reason", "gain")
_BLOCKED = ("vm", "reason", "detail", "rule")
_E = TypeVar("_E", bound=StrEnum)
_VIOLATION = ("rule", "kind", "cause", "vms", "hosts", "needed", "message")
_SOFT = ("rule", "kind", "mode", "vms", "hosts")
#: the modes of a soft rule
_SOFT_MODES = ("should", "should_not")


def violation_to_dict(v: Violation) -> dict[str, Any]:
    """One violation as written in plans, the service's status and the API."""
    return (
        {
            "rule": v.rule,
            "kind": v.kind.value,
            "cause": v.cause.value,
            "vms": list(v.vms),
            "hosts": list(v.hosts),
        }
        | ({"needed": v.needed} if v.needed else {})
        | ({"message": v.message} if v.message else {})
    )


def plan_to_dict(plan: Plan) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "version": PLAN_VERSION,
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
    if plan.violations:
        doc["violations"] = [violation_to_dict(v) for v in plan.violations]
    if plan.soft_violations:
        doc["soft_violations"] = [
            {"rule": s.rule, "kind": s.kind.value, "mode": s.mode.value, "vms": list(s.vms)}
            | {"hosts": list(s.hosts)}
            for s in plan.soft_violations
        ]
    if plan.causes:
        doc["causes"] = [
            {"code": c.code, "kind": c.kind.value, "rules": list(c.rules), "vms": list(c.vms)}
            | {"message": c.message}
            for c in plan.causes
        ]
    return doc


class _Reader:
    def __init__(self, source: str) -> None:
        self.source = source

    def fail(self, message: str, item: str | None = None, field: str | None = None) -> InputError:
        where = ": ".join(x for x in (self.source, item, field) if x)
        return InputError(f"{where}: {message}", subject=item or self.source)

    def obj(self, v: Any, item: str, allowed: tuple[str, ...]) -> dict[str, Any]:
        if not isinstance(v, dict):
            raise self.fail(f"must be a JSON object, got {_kind(v)}", item)
        unknown = sorted(k for k in v if k not in allowed)
        if unknown:
            raise self.fail(
                f"unknown key (allowed: {', '.join(allowed)})", item, printable(unknown[0])
            )
        return v

    def text(self, d: dict[str, Any], key: str, item: str, *, default: str | None = None) -> str:
        v = d.get(key, default)
        if not isinstance(v, str) or not v.strip():
            what = "is required" if key not in d else f"must be a non-empty string, got {_kind(v)}"
            raise self.fail(what, item, key)
        if len(v) > 1000:
            raise self.fail(f"a {len(v)}-character string is too long (at most 1000)", item, key)
        return v

    def number(self, d: dict[str, Any], key: str, item: str, *, low: float, high: float) -> float:
        v = d.get(key, 0.0)
        if isinstance(v, HugeNumber):
            raise self.fail(f"{v!r} is out of range", item, key)
        if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v):
            raise self.fail(f"must be a finite number, got {_kind(v)}", item, key)
        if not low <= v <= high:
            raise self.fail(f"{v} is outside {low:g}..{high:g}", item, key)
        return float(v)

    def items(self, d: dict[str, Any], key: str) -> list[Any]:
        v = d.get(key, [])
        if not isinstance(v, list):
            raise self.fail(f"must be a list, got {_kind(v)}", None, key)
        if len(v) > MAX_ITEMS:
            raise self.fail(f"{len(v)} items: more than {MAX_ITEMS}", None, key)
        return v

    def names(self, d: dict[str, Any], key: str, item: str) -> tuple[str, ...]:
        v = d.get(key, [])
        if not isinstance(v, list):
            raise self.fail(f"must be a list of names, got {_kind(v)}", item, key)
        if len(v) > MAX_ITEMS:
            raise self.fail(f"{len(v)} items: more than {MAX_ITEMS}", item, key)
        out = []
        for i, n in enumerate(v):
            if not isinstance(n, str) or not n.strip() or len(n) > 1000:
                raise self.fail(f"must be a name, got {_kind(n)}", item, f"{key}[{i}]")
            out.append(n)
        return tuple(out)

    def choice(self, d: dict[str, Any], key: str, item: str, allowed: tuple[str, ...]) -> str:
        v = self.text(d, key, item)
        if v not in allowed:
            raise self.fail(f"unknown {key} {v[:60]!r} (one of {', '.join(allowed)})", item, key)
        return v

    def metrics(self, d: dict[str, Any], key: str) -> Metrics:
        if d.get(key) is None:
            return Metrics(**dict.fromkeys(_METRICS, 0.0))
        m = self.obj(d[key], key, _METRICS)
        for k in _METRICS:
            if k not in m:
                raise self.fail("is required", key, k)
        return Metrics(**{k: self.number(m, k, key, low=0.0, high=1e6) for k in _METRICS})


def _kind(v: Any) -> str:
    if isinstance(v, HugeNumber):
        return repr(v)
    if v is None or isinstance(v, bool | int | float):
        return repr(v) if len(repr(v)) <= 40 else type(v).__name__
    if isinstance(v, str) and len(v) <= 40:
        return repr(v)
    names: dict[type, str] = {str: "a string", list: "a list", dict: "an object"}
    return names.get(type(v), type(v).__name__)


def _parse_reason(label: str, r: _Reader, where: str) -> tuple[MoveReason, str | None]:
    try:
        return parse_reason_label(label)
    except ValueError:
        raise r.fail(f"unknown reason {label[:60]!r}", where, "reason") from None


def plan_from_dict(doc: Any, *, source: str = "<plan>") -> Plan:
    """Validate and parse a plan document (format version 1, see the module docstring);
    errors name the file, the item and the field."""
    r = _Reader(source)
    top = r.obj(doc, "plan", _TOP_OPTIONAL)
    version = top.get("version", PLAN_VERSION)
    if type(version) is not int or version != PLAN_VERSION:
        raise r.fail(
            f"unsupported version {_kind(version)} (this build reads version {PLAN_VERSION})",
            None,
            "version",
        )
    if "moves" not in top:
        raise r.fail("is required", None, "moves")
    status_raw = top.get("status", PlanStatus.MOVES.value)
    try:
        status = PlanStatus(status_raw)
    except (ValueError, TypeError):
        raise r.fail(
            f"unknown status {_kind(status_raw)} (one of {', '.join(s.value for s in PlanStatus)})",
            None,
            "status",
        ) from None
    moves = []
    for i, raw in enumerate(r.items(top, "moves")):
        where = f"moves[{i}]"
        m = r.obj(raw, where, _MOVE)
        vm, src, dst = (r.text(m, k, where) for k in ("vm", "source", "target"))
        if src == dst:
            raise r.fail(f"the same host as source ({src!r})", where, "target")
        reason, rule = _parse_reason(r.text(m, "reason", where, default="balance"), r, where)
        step = m.get("step", 0)
        if isinstance(step, bool) or not isinstance(step, int) or not 0 <= step <= MAX_ITEMS:
            raise r.fail(f"must be a whole number 0..{MAX_ITEMS}, got {_kind(step)}", where, "step")
        gain = r.number(m, "gain", where, low=-1e6, high=1e6)
        moves.append(
            Move(vm=vm, source=src, target=dst, step=step, reason=reason, rule=rule, gain=gain)
        )
    blocked = []
    for i, raw in enumerate(r.items(top, "blocked")):
        where = f"blocked[{i}]"
        b = r.obj(raw, where, _BLOCKED)
        reason_raw = r.text(b, "reason", where)
        try:
            why = BlockedReason(reason_raw)
        except ValueError:
            raise r.fail(f"unknown reason {reason_raw[:60]!r}", where, "reason") from None
        detail = r.text(b, "detail", where) if b.get("detail") not in (None, "") else ""
        rule = r.text(b, "rule", where) if b.get("rule") is not None else None
        blocked.append(Blocked(vm=r.text(b, "vm", where), reason=why, detail=detail, rule=rule))
    conflicts = []
    for i, c in enumerate(r.items(top, "conflicts")):
        if not isinstance(c, str) or not c:
            raise r.fail(f"must be a rule name, got {_kind(c)}", f"conflicts[{i}]")
        conflicts.append(c)
    violations = [
        _violation(r, raw, f"violations[{i}]") for i, raw in enumerate(r.items(top, "violations"))
    ]
    soft = []
    for i, raw in enumerate(r.items(top, "soft_violations")):
        where = f"soft_violations[{i}]"
        s = r.obj(raw, where, _SOFT)
        soft.append(
            SoftViolation(
                rule=r.text(s, "rule", where),
                kind=_choice(r, s, "kind", where, RuleKind),
                mode=RuleMode(r.choice(s, "mode", where, _SOFT_MODES)),
                vms=r.names(s, "vms", where),
                hosts=r.names(s, "hosts", where),
            )
        )
    if "made_at" in top and top["made_at"] is not None and not isinstance(top["made_at"], str):
        raise r.fail(
            f"must be an ISO date-time string, got {_kind(top['made_at'])}", None, "made_at"
        )
    return Plan(
        status=status,
        moves=tuple(moves),
        blocked=tuple(blocked),
        before=r.metrics(top, "before"),
        after=r.metrics(top, "after"),
        solve_seconds=r.number(top, "solve_seconds", "plan", low=0.0, high=1e6),
        conflicts=tuple(conflicts),
        violations=tuple(violations),
        soft_violations=tuple(soft),
    )


def _violation(r: _Reader, raw: Any, where: str) -> Violation:
    d = r.obj(raw, where, _VIOLATION)
    kind = _choice(r, d, "kind", where, RuleKind)
    cause = _choice(r, d, "cause", where, ViolationCause)
    names: dict[str, tuple[str, ...]] = {}
    for key in ("vms", "hosts"):
        items = d.get(key, [])
        if not isinstance(items, list) or len(items) > MAX_ITEMS:
            raise r.fail(f"must be a list of names, got {_kind(items)}", where, key)
        names[key] = tuple(r.text({key: x}, key, f"{where}.{key}") for x in items)
    needed = d.get("needed", 0)
    if isinstance(needed, bool) or not isinstance(needed, int) or not 0 <= needed <= MAX_ITEMS:
        raise r.fail(f"must be a whole number 0..{MAX_ITEMS}, got {_kind(needed)}", where, "needed")
    message = r.text(d, "message", where) if d.get("message") not in (None, "") else ""
    return Violation(
        rule=r.text(d, "rule", where),
        kind=kind,
        cause=cause,
        vms=names["vms"],
        hosts=names["hosts"],
        needed=needed,
        message=message,
    )


def _choice(r: _Reader, d: dict[str, Any], key: str, where: str, enum: type[_E]) -> _E:
    raw = r.text(d, key, where)
    try:
        return enum(raw)
    except ValueError:
        allowed = ", ".join(e.value for e in enum)
        raise r.fail(f"unknown {key} {raw[:60]!r} (one of {allowed})", where, key) from None


def read_plan_file(path: str | Path) -> tuple[Plan, dict[str, Any]]:
    """Read (:mod:`balancer.inputs`) and validate a plan file: the plan and its document."""
    doc = load_json(path, PLAN)
    plan = plan_from_dict(doc, source=str(path))
    return plan, doc


def load_plan(path: str | Path) -> Plan:
    return read_plan_file(path)[0]
