"""``balancer serve`` and the client commands that talk to the running service's API.

Every client command takes ``--url`` (default: the settings' ``api.listen`` when
``--config`` is given, else http://127.0.0.1:8080), ``--token`` (or ``$BALANCER_TOKEN``) and
``--json``. Errors are one line and a non-zero exit (6 for a service error).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import quote

import click
import httpx

from balancer.cli.common import ID, handle_errors, json_option, one_line, print_json, print_table
from balancer.errors import InputError, ServiceError

F = TypeVar("F", bound=Callable[..., Any])
DEFAULT_URL = "http://127.0.0.1:8080"
DEFAULT_CONFIG = "config/balancer.yaml"


#: answers that say the request was wrong (a field, a body too large): the CLI exits 2
BAD_INPUT_STATUS = frozenset({400, 413, 422})

_RELATIVE = re.compile(r"\+(\d{1,6})([smhd])")
_UNIT_S = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_at(text: str, now: datetime) -> str:
    """``--at``: an ISO time with a zone, or ``+N`` seconds/minutes/hours/days from ``now``;
    returned as ISO text for the service."""
    m = _RELATIVE.fullmatch(text.strip())
    if m:
        return (now + timedelta(seconds=int(m[1]) * _UNIT_S[m[2]])).isoformat()
    try:
        when = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise InputError(
            f"--at {text!r}: not an ISO date and time with a zone, nor +N[smhd] from now"
        ) from None
    if when.tzinfo is None:
        raise InputError(f"--at {text!r}: give a zone (Z or +HH:MM)")
    return text


def _client_options(func: F) -> F:
    func = click.option(
        "--token",
        envvar="BALANCER_TOKEN",
        help="Bearer token (default: $BALANCER_TOKEN).",
    )(func)
    func = click.option(
        "--url",
        envvar="BALANCER_URL",
        default=None,
        help=f"The service's URL (default: api.listen of --config or ./{DEFAULT_CONFIG}, "
        f"else {DEFAULT_URL}).",
    )(func)
    func = click.option(
        "--config",
        "config_path",
        type=click.Path(dir_okay=False),
        default=None,
        help="Settings file to take the URL from.",
    )(func)
    return func


def check_url(url: str, what: str = "--url") -> str:
    """The service's base URL, or :class:`InputError` (exit 2): http(s), a host, a valid port."""
    try:
        parsed = httpx.URL(url)
        port = parsed.port
    except (httpx.InvalidURL, ValueError, TypeError) as exc:
        raise InputError(f"{what} {url!r}: not a valid URL ({one_line(str(exc))})") from None
    if parsed.scheme not in ("http", "https"):
        raise InputError(f"{what} {url!r}: use http://HOST:PORT or https://HOST:PORT")
    if not parsed.host:
        raise InputError(f"{what} {url!r}: the URL has no host")
    if port is not None and not 0 < port < 65536:
        raise InputError(f"{what} {url!r}: port {port} is out of range 1-65535")
    return url.rstrip("/")


def check_token(token: str) -> str:
    """A bearer token goes into an HTTP header: printable ASCII only (RFC 6750), else exit 2.
    The message gives the position of the first bad character, never the token itself."""
    for i, ch in enumerate(token):
        if not "!" <= ch <= "~":
            raise InputError(
                f"--token (or $BALANCER_TOKEN): character {i + 1} is not printable ASCII "
                f"(U+{ord(ch):04X}); a bearer token has only printable ASCII characters"
            )
    return token


def check_name(value: str, what: str) -> str:
    """A VM, host or task name given on the command line: not empty, no control characters,
    at most 200 characters (else exit 2); quoted when it goes into a URL path."""
    if not value.strip():
        raise InputError(f"{what}: must not be empty")
    if len(value) > 200:
        raise InputError(f"{what}: longer than 200 characters")
    if any(ord(c) < 32 or ord(c) == 127 for c in value):
        raise InputError(f"{what} {value!r}: control characters are not allowed")
    return value


def _seg(value: str, what: str) -> str:
    return quote(check_name(value, what), safe="")


class Client:
    def __init__(self, url: str | None, token: str | None, config_path: str | None) -> None:
        if url is None:
            url = _url_from_settings(config_path)
        self.url = check_url(url or DEFAULT_URL)
        headers = {"Authorization": f"Bearer {check_token(token)}"} if token else {}
        self.http = httpx.Client(base_url=self.url, headers=headers, timeout=60.0)

    def call(
        self, method: str, path: str, *, bad: frozenset[int] = BAD_INPUT_STATUS, **kw: Any
    ) -> Any:
        """One API call; an answer with a status in ``bad`` is bad input (exit 2)."""
        try:
            r = self.http.request(method, f"/api/v1{path}", **kw)
        except httpx.HTTPError as exc:
            raise ServiceError(
                f"cannot reach the service at {self.url}: {one_line(str(exc))}"
            ) from exc
        if r.status_code >= 400:
            try:
                doc = r.json()
                msg = (doc.get("error") if isinstance(doc, dict) else None) or r.text
            except ValueError:
                msg = r.text.strip() or r.reason_phrase
            text = one_line(f"{r.status_code}: {msg}")
            if r.status_code in bad:  # the request itself was wrong: bad input
                raise InputError(text)
            raise ServiceError(text)
        try:
            return r.json()
        except ValueError:
            raise ServiceError(
                f"{self.url} answered {r.status_code} with something that is not JSON: "
                "is it the balancer's API?"
            ) from None


def _url_from_settings(config_path: str | None) -> str | None:
    """The service's URL from ``--config``, else from ./config/balancer.yaml when it exists."""
    from balancer.errors import SettingsError
    from balancer.settings import load_settings

    if config_path is None:
        if not Path(DEFAULT_CONFIG).exists():
            return None
        try:
            s = load_settings(DEFAULT_CONFIG)
        except SettingsError:
            return None
    else:
        s = load_settings(config_path)
    return f"http://{s.api.host}:{s.api.port}"


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.0f}%"


def register(cli: click.Group) -> None:
    @cli.command()
    @click.option(
        "--config",
        "config_path",
        type=click.Path(dir_okay=False),
        default="config/balancer.yaml",
        show_default=True,
        help="Settings file.",
    )
    @click.option("--lab", is_flag=True, help="Run on the local libvirt/KVM lab.")
    @handle_errors
    def serve(config_path: str, lab: bool) -> None:
        """Run the balancer service (API, dashboard, jobs) until SIGTERM/SIGINT."""
        from balancer.service.runner import serve as run
        from balancer.settings import load_settings

        settings = load_settings(config_path)
        raise SystemExit(run(settings, lab=lab))

    @cli.command()
    @_client_options
    @json_option
    @handle_errors
    def status(url: str | None, token: str | None, config_path: str | None, as_json: bool) -> None:
        """The cluster as the service sees it: hosts, imbalance, policy, pause state."""
        doc = Client(url, token, config_path).call("GET", "/status")
        if as_json:
            print_json(doc)
            return
        paused = "; ".join(b["detail"] for b in doc["pause_reasons"])
        click.echo(
            f"backend {doc['backend']}  imbalance {doc['imbalance']}  automation "
            f"{doc['automation']}  policy {str(doc['policy']['digest'])[:12]}  "
            + (f"PAUSED: {paused}" if doc["paused"] else "running")
        )
        if doc["policy"]["last_error"]:
            click.echo(f"policy refused: {doc['policy']['last_error']}")
        if doc.get("window"):
            click.echo(f"balancing held: {doc['window']} (mandatory moves continue)")
        print_table(
            "hosts",
            ["host", "state", "cpu", "memory", "vms"],
            [
                [h["name"], h["state"], _pct(h["cpu_load"]), _pct(h["memory_load"]), h["vm_count"]]
                for h in doc["hosts"]
            ],
        )
        for h in doc["hosts"]:
            for sig in h.get("health", []):
                click.echo(
                    f"health {h['name']}: {sig['signal']} since {sig['since']}: {sig['detail']}"
                )
        click.echo(
            f"{doc['migrations_active']} migrations active, "
            f"{doc['pending_recommendations']} recommendations pending, "
            f"{len(doc['holds'])} VMs held"
        )
        for c in doc.get("clusters", []):
            click.echo(
                f"cluster {c['cluster']}: leader {c['leader'] or '-'}, epoch {c['epoch'] or '-'}, "
                f"since {c['since'] or '-'} (this instance: {c['role']})"
            )

    @cli.command()
    @click.option(
        "--state",
        type=click.Choice(["pending", "approved", "rejected", "expired", "all"]),
        default="pending",
        show_default=True,
    )
    @_client_options
    @json_option
    @handle_errors
    def recommend(
        state: str, url: str | None, token: str | None, config_path: str | None, as_json: bool
    ) -> None:
        """The recommendations waiting for approval (manual and partial automation)."""
        doc = Client(url, token, config_path).call(
            "GET", "/recommendations", params={"state": state}
        )
        if as_json:
            print_json(doc)
            return
        print_table(
            "recommendations",
            ["id", "vm", "from", "to", "reason", "gain", "state", "decided by"],
            [
                [
                    r["id"],
                    r["vm"],
                    r["source"],
                    r["target"],
                    r["reason"],
                    f"{r['gain']:.4f}",
                    r["state"],
                    r["decided_by"],
                ]
                for r in doc
            ],
        )

    @cli.command()
    @click.argument("ids", type=ID, nargs=-1, required=True)
    @_client_options
    @json_option
    @handle_errors
    def approve(
        ids: tuple[int, ...],
        url: str | None,
        token: str | None,
        config_path: str | None,
        as_json: bool,
    ) -> None:
        """Approve recommendations by id (their migrations are queued at once)."""
        c = Client(url, token, config_path)
        out = [c.call("POST", f"/recommendations/{i}/approve") for i in ids]
        if as_json:
            print_json(out)
            return
        for r in out:
            click.echo(
                f"approved {r['id']}: {r['vm']} {r['source']} -> {r['target']} "
                f"(migration {r['migration_id']})"
            )

    @cli.command()
    @click.argument("vm")
    @click.option("--to", "target", required=True, help="Target host.")
    @click.option(
        "--priority",
        type=click.Choice(["high", "normal", "low"]),
        default="normal",
        show_default=True,
    )
    @_client_options
    @json_option
    @handle_errors
    def migrate(
        vm: str,
        target: str,
        priority: str,
        url: str | None,
        token: str | None,
        config_path: str | None,
        as_json: bool,
    ) -> None:
        """Request a manual live migration of VM to a host."""
        check_name(vm, "VM")
        check_name(target, "--to")
        doc = Client(url, token, config_path).call(
            "POST", "/migrations", json={"vm": vm, "target": target, "priority": priority}
        )
        if as_json:
            print_json(doc)
        else:
            click.echo(
                f"migration {doc['id']}: {doc['vm']} {doc['source']} -> {doc['target']} "
                f"{doc['state']} ({doc['priority']})"
            )

    @cli.group()
    def maintenance() -> None:
        """Maintenance mode: enter (evacuate), exit, status; rolling maintenance of many hosts."""

    def _show_maint(doc: dict[str, Any]) -> None:
        eta = f", about {doc['eta_s']:.0f} s left" if doc.get("eta_s") is not None else ""
        click.echo(
            f"{doc['host']}: {doc['state']} (host {doc['host_state']}), "
            f"{doc['done_vms']}/{doc['total_vms']} VMs moved, {doc['percent']:.0f}%{eta}"
        )
        if doc["message"]:
            click.echo(doc["message"])
        for b in doc["blockers"]:
            click.echo(f"  blocked: {b['vm']} {b['reason']} {b['detail']}".rstrip())
        for v in doc["vms"]:
            if v["state"] not in ("done",):
                click.echo(
                    f"  {v['vm']}: {v['state']}"
                    + (f" -> {v['target']}" if v.get("target") else "")
                    + (f" {100 * v['fraction']:.0f}%" if v["state"] == "migrating" else "")
                )

    @maintenance.command("enter")
    @click.argument("host")
    @click.option("--dry-run", is_flag=True, help="Only the preflight: can it be emptied, how.")
    @click.option("--force", is_flag=True, help="Enter even when the preflight refuses.")
    @_client_options
    @json_option
    @handle_errors
    def m_enter(
        host: str,
        dry_run: bool,
        force: bool,
        url: str | None,
        token: str | None,
        config_path: str | None,
        as_json: bool,
    ) -> None:
        """Put HOST into maintenance: its VMs are evacuated first."""
        c = Client(url, token, config_path)
        seg = _seg(host, "HOST")
        if dry_run:
            doc = c.call("GET", f"/maintenance/{seg}/preflight")
            if as_json:
                print_json(doc)
                return
            click.echo(f"{host}: {'can' if doc['can_enter'] else 'CANNOT'} enter: {doc['reason']}")
            print_table(
                "evacuation",
                ["vm", "to", "reason"],
                [[m["vm"], m["target"], m["reason"]] for m in doc["moves"]],
            )
            for b in doc["blocked"]:
                click.echo(f"  blocked: {b['vm']} {b['reason']} {b['detail']}".rstrip())
            if not doc["can_enter"]:
                raise SystemExit(1)
            return
        doc = c.call("POST", f"/maintenance/{seg}/enter", json={"force": force})
        if as_json:
            print_json(doc)
        else:
            _show_maint(doc)

    @maintenance.command("exit")
    @click.argument("host")
    @click.option("--move-back", is_flag=True, help="Move the host's VMs back to it.")
    @_client_options
    @json_option
    @handle_errors
    def m_exit(
        host: str,
        move_back: bool,
        url: str | None,
        token: str | None,
        config_path: str | None,
        as_json: bool,
    ) -> None:
        """Return HOST to active (optionally moving its VMs back)."""
        seg = _seg(host, "HOST")
        doc = Client(url, token, config_path).call(
            "POST", f"/maintenance/{seg}/exit", json={"move_back": move_back}
        )
        if as_json:
            print_json(doc)
        else:
            _show_maint(doc)

    @maintenance.command("status")
    @click.argument("host", required=False)
    @_client_options
    @json_option
    @handle_errors
    def m_status(
        host: str | None,
        url: str | None,
        token: str | None,
        config_path: str | None,
        as_json: bool,
    ) -> None:
        """Progress of HOST's maintenance request (or of every request)."""
        seg = None if host is None else _seg(host, "HOST")
        c = Client(url, token, config_path)
        docs = [c.call("GET", f"/maintenance/{seg}")] if seg else c.call("GET", "/maintenance")
        if as_json:
            print_json(docs[0] if host else docs)
            return
        for d in docs:
            _show_maint(d)

    def _show_rolling(doc: dict[str, Any], as_json: bool = False) -> None:
        if as_json:
            print_json(doc)
            return
        gate = doc["gate"]
        what = {"file": gate.get("path"), "command": gate.get("command")}.get(gate["kind"])
        batch = doc["current_batch"]
        click.echo(
            f"rolling {doc['id']}: {doc['state']}, {doc['at_a_time']} at a time, gate "
            f"{gate['kind']}{f' ({what})' if what else ''}"
            + (f", batch {batch + 1} in progress" if batch is not None else "")
        )
        if doc["message"]:
            click.echo(doc["message"])
        print_table(
            None,
            ["host", "batch", "step", "since", "blocker"],
            [
                [h["host"], h["batch"] + 1, h["state"], str(h["since"])[:19], h["blocker"]]
                for h in doc["hosts"]
            ],
        )

    @maintenance.command("rolling")
    @click.argument("hosts", nargs=-1, required=True)
    @click.option(
        "--at-a-time",
        type=click.IntRange(min=1, max=1000),
        default=1,
        show_default=True,
        help="How many hosts are in maintenance at once (one by default: the safest).",
    )
    @click.option("--until-file", default=None, help="Gate: a host exits once this file exists.")
    @click.option(
        "--until-command",
        default=None,
        help="Gate: a host exits once this command exits 0 (run without a shell; {host} is "
        "replaced by the host's name). Needs the admin role.",
    )
    @click.option(
        "--gate-timeout",
        type=click.FloatRange(min=0, max=300, min_open=True),
        default=None,
        help="A gate command's time limit in seconds (default 30).",
    )
    @_client_options
    @json_option
    @handle_errors
    def m_rolling(
        hosts: tuple[str, ...],
        at_a_time: int,
        until_file: str | None,
        until_command: str | None,
        gate_timeout: float | None,
        url: str | None,
        token: str | None,
        config_path: str | None,
        as_json: bool,
    ) -> None:
        """Rolling maintenance of HOSTS, --at-a-time N at a time: each batch is evacuated,
        waits for its gate (default: `maintenance continue ID`), exits; then the next."""
        if until_file is not None and until_command is not None:
            raise InputError("--until-command: give --until-file or --until-command, not both")
        body = {
            "hosts": [check_name(h, f"HOSTS[{i}]") for i, h in enumerate(hosts)],
            "at_a_time": at_a_time,
            "until_file": until_file,
            "until_command": until_command,
            "gate_timeout_s": gate_timeout,
        }
        # an unknown host (404) or one already in maintenance (409) is a wrong argument too
        doc = Client(url, token, config_path).call(
            "POST", "/maintenance/rolling", json=body, bad=BAD_INPUT_STATUS | {404, 409}
        )
        _show_rolling(doc, as_json)

    @maintenance.command("rollings")
    @click.argument("rolling_id", type=ID, required=False)
    @_client_options
    @json_option
    @handle_errors
    def m_rollings(
        rolling_id: int | None,
        url: str | None,
        token: str | None,
        config_path: str | None,
        as_json: bool,
    ) -> None:
        """Progress of rolling maintenance ROLLING_ID (or of every one)."""
        c = Client(url, token, config_path)
        if rolling_id is None:
            docs = c.call("GET", "/maintenance/rolling")
        else:
            docs = [c.call("GET", f"/maintenance/rolling/{rolling_id}")]
        if as_json:
            print_json(docs if rolling_id is None else docs[0])
            return
        for d in docs:
            _show_rolling(d)

    @maintenance.command("continue")
    @click.argument("rolling_id", type=ID)
    @click.option("--host", default=None, help="Only this host (default: every one awaiting).")
    @_client_options
    @json_option
    @handle_errors
    def m_continue(
        rolling_id: int,
        host: str | None,
        url: str | None,
        token: str | None,
        config_path: str | None,
        as_json: bool,
    ) -> None:
        """The operator's gate: the hosts of ROLLING_ID awaiting it exit maintenance."""
        body = {"host": None if host is None else check_name(host, "--host")}
        doc = Client(url, token, config_path).call(
            "POST", f"/maintenance/rolling/{rolling_id}/continue", json=body
        )
        _show_rolling(doc, as_json)

    @maintenance.command("cancel")
    @click.argument("rolling_id", type=ID)
    @_client_options
    @json_option
    @handle_errors
    def m_cancel(
        rolling_id: int, url: str | None, token: str | None, config_path: str | None, as_json: bool
    ) -> None:
        """Cancel rolling maintenance ROLLING_ID: no further batch starts."""
        doc = Client(url, token, config_path).call(
            "POST", f"/maintenance/rolling/{rolling_id}/cancel"
        )
        _show_rolling(doc, as_json)

    @cli.group()
    def schedule() -> None:
        """Scheduled tasks: one-off (--at) or recurring (--cron)."""

    @schedule.command("add")
    @click.argument(
        "kind",
        type=click.Choice(
            ["migrate", "maintenance_enter", "maintenance_exit", "automation", "balance"]
        ),
    )
    @click.option(
        "--at",
        "at",
        default=None,
        help="One-off: ISO time with zone (2026-12-01T02:00Z) or from now (+30m, +2h, +1d).",
    )
    @click.option("--cron", default=None, help='Recurring: 5-field cron in UTC, e.g. "0 2 * * 6".')
    @click.option(
        "--arg", "args", multiple=True, help="KEY=VALUE (vm=, target=, host=, level=...)."
    )
    @_client_options
    @json_option
    @handle_errors
    def s_add(
        kind: str,
        at: str | None,
        cron: str | None,
        args: tuple[str, ...],
        url: str | None,
        token: str | None,
        config_path: str | None,
        as_json: bool,
    ) -> None:
        """Schedule a task, e.g. ``schedule add migrate --at +2h --arg vm=vm007
        --arg target=h03``."""
        parsed: dict[str, str | bool] = {}
        for a in args:
            if "=" not in a:
                raise InputError(f"--arg {a!r}: use KEY=VALUE")
            k, v = a.split("=", 1)
            check_name(k, f"--arg {a!r}: KEY")
            parsed[k] = v.lower() in ("1", "true", "yes") if k == "move_back" else v
        if at is not None:
            at = parse_at(at, datetime.now(UTC))
        body: dict[str, Any] = {"kind": kind, "args": parsed}
        if at is not None:
            body["at"] = at
        if cron is not None:
            body["cron"] = cron
        doc = Client(url, token, config_path).call("POST", "/tasks", json=body)
        if as_json:
            print_json(doc)
        else:
            click.echo(f"scheduled {doc['id']}: {doc['kind']} {doc['args']} {doc['schedule']}")

    @schedule.command("list")
    @_client_options
    @json_option
    @handle_errors
    def s_list(url: str | None, token: str | None, config_path: str | None, as_json: bool) -> None:
        """Scheduled tasks and their next run."""
        doc = Client(url, token, config_path).call("GET", "/tasks")
        if as_json:
            print_json(doc)
            return
        print_table(
            "tasks",
            ["id", "kind", "args", "schedule", "next run", "by"],
            [[t["id"], t["kind"], t["args"], t["schedule"], t["next_run"], t["who"]] for t in doc],
        )

    @schedule.command("cancel")
    @click.argument("task_id")
    @_client_options
    @json_option
    @handle_errors
    def s_cancel(
        task_id: str, url: str | None, token: str | None, config_path: str | None, as_json: bool
    ) -> None:
        """Cancel a scheduled task."""
        seg = _seg(task_id, "TASK_ID")
        doc = Client(url, token, config_path).call("DELETE", f"/tasks/{seg}")
        if as_json:
            print_json(doc)
        else:
            click.echo(doc["detail"])

    @cli.group()
    def host() -> None:
        """Hosts: quarantine a failing one (its VMs leave it), release it."""

    def _show_host(doc: dict[str, Any], name: str, as_json: bool) -> None:
        h = next((x for x in doc["hosts"] if x["name"] == name), None)
        if as_json:
            print_json(h)
        elif h is not None:
            click.echo(f"{h['name']}: {h['state']}, {h['vm_count']} VMs")

    @host.command("quarantine")
    @click.argument("name")
    @click.option("--reason", default="", help="Why (shown and audited).")
    @_client_options
    @json_option
    @handle_errors
    def host_quarantine(
        name: str,
        reason: str,
        url: str | None,
        token: str | None,
        config_path: str | None,
        as_json: bool,
    ) -> None:
        """Quarantine a failing or underperforming host: it takes no VM and its VMs move off
        (mandatory moves, planned at once)."""
        doc = Client(url, token, config_path).call(
            "POST", f"/hosts/{_seg(name, 'HOST')}/quarantine", json={"reason": reason}
        )
        _show_host(doc, name, as_json)

    @host.command("release")
    @click.argument("name")
    @_client_options
    @json_option
    @handle_errors
    def host_release(
        name: str, url: str | None, token: str | None, config_path: str | None, as_json: bool
    ) -> None:
        """Release a quarantined host: it takes VMs again."""
        doc = Client(url, token, config_path).call("POST", f"/hosts/{_seg(name, 'HOST')}/release")
        _show_host(doc, name, as_json)

    @cli.command()
    @click.option("--reason", default="", help="Why (shown in the API and the audit trail).")
    @click.option(
        "--stop-evacuations", is_flag=True, help="Also stop mandatory moves (evacuations)."
    )
    @_client_options
    @json_option
    @handle_errors
    def pause(
        reason: str,
        stop_evacuations: bool,
        url: str | None,
        token: str | None,
        config_path: str | None,
        as_json: bool,
    ) -> None:
        """Pause automation (admin)."""
        doc = Client(url, token, config_path).call(
            "POST", "/pause", json={"reason": reason, "allow_mandatory": not stop_evacuations}
        )
        if as_json:
            print_json({"paused": doc["paused"], "reasons": doc["pause_reasons"]})
        else:
            click.echo("paused: " + "; ".join(b["detail"] for b in doc["pause_reasons"]))

    @cli.command()
    @_client_options
    @json_option
    @handle_errors
    def resume(url: str | None, token: str | None, config_path: str | None, as_json: bool) -> None:
        """Resume automation after an operator's pause (admin)."""
        doc = Client(url, token, config_path).call("POST", "/resume")
        if as_json:
            print_json({"paused": doc["paused"], "reasons": doc["pause_reasons"]})
        elif doc["paused"]:
            click.echo(
                "resumed, but still paused: " + "; ".join(b["detail"] for b in doc["pause_reasons"])
            )
        else:
            click.echo("automation running")
