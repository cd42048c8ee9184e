"""POST /callbacks/{token}: external services complete their task, signed; heartbeats extend it.

Order of checks: the token (404), the body size while reading (413), the signature against
the step's service secrets and the attempt's own secret (401), the JSON shape (400/422),
the declared output model (422); then the engine's one completion path decides (200
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

from orchestrator.engine import Engine, Verdict
from orchestrator.http import HttpError, parse_json_object, read_body
from orchestrator.invoke import HandlerImportError
from orchestrator.model import StepSpec
from orchestrator.records import HistoryEntry, Task
from orchestrator.rejections import DETAIL_SHOWN, Rejections, shown
from orchestrator.signing import SignatureError, verify
from orchestrator.states import Outcome
from orchestrator.tokens import task_secret, token_hash

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


async def _authenticated(
    request: Request, kind: str
) -> tuple[Engine, Task, StepSpec, int, bytes, str]:
    """The task, its step's spec and the attempt behind the token, the raw body, and the
    verified webhook-id. Reads only: a rejection here never waits for a write."""
    engine = _engine(request)
    limits: CallbackLimits = request.app.state.callback_limits
    found = await engine.store.callback_target(token_hash(request.path_params["token"]))
    if found is None:
        unknown = HttpError(404, "unknown_token", "no task has this callback token")
        raise await _reject(request, None, unknown, kind, signed=False)
    task, attempt = found
    step = (await engine.workflow_of(task.run_id)).steps[task.step]
    try:
        body = await read_body(request, limits.body_limit)
    except HttpError as error:
        raise await _reject(request, task, error, kind, signed=False) from None
    service = engine.services.get(step.service or "")
    accepted = [
        *(service.secret_values() if service else []),
        task_secret(await engine.callback_key(), task.id, attempt),
    ]
    try:
        verified = verify(accepted, request.headers, body, engine.clock(), limits.tolerance)
    except SignatureError as error:
        forged = HttpError(401, "bad_signature", str(error))
        raise await _reject(request, task, forged, kind, signed=False) from None
    return engine, task, step, attempt, body, verified.message_id


async def complete(request: Request) -> Response:
    """A signed completion of one task attempt."""
    engine, task, step, attempt, body, webhook_id = await _authenticated(
        request, "callback_rejected"
    )
    try:
        parsed = CallbackBody.model_validate(parse_json_object(body))
        output = _checked_output(engine, step.handler, parsed)
    except HttpError as error:
        raise await _reject(request, task, error) from None
    except pydantic.ValidationError as error:
        problem = HttpError(422, "invalid_callback", _first_problem(error))
        raise await _reject(request, task, problem) from None
    verdict, reason = await engine.callback(
        task, attempt, webhook_id, hashlib.sha256(body).hexdigest(),
        Outcome(parsed.status), output, parsed.error,
    )  # fmt: skip
    status = VERDICT_STATUS[verdict]
    if status >= 400:
        return JSONResponse({"error": verdict.value, "detail": reason}, status_code=status)
    return JSONResponse({"status": verdict.value, "detail": reason}, status_code=status)


def _checked_output(engine: Engine, handler_path: str, parsed: CallbackBody) -> Any:
    """The output, checked against the handler's `AwaitCallback[Model]` if it declares one."""
    if parsed.status != "succeeded":
        return parsed.output
    try:
        handler = engine.handler(handler_path)
    except HandlerImportError:
        return parsed.output
    try:
        return handler.check_callback_output(parsed.output)
    except ValueError as error:
        raise HttpError(422, "invalid_output", str(error)) from None


def _first_problem(error: pydantic.ValidationError) -> str:
    problem = error.errors()[0]
    where = shown(".".join(str(part) for part in problem["loc"]) or "body")  # keys sent
    return f"{where}: {shown(str(problem['msg']), DETAIL_SHOWN)} (expected {{'status': 'succeeded' or 'failed', 'output': ..., 'error': ...}})"


async def heartbeat(request: Request) -> Response:
    """A signed sign of life: pushes the deadline of a task awaiting its callback."""
    engine, task, _, attempt, _, _ = await _authenticated(request, "heartbeat_rejected")
    verdict, reason, deadline = await engine.heartbeat(task.id, attempt)
    if verdict is not Verdict.ACCEPTED:
        return JSONResponse({"error": verdict.value, "detail": reason}, status_code=410)
    return JSONResponse({"status": "accepted", "deadline": deadline})


routes = [
    Route("/{token}", complete, methods=["POST"]),
    Route("/{token}/heartbeat", heartbeat, methods=["POST"]),
]
