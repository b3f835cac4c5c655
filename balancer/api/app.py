"""The HTTP API: thin routes that parse, call one method of the service, and format.

* ``/api/v1/...`` JSON, described at ``/openapi.json`` (Swagger UI at ``/docs``).
* Bearer tokens with roles (:mod:`balancer.api.auth`); 401 without a valid token, 403 when
  the role may not.
* Every mutating call (POST/PUT/DELETE) by an authenticated user lands in the audit trail
  (kind ``api``) with the user, the call and its status.
* Errors are ``{"error": "...", "field": "...", "request_id": "..."}`` with a 4xx status
  naming the field (422 for a body, query or argument that is invalid, 413 for a body above
  ``api.max_body_bytes``); a 500 would be a bug, logged once under its request id
  (:mod:`balancer.api.guard`). Every response has an ``X-Request-ID`` header.
* ``/`` is the dashboard (static HTML+JS in this package), ``/metrics`` Prometheus.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, Literal

from fastapi import Depends, FastAPI, HTTPException, Query, Request
from fastapi import Path as PathParam
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.routing import APIRoute
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from fastapi.staticfiles import StaticFiles
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import (
    AwareDatetime,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StrictBool,
    StringConstraints,
)
from starlette.exceptions import HTTPException as StarletteHTTPException

from balancer import __version__
from balancer.api.auth import ANONYMOUS, Principal, Role, TokenBook
from balancer.api.guard import Guard
from balancer.api.metrics import ServiceMetrics
from balancer.errors import BalancerError, HypervisorError, InputError, StorageError
from balancer.optimizer.placement import NewVM
from balancer.service.core import Service
from balancer.service.errors import ConflictError, NotFoundError, UnavailableError
from balancer.service.ports import AuditFilter, AuditItem
from balancer.service.rolling import Gate, GateKind
from balancer.service.runtime import Runtime
from balancer.service.scheduling import Scheduler, TaskKind
from balancer.service.views import (
    ForecastView,
    HistoryView,
    MaintenanceView,
    MigrationView,
    PlacementView,
    PlanView,
    PolicyView,
    PreflightView,
    RecommendationView,
    RollingView,
    StatusView,
    TargetsView,
    TaskRunView,
    TaskView,
    ValidationView,
)
from balancer.snapshot_io import snapshot_to_dict
from collectors.agent import host_sample_from_doc
from policies.model import Automation

log = logging.getLogger("balancer.api")
STATIC = Path(__file__).parent / "static"

Name = Annotated[str, PathParam(min_length=1, max_length=200)]
RollingId = Annotated[int, PathParam(ge=1, le=2**31 - 1)]


# -- bodies ----------------------------------------------------------------------------------
class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ErrorBody(BaseModel):
    error: str = Field(description="What is wrong, naming the field")
    field: str | None = Field(default=None, description="The offending field, when one is")
    request_id: str | None = Field(
        default=None, description="The request's id (also the X-Request-ID header) for the log"
    )


class PsiLineBody(_Body):
    avg10: float = Field(ge=0, le=100, allow_inf_nan=False)
    avg60: float = Field(ge=0, le=100, allow_inf_nan=False)
    avg300: float = Field(ge=0, le=100, allow_inf_nan=False)
    total_us: int = Field(ge=0, le=2**63 - 1)


class PsiResourceBody(_Body):
    some: PsiLineBody
    full: PsiLineBody | None = None


class PsiBody(_Body):
    cpu: PsiResourceBody | None = None
    memory: PsiResourceBody | None = None
    io: PsiResourceBody | None = None


class HardwareBody(_Body):
    edac_corrected: int | None = Field(default=None, ge=0, le=2**63)
    edac_uncorrected: int | None = Field(default=None, ge=0, le=2**63)
    mce: int | None = Field(default=None, ge=0, le=2**63)


class HostSampleBody(_Body):
    """One sample of a host's agent (``balancer agent``; collectors.agent.host_sample_doc)."""

    host: str = Field(min_length=1, max_length=200)
    time: AwareDatetime
    cpu_cores: int = Field(ge=1, le=100_000)
    cpu_used_cores: float = Field(ge=0, le=100_000, allow_inf_nan=False)
    memory_mib: int = Field(ge=1, le=2**40)
    memory_used_mib: int = Field(ge=0, le=2**40)
    psi: PsiBody | None = None
    net_rx_bps: float | None = Field(default=None, ge=0, le=1e15, allow_inf_nan=False)
    net_tx_bps: float | None = Field(default=None, ge=0, le=1e15, allow_inf_nan=False)
    #: hardware error counters (newer agents; optional)
    hardware: HardwareBody | None = None


class Ingested(BaseModel):
    host: str
    time: AwareDatetime


class WhoAmI(BaseModel):
    user: str
    role: Literal["viewer", "operator", "admin"]


class MigrationBody(_Body):
    vm: str = Field(min_length=1, max_length=200)
    target: str = Field(min_length=1, max_length=200)
    priority: Literal["high", "normal", "low"] = "normal"


LabelKey = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_./-]{1,63}$")]
Feature = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_.-]{1,64}$")]


class PlacementBody(_Body):
    vm: str = Field(min_length=1, max_length=200, description="the new VM's name")
    vcpus: int = Field(ge=1, le=4096, strict=True)
    memory_mib: int = Field(ge=1, le=64 * 1024 * 1024, strict=True)
    cpu_demand_cores: float | None = Field(
        default=None, ge=0, le=4096, allow_inf_nan=False, description="default: all its vCPUs"
    )
    features: list[Feature] = Field(default_factory=list, max_length=512)
    labels: dict[LabelKey, Annotated[str, StringConstraints(max_length=253)]] = Field(
        default_factory=dict, max_length=64
    )
    define: str | None = Field(
        default=None, min_length=1, max_length=512 * 1024, description="domain XML to define"
    )
    start: StrictBool = Field(default=False, description="start the defined domain")
    host: str | None = Field(
        default=None, min_length=1, max_length=200, description="default: the best host"
    )


class QuarantineBody(_Body):
    reason: str = Field(default="", max_length=2000, description="why: shown and audited")


class RejectBody(_Body):
    note: str = Field(default="", max_length=2000)


class EnterBody(_Body):
    force: StrictBool = Field(default=False, description="enter even when the preflight refuses")


HostItem = Annotated[str, StringConstraints(min_length=1, max_length=200)]


class RollingBody(_Body):
    """A rolling maintenance: at most one of ``until_file`` and ``until_command`` (neither: an
    operator's continue is the gate). A command gate needs the admin role."""

    hosts: list[HostItem] = Field(min_length=1, max_length=1000, description="in batch order")
    at_a_time: int = Field(default=1, ge=1, le=1000, description="hosts in maintenance at once")
    until_file: str | None = Field(
        default=None, min_length=1, max_length=4096, description="gate: this file exists"
    )
    until_command: str | None = Field(
        default=None,
        min_length=1,
        max_length=4096,
        description="gate: this command exits 0 (split into words, run without a shell)",
    )
    gate_timeout_s: float | None = Field(
        default=None, gt=0, le=300, description="a gate command's time limit (default 30 s)"
    )


class ContinueBody(_Body):
    host: str | None = Field(
        default=None, min_length=1, max_length=200, description="only this host (default: all)"
    )


class ExitBody(_Body):
    move_back: StrictBool = Field(default=False, description="move the host's VMs back afterwards")


class PauseBody(_Body):
    reason: str = Field(default="", max_length=2000)
    allow_mandatory: StrictBool = Field(default=True, description="let evacuations continue")


class AutomationBody(_Body):
    level: Literal["manual", "partial", "full", "policy"]


PolicyFileName = Annotated[
    str, StringConstraints(pattern=r"^[A-Za-z0-9_-][A-Za-z0-9_.-]{0,100}\.ya?ml$")
]


def _no_numbers(v: object) -> object:
    """A time is an ISO 8601 string, not a number of seconds."""
    if isinstance(v, int | float) or (isinstance(v, str) and _NUMBER.fullmatch(v.strip())):
        raise ValueError("an ISO 8601 date and time with a zone is required")
    return v


_NUMBER = re.compile(r"[-+]?(\d+(\.\d*)?|\.\d+)([eE][-+]?\d+)?")
When = Annotated[AwareDatetime, BeforeValidator(_no_numbers)]


class PolicyFile(_Body):
    name: PolicyFileName = Field(description="a file name of the policy directory")
    text: str = Field(max_length=1_000_000, description="its candidate content (YAML)")


class ValidateBody(_Body):
    files: list[PolicyFile] = Field(
        min_length=1,
        max_length=100,
        description="candidate files; the other files of the policy directory stay as they are",
    )


class TaskArgs(_Body):
    """The arguments of a task; which are required depends on its kind (see docs)."""

    vm: str | None = Field(default=None, min_length=1, max_length=200)
    target: str | None = Field(default=None, min_length=1, max_length=200)
    priority: Literal["high", "normal", "low"] | None = None
    host: str | None = Field(default=None, min_length=1, max_length=200)
    move_back: StrictBool | None = None
    level: Literal["manual", "partial", "full", "policy"] | None = None

    def as_dict(self) -> dict[str, str]:
        out: dict[str, str] = {}
        for k, v in self.model_dump(exclude_none=True).items():
            out[k] = ("true" if v else "false") if isinstance(v, bool) else str(v)
        return out


TaskKindName = Literal["migrate", "maintenance_enter", "maintenance_exit", "automation", "balance"]


class TaskBody(_Body):
    """A task: one-off (``at``) or recurring (``cron``), exactly one of them. (One model, not
    a union of two: an error then names ``at`` or ``args.vm``, not a union member.)"""

    kind: TaskKindName
    args: TaskArgs = Field(default_factory=TaskArgs)
    at: When | None = Field(
        default=None, description="one-off: when, with a time zone (e.g. 2026-12-01T02:00:00Z)"
    )
    cron: str | None = Field(
        default=None, min_length=1, max_length=200, description="recurring: 5-field cron, UTC"
    )


class Done(BaseModel):
    ok: bool
    detail: str = ""


ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorBody, "description": text}
    for code, text in (
        (400, "Bad request"),
        (401, "No valid token"),
        (403, "The role may not"),
        (404, "Not found"),
        (409, "Refused in the current state"),
        (413, "The body is larger than api.max_body_bytes"),
        (422, "Invalid request, naming the field"),
        (500, "A bug: the log has it under the request id"),
        (502, "A hypervisor did not answer"),
        (503, "Not ready or stopping"),
    )
}


def _links(status: int, **links: tuple[str, dict[str, str]]) -> dict[int | str, dict[str, Any]]:
    """OpenAPI links of a response: where its values lead (clients and the stateful fuzz
    follow them), each ``name=(operationId, {parameter: runtime expression})``."""
    return {
        status: {
            "links": {
                name: {"operationId": op, "parameters": params}
                for name, (op, params) in links.items()
            }
        }
    }


def _err(
    request: Request, status: int, message: str, field: str | None = None, **headers: str
) -> JSONResponse:
    rid = getattr(request.state, "request_id", None)
    return JSONResponse(
        ErrorBody(error=message, field=field, request_id=rid).model_dump(),
        status_code=status,
        headers=headers,
    )


def status_of(exc: BalancerError) -> int:
    """The HTTP status of one of our errors: 404 not found, 409 refused in this state, 503 not
    ready, 422 any other bad input (schema and reference checks), 502 a hypervisor, 503 the
    store, 409 the rest (e.g. planning)."""
    if isinstance(exc, NotFoundError):
        return 404
    if isinstance(exc, ConflictError):
        return 409
    if isinstance(exc, UnavailableError):
        return 503
    if isinstance(exc, InputError):
        return 422
    if isinstance(exc, HypervisorError):
        return 502
    if isinstance(exc, StorageError):
        return 503
    return 409


def _field_of(exc: BalancerError) -> str | None:
    head = exc.message.split(":", 1)[0]
    return head if head and " " not in head and len(head) < 60 else None


# -- auth --------------------------------------------------------------------------------------
bearer = HTTPBearer(auto_error=False, description="a token from the service's settings")


def principal(
    request: Request,
    cred: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)],
) -> Principal:
    tokens: TokenBook = request.app.state.tokens
    if cred is None or not cred.credentials:
        if tokens.anonymous_viewer:
            return ANONYMOUS
        raise HTTPException(
            401, "a bearer token is required", headers={"WWW-Authenticate": "Bearer"}
        )
    p = tokens.lookup(cred.credentials)
    if p is None:
        raise HTTPException(401, "unknown token", headers={"WWW-Authenticate": "Bearer"})
    request.state.user = p.user
    return p


def _need(role: Role) -> Callable[..., Principal]:
    def check(p: Annotated[Principal, Depends(principal)]) -> Principal:
        if p.role < role:
            raise HTTPException(
                403, f"{p.user} ({p.role.label}) may not do this: the {role.label} role is needed"
            )
        return p

    return check


Viewer = Annotated[Principal, Depends(_need(Role.VIEWER))]
Operator = Annotated[Principal, Depends(_need(Role.OPERATOR))]
Admin = Annotated[Principal, Depends(_need(Role.ADMIN))]


def _agent(p: Annotated[Principal, Depends(principal)]) -> Principal:
    if p.role not in (Role.AGENT, Role.ADMIN):
        raise HTTPException(
            403, f"{p.user} ({p.role.label}) may not post host samples: the agent role is needed"
        )
    return p


Agent = Annotated[Principal, Depends(_agent)]


def create_app(rt: Runtime) -> FastAPI:
    svc: Service = rt.service
    sched: Scheduler = rt.scheduler
    tokens = TokenBook(rt.settings.api)
    metrics = ServiceMetrics(svc, rt.store)
    rt.result_hooks.append(metrics.on_result)

    app = FastAPI(
        title="kvm-balancer",
        version=__version__,
        description="The balancer service: status, recommendations, plans, migrations, "
        "maintenance, scheduled tasks, audit and policy. See docs/service.md.",
        responses=ERRORS,
    )
    app.state.tokens = tokens

    # -- errors ------------------------------------------------------------------------------
    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = exc.errors()
        first = errors[0] if errors else {}
        parts = [str(p) for p in first.get("loc", ())]
        more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
        if first.get("type") == "json_invalid":
            ctx = first.get("ctx") or {}
            at = f" at character {parts[1]}" if len(parts) > 1 else ""
            why = ctx.get("error", "JSON decode error")
            return _err(request, 422, f"body: not valid JSON{at}: {why}", "body")
        loc = ".".join(p for p in (parts[1:] if parts[:1] == ["body"] else parts)) or "body"
        msg = str(first.get("msg", "invalid request"))
        return _err(request, 422, f"{loc}: {msg}{more}", loc)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        headers = dict(exc.headers or {})
        field: str | None = None
        message = str(exc.detail)
        if exc.status_code == 405:
            # one path may be served by several routes (GET and POST): list them all
            allowed: set[str] = set()
            for route in app.routes:
                if isinstance(route, APIRoute) and route.path_regex.match(request.url.path):
                    allowed |= route.methods or set()
            if allowed:
                headers["Allow"] = ", ".join(sorted(allowed))
        elif exc.status_code == 400 and message == "There was an error parsing the body":
            # e.g. an integer of more digits than Python converts (FastAPI hides the cause)
            cause = exc.__cause__
            field = "body"
            message = "body: cannot be parsed" + (f": {str(cause)[:200]}" if cause else "")
        elif exc.status_code in (401, 403):
            field = "authorization"
        return _err(request, exc.status_code, message, field, **headers)

    @app.exception_handler(BalancerError)
    async def _balancer(request: Request, exc: BalancerError) -> JSONResponse:
        return _err(request, status_of(exc), str(exc), _field_of(exc))

    # no handler for Exception: the Guard below is the last resort (it logs once)
    app.add_middleware(
        Guard,
        max_body_bytes=rt.settings.api.max_body_bytes,
        max_json_depth=rt.settings.api.max_json_depth,
        record_call=lambda who, action, result: svc.record_call(
            who=who, action=action, result=result
        ),
        on_internal_error=metrics.internal_errors.inc,
    )

    # -- pages -------------------------------------------------------------------------------
    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    @app.get("/", include_in_schema=False)
    def index() -> FileResponse:
        return FileResponse(STATIC / "index.html", media_type="text/html")

    @app.get("/metrics", include_in_schema=False)
    def prometheus() -> Response:
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    @app.get("/healthz", include_in_schema=False)
    def healthz() -> dict[str, str]:
        return {"status": "stopping" if svc.stopping else "ok"}

    v1 = "/api/v1"
    same_host = {"host": "$request.path.host"}
    same_rolling = {"rid": "$response.body#/id"}

    # -- ingest ------------------------------------------------------------------------------
    @app.post(
        f"{v1}/ingest/host",
        response_model=Ingested,
        status_code=202,
        tags=["ingest"],
        responses={422: {"model": ErrorBody}},
    )
    def ingest_host(_p: Agent, body: HostSampleBody) -> Ingested:
        """A host agent's sample: into the sample window and the status (PSI)."""
        sample = host_sample_from_doc(body.model_dump(mode="json"))
        svc.ingest_host_sample(sample)
        return Ingested(host=sample.host, time=sample.time)

    # -- status ------------------------------------------------------------------------------
    @app.get(f"{v1}/whoami", response_model=WhoAmI, tags=["status"])
    def whoami(p: Viewer) -> WhoAmI:
        return WhoAmI(user=p.user, role=p.role.label)  # type: ignore[arg-type]

    first_host = {"host": "$response.body#/hosts/0/name"}

    @app.get(
        f"{v1}/status",
        response_model=StatusView,
        tags=["status"],
        responses=_links(
            200,
            Preflight=("preflight", first_host),
            EnterMaintenance=("enter_maintenance", first_host),
        ),
    )
    def status(_p: Viewer) -> StatusView:
        return svc.status()

    @app.get(f"{v1}/snapshot", response_model=dict[str, Any], tags=["status"])
    def snapshot(_p: Viewer) -> dict[str, Any]:
        """The snapshot the service decides on (format v1): the last collect cycle's demand
        (the collectors' window) with the administrative host states applied. ``balancer plan
        --snapshot``, ``assist`` and ``policy check`` take it as a file."""
        return snapshot_to_dict(svc.snapshot())

    @app.get(f"{v1}/forecast", response_model=ForecastView, tags=["status"])
    def forecast(_p: Viewer) -> ForecastView:
        return svc.forecast_view()

    @app.get(f"{v1}/history", response_model=list[HistoryView], tags=["status"])
    def history(
        _p: Viewer, hours: Annotated[float, Query(gt=0, le=168)] = 6.0
    ) -> list[HistoryView]:
        return svc.history(hours)

    # -- recommendations ---------------------------------------------------------------------
    first_id = {"rid": "$response.body#/0/id"}

    @app.get(
        f"{v1}/recommendations",
        response_model=list[RecommendationView],
        tags=["recommendations"],
        responses=_links(
            200, Approve=("approve_recommendation", first_id), Reject=("reject", first_id)
        ),
    )
    def recommendations(
        _p: Viewer,
        state: Literal["pending", "approved", "rejected", "expired", "all"] = "pending",
        limit: Annotated[int, Query(ge=1, le=1000)] = 200,
    ) -> list[RecommendationView]:
        return svc.recommendations(state=None if state == "all" else state, limit=limit)

    @app.post(
        f"{v1}/recommendations/{{rid}}/approve",
        response_model=RecommendationView,
        tags=["recommendations"],
        operation_id="approve_recommendation",
    )
    def approve(
        p: Operator, rid: Annotated[int, PathParam(ge=1, le=2**31 - 1)]
    ) -> RecommendationView:
        return svc.approve(rid, who=p.user)

    @app.post(
        f"{v1}/recommendations/{{rid}}/reject",
        response_model=RecommendationView,
        tags=["recommendations"],
        operation_id="reject",
    )
    def reject(
        p: Operator,
        rid: Annotated[int, PathParam(ge=1, le=2**31 - 1)],
        body: RejectBody | None = None,
    ) -> RecommendationView:
        return svc.reject(rid, who=p.user, note=body.note if body else "")

    # -- plans -------------------------------------------------------------------------------
    @app.get(
        f"{v1}/plans",
        response_model=list[PlanView],
        tags=["plans"],
        responses=_links(200, Plan=("get_plan", {"plan_id": "$response.body#/0/id"})),
    )
    def plans(_p: Viewer, limit: Annotated[int, Query(ge=1, le=500)] = 20) -> list[PlanView]:
        return svc.plans(limit=limit)

    @app.get(
        f"{v1}/plans/{{plan_id}}", response_model=PlanView, tags=["plans"], operation_id="get_plan"
    )
    def plan(_p: Viewer, plan_id: Name) -> PlanView:
        found = svc.plan(plan_id)
        if found is None:
            raise NotFoundError(f"plan_id: no plan {plan_id!r}")
        return found

    @app.post(
        f"{v1}/balance",
        response_model=PlanView,
        tags=["plans"],
        responses=_links(200, Plan=("get_plan", {"plan_id": "$response.body#/id"})),
    )
    def balance_now(p: Operator) -> PlanView:
        return svc.balance(who=p.user)

    # -- migrations --------------------------------------------------------------------------
    @app.get(f"{v1}/migrations", response_model=list[MigrationView], tags=["migrations"])
    def migrations(
        _p: Viewer,
        active: bool = False,
        limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    ) -> list[MigrationView]:
        return svc.migrations(active_only=active, limit=limit)

    @app.post(
        f"{v1}/migrations",
        response_model=MigrationView,
        status_code=202,
        tags=["migrations"],
        responses=_links(202, Cancel=("cancel_migration", {"mid": "$response.body#/id"})),
    )
    def request_migration(p: Operator, body: MigrationBody) -> MigrationView:
        return svc.request_migration(body.vm, body.target, priority=body.priority, who=p.user)

    @app.get(
        f"{v1}/vms/{{vm}}/targets",
        response_model=TargetsView,
        tags=["migrations"],
        operation_id="vm_targets",
    )
    def vm_targets(_p: Viewer, vm: Name) -> TargetsView:
        """The migration assistant: the hosts the VM could move to now, ranked, with the loads
        each would have (and its forecast peak under a predictive policy), and why every
        other host is ruled out. ``POST /api/v1/migrations`` moves it to one of them."""
        return svc.vm_targets(vm)

    @app.post(f"{v1}/placements", response_model=PlacementView, tags=["migrations"])
    def placement(p: Viewer, body: PlacementBody) -> PlacementView:
        """Initial placement: the hosts a new VM could start on now under the policy (rules,
        headroom, CPU features), ranked, and why every other host is ruled out. With
        ``define`` (operators): the domain is defined on ``host`` (default: the best) and, with
        ``start``, started there; audited as ``placement``."""
        if body.define is None and (body.start or body.host):
            what = "start" if body.start else "host"
            raise InputError(f"{what}: needs define (the domain XML)", subject=what)
        if body.define is not None and p.role < Role.OPERATOR:
            raise HTTPException(
                403, f"{p.user} ({p.role.label}) may not define VMs: the operator role is needed"
            )
        new = NewVM(
            name=body.vm,
            vcpus=body.vcpus,
            memory_mib=body.memory_mib,
            cpu_demand_cores=body.cpu_demand_cores,
            cpu_features=frozenset(body.features),
            labels=dict(body.labels),
        )
        return svc.place(new, who=p.user, define_xml=body.define, start=body.start, host=body.host)

    @app.post(
        f"{v1}/migrations/{{mid}}/cancel",
        response_model=MigrationView,
        tags=["migrations"],
        operation_id="cancel_migration",
    )
    def cancel_migration(
        p: Operator, mid: Annotated[int, PathParam(ge=1, le=2**31 - 1)]
    ) -> MigrationView:
        return svc.cancel_migration(mid, who=p.user)

    @app.post(f"{v1}/hosts/{{host}}/quarantine", response_model=StatusView, tags=["maintenance"])
    def quarantine(p: Operator, host: Name, body: QuarantineBody | None = None) -> StatusView:
        """Quarantine a failing or underperforming host: it takes no VM and its VMs leave it
        (mandatory moves, planned at once). ``.../release`` undoes it."""
        return svc.quarantine(host, who=p.user, reason=body.reason if body else "")

    @app.post(f"{v1}/hosts/{{host}}/release", response_model=StatusView, tags=["maintenance"])
    def release(p: Operator, host: Name) -> StatusView:
        return svc.release_quarantine(host, who=p.user)

    # -- maintenance -------------------------------------------------------------------------
    @app.get(f"{v1}/maintenance", response_model=list[MaintenanceView], tags=["maintenance"])
    def maintenance_list(_p: Viewer, active: bool = False) -> list[MaintenanceView]:
        return svc.maintenance_list(active_only=active)

    # -- rolling maintenance (before /maintenance/{host}: a host named "rolling" is shadowed)
    @app.post(
        f"{v1}/maintenance/rolling",
        response_model=RollingView,
        tags=["maintenance"],
        operation_id="start_rolling",
        responses=_links(
            200,
            Status=("rolling_status", same_rolling),
            Continue=("continue_rolling", same_rolling),
            Cancel=("cancel_rolling", same_rolling),
        ),
    )
    def start_rolling(p: Operator, body: RollingBody) -> RollingView:
        """Put the hosts into maintenance ``at_a_time`` at a time; each empty host waits for
        its gate, exits, and the next batch starts."""
        gate = Gate.make(
            until_file=body.until_file,
            until_command=body.until_command,
            timeout_s=body.gate_timeout_s,
        )
        if gate.kind is GateKind.COMMAND and p.role is not Role.ADMIN:
            raise HTTPException(403, "until_command: a command gate needs the admin role")
        return svc.rolling.start(body.hosts, at_a_time=body.at_a_time, gate=gate, who=p.user)

    @app.get(f"{v1}/maintenance/rolling", response_model=list[RollingView], tags=["maintenance"])
    def rolling_list(_p: Viewer) -> list[RollingView]:
        return svc.rolling.views()

    @app.get(
        f"{v1}/maintenance/rolling/{{rid}}",
        response_model=RollingView,
        tags=["maintenance"],
        operation_id="rolling_status",
    )
    def rolling_status(_p: Viewer, rid: RollingId) -> RollingView:
        return svc.rolling.view(rid)

    @app.post(
        f"{v1}/maintenance/rolling/{{rid}}/continue",
        response_model=RollingView,
        tags=["maintenance"],
        operation_id="continue_rolling",
    )
    def continue_rolling(
        p: Operator, rid: RollingId, body: ContinueBody | None = None
    ) -> RollingView:
        """The operator's gate: the hosts awaiting it exit maintenance."""
        return svc.rolling.continue_(rid, who=p.user, host=body.host if body else None)

    @app.post(
        f"{v1}/maintenance/rolling/{{rid}}/cancel",
        response_model=RollingView,
        tags=["maintenance"],
        operation_id="cancel_rolling",
    )
    def cancel_rolling(p: Operator, rid: RollingId) -> RollingView:
        """Start no further batch; the hosts in maintenance stay there."""
        return svc.rolling.cancel(rid, who=p.user)

    @app.get(
        f"{v1}/maintenance/{{host}}",
        response_model=MaintenanceView,
        tags=["maintenance"],
        operation_id="maintenance_status",
    )
    def maintenance_status(_p: Viewer, host: Name) -> MaintenanceView:
        return svc.maintenance_status(host)

    @app.get(
        f"{v1}/maintenance/{{host}}/preflight",
        response_model=PreflightView,
        tags=["maintenance"],
        operation_id="preflight",
    )
    def preflight(_p: Viewer, host: Name) -> PreflightView:
        return svc.preflight(host)

    @app.post(
        f"{v1}/maintenance/{{host}}/enter",
        response_model=MaintenanceView,
        tags=["maintenance"],
        operation_id="enter_maintenance",
        responses=_links(
            200,
            Status=("maintenance_status", same_host),
            Exit=("exit_maintenance", same_host),
        ),
    )
    def enter(p: Operator, host: Name, body: EnterBody | None = None) -> MaintenanceView:
        return svc.enter_maintenance(host, who=p.user, force=bool(body and body.force))

    @app.post(
        f"{v1}/maintenance/{{host}}/exit",
        response_model=MaintenanceView,
        tags=["maintenance"],
        operation_id="exit_maintenance",
    )
    def exit_(p: Operator, host: Name, body: ExitBody | None = None) -> MaintenanceView:
        return svc.exit_maintenance(host, who=p.user, move_back=bool(body and body.move_back))

    # -- automation and breakers -------------------------------------------------------------
    @app.post(f"{v1}/pause", response_model=StatusView, tags=["automation"])
    def pause(p: Admin, body: PauseBody | None = None) -> StatusView:
        b = body or PauseBody()
        svc.pause(who=p.user, reason=b.reason, allow_mandatory=b.allow_mandatory)
        return svc.status()

    @app.post(f"{v1}/resume", response_model=StatusView, tags=["automation"])
    def resume(p: Admin) -> StatusView:
        svc.resume(who=p.user)
        return svc.status()

    @app.put(f"{v1}/automation", response_model=PolicyView, tags=["automation"])
    def automation(p: Admin, body: AutomationBody) -> PolicyView:
        svc.set_automation(None if body.level == "policy" else Automation(body.level), who=p.user)
        return svc.policy_view()

    # -- policy ------------------------------------------------------------------------------
    @app.get(f"{v1}/policy", response_model=PolicyView, tags=["policy"])
    def policy(_p: Viewer) -> PolicyView:
        return svc.policy_view()

    @app.post(f"{v1}/policy/validate", response_model=ValidationView, tags=["policy"])
    def validate(_p: Viewer, body: ValidateBody) -> ValidationView:
        return svc.validate_policy({f.name: f.text for f in body.files})

    # -- scheduled tasks ---------------------------------------------------------------------
    @app.get(f"{v1}/tasks", response_model=list[TaskView], tags=["tasks"])
    def tasks(_p: Viewer) -> list[TaskView]:
        return sched.tasks()

    @app.get(f"{v1}/task-runs", response_model=list[TaskRunView], tags=["tasks"])
    def task_runs(
        _p: Viewer, limit: Annotated[int, Query(ge=1, le=1000)] = 100
    ) -> list[TaskRunView]:
        return sched.runs(limit)

    @app.post(
        f"{v1}/tasks",
        response_model=TaskView,
        status_code=201,
        tags=["tasks"],
        responses=_links(201, Cancel=("cancel_task", {"task_id": "$response.body#/id"})),
    )
    def add_task(p: Operator, body: TaskBody) -> TaskView:
        kind = TaskKind(body.kind)
        if p.role < Role[kind.role.upper()]:
            raise HTTPException(403, f"{p.user} ({p.role.label}) may not schedule {kind.value}")
        return sched.add_task(
            kind=kind,
            args=body.args.as_dict(),
            who=p.user,
            at=body.at,
            cron=body.cron,
        )

    @app.delete(
        f"{v1}/tasks/{{task_id}}", response_model=Done, tags=["tasks"], operation_id="cancel_task"
    )
    def cancel_task(p: Operator, task_id: Name) -> Done:
        sched.cancel_task(task_id, who=p.user)
        return Done(ok=True, detail=f"{task_id} cancelled")

    # -- audit -------------------------------------------------------------------------------
    @app.get(f"{v1}/audit", response_model=list[AuditItem], tags=["audit"])
    def audit(
        _p: Viewer,
        since: When | None = None,
        until: When | None = None,
        vm: Annotated[str | None, Query(max_length=200)] = None,
        host: Annotated[str | None, Query(max_length=200)] = None,
        user: Annotated[str | None, Query(max_length=200)] = None,
        kind: Annotated[str | None, Query(max_length=20)] = None,
        limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    ) -> list[AuditItem]:
        return svc.audit_records(
            AuditFilter(
                since=since, until=until, vm=vm, host=host, user=user, kind=kind, limit=limit
            )
        )

    return app
