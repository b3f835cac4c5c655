"""Load policy files (one file or a directory of ``*.yaml``/``*.yml``) into a pure Policy.

Every error names the file, the line and the field: YAML is composed into nodes first so that
a pydantic error location (``rules.2.mode``) can be mapped back to the line it came from.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import yaml

from balancer.errors import PolicyError
from balancer.inputs import MAX_POLICY_FILES, POLICY, check_regular, files_in, read_text
from balancer.yamlfile import line_of, validate_yaml
from policies.model import (
    Automation,
    Goal,
    Health,
    Limits,
    MigrationSettings,
    Policy,
    Predictive,
    PsiThresholds,
    Resources,
    Rule,
    RuleKind,
    RuleMode,
    Selector,
    SoftRules,
    Window,
    WindowMode,
)
from policies.schema import PolicyDoc, SelectorDoc
from policies.windows import trigger

SINGLE_KEYS = (
    "automation",
    "threshold",
    "goal",
    "balance",
    "headroom",
    "limits",
    "cooldown_minutes",
    "cooldown_max_minutes",
    "migration",
    "soft_rules",
    "predictive",
    "timezone",
    "health",
)


def parse_policy_text(text: str, path: str) -> PolicyDoc:
    """Parse one policy file's text; raises PolicyError with file, line and field."""
    return validate_yaml(text, path, PolicyDoc)[0]


def _selector(raw: list[str] | SelectorDoc | str) -> Selector:
    if isinstance(raw, str):
        return Selector(names=frozenset({raw}))
    if isinstance(raw, list):
        return Selector(names=frozenset(raw))
    return Selector(names=frozenset(raw.names), labels=dict(sorted(raw.labels.items())))


def _files(paths: Sequence[str | Path]) -> list[Path]:
    """The policy files named by ``paths``: files, and the ``*.yaml``/``*.yml`` of directories
    (see :func:`balancer.inputs.files_in`: a FIFO or device in a directory is refused)."""
    out: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            found = files_in(p, ("*.yaml", "*.yml"), POLICY, MAX_POLICY_FILES)
            if not found:
                raise PolicyError("the directory holds no *.yaml policy file", path=str(p))
            out.extend(found)
        else:
            try:
                exists = p.exists() or p.is_symlink()
            except (OSError, ValueError):
                exists = True  # let check_regular say what is wrong with the path
            if not exists:
                raise PolicyError("no such file or directory", path=str(p))
            check_regular(p, POLICY)
            out.append(p)
    return out


def _rule_lines(node: yaml.Node | None, key: str = "rules") -> list[int]:
    lines: list[int] = []
    if isinstance(node, yaml.MappingNode):
        for k, v in node.value:
            if k.value == key and isinstance(v, yaml.SequenceNode):
                lines = [item.start_mark.line + 1 for item in v.value]
    return lines


def load_policy(paths: Sequence[str | Path]) -> Policy:
    """Load, validate and merge policy files into one Policy (with its content digest)."""
    files = _files(paths)
    if not files:
        raise PolicyError("no policy file given")
    given: dict[str, tuple[str, Any]] = {}
    key_lines: dict[str, int | None] = {}
    rules: list[Rule] = []
    exclude: list[Selector] = []
    seen_rules: dict[str, str] = {}
    windows: list[tuple[Window, str, int | None, int]] = []  # (window, file, line, index)
    seen_windows: dict[str, str] = {}
    digest = hashlib.sha256()
    for f in files:
        text = read_text(f, POLICY)
        digest.update(f.name.encode() + b"\0" + text.encode() + b"\0")
        doc, node = validate_yaml(text, str(f), PolicyDoc)
        for key in SINGLE_KEYS:
            value = getattr(doc, key)
            if value is None:
                continue
            if key in given:
                raise PolicyError(
                    f"also set in {given[key][0]}; each setting may be given by one file only",
                    path=str(f),
                    line=line_of(node, [key]),
                    field=key,
                )
            given[key] = (str(f), value)
            key_lines[key] = line_of(node, [key])
        lines = _rule_lines(node)
        for i, r in enumerate(doc.rules):
            line = lines[i] if i < len(lines) else None
            origin = f"{f}:{line}" if line else str(f)
            if r.name in seen_rules:
                raise PolicyError(
                    f"rule name {r.name!r} is already used at {seen_rules[r.name]}",
                    path=str(f),
                    line=line,
                    field=f"rules[{i}].name",
                )
            seen_rules[r.name] = origin
            rules.append(
                Rule(
                    name=r.name,
                    kind=RuleKind(r.kind),
                    vms=_selector(r.vms),
                    hosts=_selector(r.hosts) if r.hosts is not None else Selector(),
                    mode=RuleMode(r.mode) if r.mode else RuleMode.MUST,
                    origin=origin,
                )
            )
        exclude.extend(_selector(e) for e in doc.exclude)
        wlines = _rule_lines(node, "windows")
        for i, w in enumerate(doc.windows):
            line = wlines[i] if i < len(wlines) else None
            origin = f"{f}:{line}" if line else str(f)
            if w.name in seen_windows:
                raise PolicyError(
                    f"window name {w.name!r} is already used at {seen_windows[w.name]}",
                    path=str(f),
                    line=line,
                    field=f"windows[{i}].name",
                )
            seen_windows[w.name] = origin
            window = Window(
                name=w.name,
                mode=WindowMode(w.mode),
                cron=w.cron,
                duration_minutes=w.duration_minutes,
                origin=origin,
            )
            windows.append((window, str(f), line, i))

    def pick(key: str) -> Any:
        return given[key][1] if key in given else None

    base = Policy()
    cooldown = pick("cooldown_minutes")
    cooldown = cooldown if cooldown is not None else base.cooldown_minutes
    cooldown_max = pick("cooldown_max_minutes")
    if cooldown_max is not None and cooldown_max < cooldown:
        raise PolicyError(
            f"{cooldown_max} is below cooldown_minutes ({cooldown}); the ceiling of the "
            "adaptive cooldown cannot be below its base",
            path=given["cooldown_max_minutes"][0],
            line=key_lines.get("cooldown_max_minutes"),
            field="cooldown_max_minutes",
        )
    if cooldown_max is None:  # not given: the default ceiling, or the base when it is above
        cooldown_max = max(base.cooldown_max_minutes, cooldown)
    timezone = pick("timezone") or base.timezone
    try:
        ZoneInfo(timezone)
    except (ZoneInfoNotFoundError, ValueError):
        raise PolicyError(
            f"unknown time zone {timezone!r} (an IANA name such as Europe/Berlin)",
            path=given["timezone"][0],
            line=key_lines.get("timezone"),
            field="timezone",
        ) from None
    for win, path, line, i in windows:
        try:
            trigger(win.cron, timezone)
        except ValueError as exc:
            raise PolicyError(
                f"window {win.name!r}: {exc} (a 5-field cron: minute hour day month weekday)",
                path=path,
                line=line,
                field=f"windows[{i}].cron",
            ) from None
    bal, head, lim, mig = pick("balance"), pick("headroom"), pick("limits"), pick("migration")
    pred = pick("predictive")
    health = pick("health")
    return Policy(
        automation=Automation(pick("automation") or base.automation),
        threshold=pick("threshold") or base.threshold,
        goal=Goal(pick("goal") or base.goal),
        balance=Resources(cpu=bal.cpu, memory=bal.memory) if bal else base.balance,
        headroom=Resources(cpu=head.cpu, memory=head.memory) if head else base.headroom,
        limits=Limits(**lim.model_dump()) if lim else base.limits,
        cooldown_minutes=cooldown,
        cooldown_max_minutes=cooldown_max,
        soft_rules=SoftRules(pick("soft_rules") or base.soft_rules),
        rules=tuple(rules),
        exclude=tuple(exclude),
        migration=MigrationSettings(**mig.model_dump()) if mig else base.migration,
        predictive=Predictive(**pred.model_dump()) if pred else base.predictive,
        windows=tuple(w for w, *_ in windows),
        timezone=timezone,
        health=_health(health) if health else base.health,
        digest=digest.hexdigest(),
    )


def _health(doc: Any) -> Health:
    values = doc.model_dump()
    psi = PsiThresholds(**values.pop("psi_some_avg60"))
    return Health(**values, psi_some_avg60=psi)


__all__ = ["load_policy", "parse_policy_text"]
