"""POST /hooks/{trigger}: signed inbound webhooks start runs; redeliveries start nothing.

The event is persisted before the answer (202 with its id, fast: senders time out in
seconds). A redelivery answers 200 with the same event id and the run it started.
Deduplication is on the sender's delivery id (webhook-id, X-GitHub-Delivery, the Stripe
event id), or an Idempotency-Key where the sender has none; never on a hash of the body:
two real deliveries may carry the same body.

Every rejection is counted (orchestrator/rejections.py); only one after a signature checked
out is also a `hook_rejected` history row. An unknown trigger, a bad signature, a body
over the limit, or anything refused on a `scheme = "none"` hook costs no row and no wait
for the store, and the trigger name is echoed cut to 64 characters and escaped.

A valid W3C `traceparent` (and `tracestate`) is kept with the event, and its trace id is
in the request's log lines; an invalid one is ignored (tracing.py).
"""

from __future__ import annotations

import functools
import importlib
from typing import Any

import pydantic
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from orchestrator import tracing
from orchestrator.admin import fired_response
from orchestrator.engine import Engine
from orchestrator.http import HttpError, idempotency_key, parse_json_object, read_body
from orchestrator.model import WebhookSpec
from orchestrator.records import HistoryEntry
from orchestrator.rejections import DETAIL_SHOWN, Rejections, shown
from orchestrator.signing import SignatureError, verify, verify_github, verify_stripe
from orchestrator.tracecontext import TraceContext

ROUTE = "/hooks/{trigger}"


def _engine(request: Request) -> Engine:
    engine: Engine = request.app.state.engine
    return engine


async def receive(request: Request) -> Response:
    """Verify, persist as an event, start the run; or say exactly why not."""
    trace = tracing.from_headers(request.headers.items())
    with tracing.logged(trace):
        return await _receive(request, trace)


async def _receive(request: Request, trace: TraceContext | None) -> Response:
    engine = _engine(request)
    name = request.path_params["trigger"]
    trigger = engine.triggers.get(name)
    if trigger is None or trigger.webhook is None:
        unknown = HttpError(404, "unknown_trigger", f"no webhook trigger named '{shown(name)}'")
        raise await _reject(request, name, unknown, signed=False)
    webhook = trigger.webhook
    try:
        body = await read_body(request, request.app.state.callback_limits.body_limit)
        delivery = _verify(webhook, request, body, engine.clock())
    except HttpError as error:
        raise await _reject(request, name, error, signed=False) from None
    try:
        payload = _payload(webhook, parse_json_object(body))
    except HttpError as error:
        raise await _reject(request, name, error, signed=webhook.scheme != "none") from None
    if webhook.scheme == "stripe":
        delivery = payload.get("id") if isinstance(payload.get("id"), str) else None
    # A signed delivery id wins: an unsigned Idempotency-Key must not turn a replayed signed
    # request into a new event. The header serves senders that have no delivery id.
    try:
        dedup = delivery or idempotency_key(request)
    except HttpError as error:
        raise await _reject(request, name, error, signed=webhook.scheme != "none") from None
    fired = await engine.fire(
        name, payload, dedup_key=dedup, source=f"webhook:{webhook.scheme}", trace=trace
    )
    return await fired_response(engine, fired)


def _verify(webhook: WebhookSpec, request: Request, body: bytes, now: float) -> str | None:
    """The sender's delivery id once the signature checks out; 401 otherwise."""
    secrets = webhook.secret_values()
    try:
        if webhook.scheme == "standard":
            return verify(secrets, request.headers, body, now, webhook.tolerance).message_id
        if webhook.scheme == "github":
            return verify_github(secrets, request.headers, body)
        if webhook.scheme == "stripe":
            verify_stripe(secrets, request.headers, body, now, webhook.tolerance)
            return None
    except SignatureError as error:
        raise HttpError(401, "bad_signature", str(error)) from None
    return None  # scheme "none": chosen explicitly, warned about at start-up


def _payload(webhook: WebhookSpec, payload: dict[str, Any]) -> dict[str, Any]:
    if webhook.payload_model is None:
        return payload
    adapter = _adapter(webhook.payload_model)
    try:
        checked: dict[str, Any] = adapter.dump_python(adapter.validate_python(payload), mode="json")
    except pydantic.ValidationError as error:
        problem = error.errors()[0]
        where = shown(".".join(str(part) for part in problem["loc"]) or "body")  # keys sent
        message = shown(str(problem["msg"]), DETAIL_SHOWN)
        raise HttpError(422, "invalid_payload", f"{where}: {message}") from None
    return checked


@functools.cache
def _adapter(path: str) -> pydantic.TypeAdapter[Any]:
    """The payload model's validator, built once per model."""
    module, _, name = path.partition(":")
    return pydantic.TypeAdapter(getattr(importlib.import_module(module), name))


async def _reject(request: Request, trigger: str, error: HttpError, *, signed: bool) -> HttpError:
    """Count a rejection and hand back the error to raise; a `signed` one (the sender proved
    to hold the trigger's secret) is also written to history first."""
    rejections: Rejections = request.app.state.rejections
    client = request.client.host if request.client else None
    rejections.count(ROUTE, error, target=trigger, client=client)
    if signed:
        engine = _engine(request)
        data = {"trigger": trigger, "status": error.status, "error": error.error,
                "reason": error.detail}  # fmt: skip
        await engine.record(HistoryEntry("hook_rejected", engine.clock(), data=data))
    return error


routes = [Route("/{trigger}", receive, methods=["POST"])]
