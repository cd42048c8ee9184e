"""The HTTP edge's instruments: inbound POSTs counted by route and answer, and GET /metrics.

Counting happens in an ASGI middleware rather than in the route modules, so every answer
is counted the same way, including the ones an exception handler or the drain writes.
Routes are named by their template (`/callbacks/{token}`), never by the path, so a flood
of unknown tokens cannot grow the number of series.
"""

from __future__ import annotations

import time

from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from orchestrator.http import HttpError, token_matches
from orchestrator.metrics import CONTENT_TYPE, Metrics


def inbound_route(path: str) -> str | None:
    """The template of a callback, heartbeat or hook path; None for every other path."""
    parts = path.split("/")
    if len(parts) < 3 or parts[0] or not parts[2]:
        return None
    if parts[1] == "callbacks":
        if len(parts) == 3:
            return "/callbacks/{token}"
        if len(parts) == 4 and parts[3] == "heartbeat":
            return "/callbacks/{token}/heartbeat"
    if parts[1] == "hooks" and len(parts) == 3:
        return "/hooks/{trigger}"
    return None


class InboundMetrics:
    """ASGI middleware: each callback, heartbeat and hook answered, by route, status and time."""

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        route = inbound_route(scope["path"]) if scope["type"] == "http" else None
        if route is None:
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500  # what the server answers if the app raises before it answers

        async def send_observed(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_observed)
        finally:
            self.metrics.callback(route, status, time.perf_counter() - started)


async def metrics_page(request: Request) -> Response:
    """The process's figures in the Prometheus text format; behind `metrics_token` if set."""
    tokens: list[str] = request.app.state.metrics_tokens
    if tokens:
        scheme, _, presented = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not token_matches(presented.strip(), tokens):
            raise HttpError(
                401,
                "unauthorized",
                "send Authorization: Bearer <token> with a token from ORCHESTRATOR_METRICS_TOKEN",
                {"WWW-Authenticate": 'Bearer realm="metrics"'},
            )
    metrics: Metrics = request.app.state.metrics
    return Response(metrics.exposition(), media_type=CONTENT_TYPE)
