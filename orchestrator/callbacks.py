"""POST /callbacks/{token}: external services complete their task, signed; heartbeats extend it.

Order of checks: the token (404), the body size while reading (413), a form body's syntax
(400), the service's `auth` scheme (callback_auth.py: Standard Webhooks against the
service's secrets and the attempt's own, a secret header, Twilio's signature, or the URL
alone; 401, or 415 for a Twilio callback that is not a form), the body's shape (400/422:
the standard `{"status", "output", "error"}`, or the provider's own through the service's
`result` mapping, where a status that neither succeeds nor fails is progress, answered
200), the declared output model (422); then the engine's one completion path decides (200
accepted or duplicate, 409 conflict, 410 gone). No rejection changes anything else.

Every rejection is counted (orchestrator/rejections.py). Those after the signature checked
out are written to the task's history before the answer. Those before it (404, 413, 401)
need reads only and are answered without waiting for the store's write lock: a sender
that proved nothing must not cost a row or a wait. When the token named a task, the
first such rejection of that task in a minute still goes to its history, in the
background, so a service with a wrong secret or a skewed clock shows up where an operator
looks (docs/decisions.md, section 20). Secrets never appear in answers, logs or history.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any, Literal

import pydantic
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from orchestrator import tracing
from orchestrator.callback_auth import NotAForm, authenticate
from orchestrator.engine import Engine, Verdict
from orchestrator.forms import FormRejected, form_object, is_form, parse_form
from orchestrator.http import HttpError, parse_json_object, read_body
from orchestrator.invoke import HandlerImportError
from orchestrator.model import ServiceSpec, StepSpec
from orchestrator.records import HistoryEntry, Task
from orchestrator.rejections import DETAIL_SHOWN, Rejections, shown
from orchestrator.result_mapping import MappingError, map_result
from orchestrator.signing import SignatureError
from orchestrator.states import Outcome
from orchestrator.tokens import task_secret, token_hash
from orchestrator.tracecontext import TraceContext

VERDICT_STATUS = {
    Verdict.ACCEPTED: 200,
    Verdict.DUPLICATE: 200,
    Verdict.CONFLICT: 409,
    Verdict.GONE: 410,
}


class CallbackBody(pydantic.BaseModel):
    """What a service POSTs when its work is done."""

    model_config = pydantic.ConfigDict(extra="forbid")

    status: Literal["succeeded", "failed"]
    output: Any = None
    error: str | None = None


@dataclass(frozen=True, slots=True)
class CallbackLimits:
    body_limit: int
    tolerance: float


def _engine(request: Request) -> Engine:
    engine: Engine = request.app.state.engine
    return engine


ROUTES = {
    "callback_rejected": "/callbacks/{token}",
    "heartbeat_rejected": "/callbacks/{token}/heartbeat",
}


async def _reject(
    request: Request,
    task: Task | None,
    error: HttpError,
    kind: str = "callback_rejected",
    *,
    signed: bool = True,
) -> HttpError:
    """Count a rejection and hand back the error to raise. A `signed` one is written to its
    task's history first; an unsigned one naming a task is, sampled, in the background."""
    engine = _engine(request)
    rejections: Rejections = request.app.state.rejections
    client = request.client.host if request.client else None
    rejections.count(ROUTES[kind], error, target=task.id if task else None, client=client)
    if task is None:
        return error
    data: dict[str, object] = {"status": error.status, "error": error.error, "reason": error.detail}
    if not signed:
        data["sampled"] = True  # at most one such row per task and minute; all are counted
    entry = HistoryEntry(kind, engine.clock(), task.run_id, task.id, task.step, data)
    if signed:
        await engine.record(entry)
    else:
        rejections.attribute(entry)
    return error


@dataclass(frozen=True, slots=True)
class Authenticated:
    """A callback whose sender proved itself: its task attempt, step, service and body."""

    engine: Engine
    task: Task
    step: StepSpec
    attempt: int
    service: ServiceSpec | None
    body: bytes
    form: list[tuple[str, str]] | None  # the body's fields, if it is a form
    receipt_id: str

    @property
    def signed(self) -> bool:
        """Whether more than the URL proved the sender (a capability URL may leak: what it
        sends is counted and sampled, never stored per request)."""
        return self.service is None or self.service.auth != "capability"


async def _authenticated(request: Request, kind: str) -> Authenticated:
    """The callback with its task, once the service's scheme checks out. Reads only: a
    rejection here never waits for a write."""
    engine = _engine(request)
    limits: CallbackLimits = request.app.state.callback_limits
    found = await engine.store.callback_target(token_hash(request.path_params["token"]))
    if found is None:
        unknown = HttpError(404, "unknown_token", "no task has this callback token")
        raise await _reject(request, None, unknown, kind, signed=False)
    task, attempt = found
    step = (await engine.workflow_of(task.run_id)).steps[task.step]
    service = engine.services.get(step.service or "")
    try:
        body = await read_body(request, limits.body_limit)
        form = _form(request, body)
        # Only a Twilio signature covers the URL: building it costs a callback ~10% of its CPU.
        url = _signed_url(engine, request, task, attempt) if _signs_url(service) else ""
        receipt = authenticate(
            service, task_secret(await engine.callback_key(), task.id, attempt), request.headers,
            body, form, url, engine.clock(), limits.tolerance,
        )  # fmt: skip
    except HttpError as error:
        raise await _reject(request, task, error, kind, signed=False) from None
    except NotAForm as error:
        unreadable = HttpError(415, "unsupported_media_type", str(error))
        raise await _reject(request, task, unreadable, kind, signed=False) from None
    except SignatureError as error:
        forged = HttpError(401, "bad_signature", str(error))
        raise await _reject(request, task, forged, kind, signed=False) from None
    return Authenticated(engine, task, step, attempt, service, body, form, receipt)


def _form(request: Request, body: bytes) -> list[tuple[str, str]] | None:
    """The fields of a form-encoded body (400 if it is not a strict form); None for others."""
    if not is_form(request.headers.get("content-type")):
        return None
    try:
        return parse_form(body)
    except FormRejected as error:
        raise HttpError(400, error.error, error.detail) from None


def _signs_url(service: ServiceSpec | None) -> bool:
    return service is not None and service.auth == "twilio"


def _signed_url(engine: Engine, request: Request, task: Task, attempt: int) -> str:
    """The URL this attempt's service was handed (behind any proxy: the public URL), with
    the path past the token and the query it called with."""
    url = engine.capabilities.url(task.replace(attempt=attempt))
    if request.url.path.endswith("/heartbeat"):
        url += "/heartbeat"
    query = request.url.query
    return f"{url}?{query}" if query else url


async def complete(request: Request) -> Response:
    """An authenticated completion of one task attempt.

    A valid `traceparent` is in the request's log lines and, once accepted, in the task's
    completion entry (`trace_id`, `traceparent`); an invalid one is ignored (tracing.py)."""
    trace = tracing.from_headers(request.headers.items())
    with tracing.logged(trace), tracing.current().span("callback", trace) as span:
        try:
            response = await _complete(request, trace)
        except HttpError as error:
            span.annotate(status=error.status, error=error.error)
            raise
        span.annotate(status=response.status_code)
        return response


async def _complete(request: Request, trace: TraceContext | None) -> Response:
    auth = await _authenticated(request, "callback_rejected")
    engine, task = auth.engine, auth.task
    try:
        outcome, output, error = _result(auth)
        if outcome is not None:
            output = _checked_output(engine, auth.step.handler, outcome, output)
    except HttpError as refused:
        raise await _reject(request, task, refused, signed=auth.signed) from None
    except pydantic.ValidationError as invalid:
        shaped = HttpError(422, "invalid_callback", _first_problem(invalid))
        raise await _reject(request, task, shaped, signed=auth.signed) from None
    if outcome is None:
        return await _progress(request, auth, output, trace)
    verdict, reason = await engine.callback(
        task, auth.attempt, auth.receipt_id, hashlib.sha256(auth.body).hexdigest(),
        outcome, output, error, trace,
    )  # fmt: skip
    status = VERDICT_STATUS[verdict]
    if status >= 400:
        return JSONResponse({"error": verdict.value, "detail": reason}, status_code=status)
    return JSONResponse({"status": verdict.value, "detail": reason}, status_code=status)


def _result(auth: Authenticated) -> tuple[Outcome | None, Any, str | None]:
    """(outcome, output, error) the body reports, read through the service's `result`
    mapping if it has one; outcome None: progress, with the status reported as output."""
    if auth.form is not None:
        try:
            body: dict[str, Any] = form_object(auth.form)
        except FormRejected as error:
            raise HttpError(400, error.error, error.detail) from None
    else:
        body = parse_json_object(auth.body)
    mapping = auth.service.result if auth.service is not None else None
    if mapping is None:
        parsed = CallbackBody.model_validate(body)
        return Outcome(parsed.status), parsed.output, parsed.error
    try:
        mapped = map_result(mapping, body)
    except MappingError as error:
        raise HttpError(422, "invalid_callback", str(error)) from None
    if mapped.outcome is None:
        return None, mapped.status, None
    return mapped.outcome, mapped.output, mapped.error


async def _progress(
    request: Request, auth: Authenticated, status: Any, trace: TraceContext | None
) -> Response:
    """A status that neither succeeds nor fails: 200, in the task's history, still waiting."""
    task = auth.task
    if auth.signed:
        data = {"status": status, "attempt": auth.attempt, "receipt_id": auth.receipt_id,
                **tracing.received_data(trace)}  # fmt: skip
        await auth.engine.record(
            HistoryEntry("callback_progress", auth.engine.clock(), task.run_id, task.id,
                         task.step, data)
        )  # fmt: skip
    detail = f"status {status!r} is progress: the task keeps waiting"
    return JSONResponse({"status": "progress", "detail": detail})


def _checked_output(engine: Engine, handler_path: str, outcome: Outcome, output: Any) -> Any:
    """The output, checked against the handler's `AwaitCallback[Model]` if it declares one."""
    if outcome is not Outcome.SUCCEEDED:
        return output
    try:
        handler = engine.handler(handler_path)
    except HandlerImportError:
        return output
    try:
        return handler.check_callback_output(output)
    except ValueError as error:
        raise HttpError(422, "invalid_output", str(error)) from None


def _first_problem(error: pydantic.ValidationError) -> str:
    problem = error.errors()[0]
    where = shown(".".join(str(part) for part in problem["loc"]) or "body")  # keys sent
    return f"{where}: {shown(str(problem['msg']), DETAIL_SHOWN)} (expected {{'status': 'succeeded' or 'failed', 'output': ..., 'error': ...}})"


async def heartbeat(request: Request) -> Response:
    """An authenticated sign of life: pushes the deadline of a task awaiting its callback."""
    auth = await _authenticated(request, "heartbeat_rejected")
    verdict, reason, deadline = await auth.engine.heartbeat(auth.task.id, auth.attempt)
    if verdict is not Verdict.ACCEPTED:
        return JSONResponse({"error": verdict.value, "detail": reason}, status_code=410)
    return JSONResponse({"status": "accepted", "deadline": deadline})


routes = [
    Route("/{token}", complete, methods=["POST"]),
    Route("/{token}/heartbeat", heartbeat, methods=["POST"]),
]
