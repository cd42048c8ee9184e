"""The Starlette app factory: routes, error answers, and the lifespan that owns the engine."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

import structlog
from starlette.applications import Starlette
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.middleware import Middleware
from starlette.requests import ClientDisconnect, Request
from starlette.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from starlette.routing import Mount, Route, Router

from orchestrator import admin, admin_rejections, admin_waits, callbacks, hooks
from orchestrator.callbacks import CallbackLimits
from orchestrator.drain import Drain, DrainMiddleware
from orchestrator.engine import Engine
from orchestrator.http import BearerAuth, HeaderLimit, HttpError, error_response, route_template
from orchestrator.instrument import InboundMetrics, metrics_page
from orchestrator.invoke import sync_steps_with_timeout
from orchestrator.metrics import Metrics
from orchestrator.openapi import document as openapi_document
from orchestrator.outgoing import http_client
from orchestrator.readiness import Readiness
from orchestrator.rejections import Rejections
from orchestrator.replicas import default_replica_id
from orchestrator.retention import Retention, RetentionJob
from orchestrator.scheduler import CronScheduler
from orchestrator.settings import Settings
from orchestrator.store import Store, StoreUnavailable, open_store

log = structlog.get_logger("orchestrator.app")

Started = Callable[[Engine], Awaitable[None]]


async def healthz(request: Request) -> Response:
    return JSONResponse({"status": "ok"})


async def readyz(request: Request) -> Response:
    """Ready while the store can write (a bounded probe, at most a second old); 503 from
    the first moment of a graceful shutdown."""
    drain: Drain = request.app.state.drain
    retry = {"Retry-After": "1"}
    if drain.draining:
        detail = "shutting down; send to another replica"
        body = {"status": "draining", "error": "draining", "detail": detail}
        return JSONResponse(body, status_code=503, headers=retry)
    readiness: Readiness = request.app.state.readiness
    problem = await readiness.problem()
    if problem is not None:
        body = {"status": "store_unavailable", "error": "store_unavailable", "detail": problem}
        return JSONResponse(body, status_code=503, headers=retry)
    return JSONResponse({"status": "ready"})


DASHBOARD = (Path(__file__).parent / "dashboard.html").read_text()


async def dashboard(request: Request) -> Response:
    """The live dashboard: static HTML; its script asks for the token and calls the API."""
    return HTMLResponse(DASHBOARD, headers={"Cache-Control": "no-cache"})


async def openapi(request: Request) -> Response:
    return JSONResponse(openapi_document())


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HttpError)  # noqa: S101 - registered for HttpError only
    return exc.response()


ROUTING_ERRORS = {404: "not_found", 405: "method_not_allowed"}


async def _routing_error(request: Request, exc: Exception) -> Response:
    """Starlette's own 404 and 405 (no route matched) as JSON errors like every other answer."""
    assert isinstance(exc, StarletteHTTPException)  # noqa: S101 - registered for it only
    error = ROUTING_ERRORS.get(exc.status_code, "http_error")
    detail = "no route matches this path" if exc.status_code == 404 else str(exc.detail)
    return error_response(exc.status_code, error, detail, dict(exc.headers or {}))


def _router(routes: list[Any]) -> Router:
    """A path with a trailing slash too many is not found, not redirected: a webhook sender
    does not follow a 307 on POST, and the answer should say what is wrong."""
    return Router(routes, redirect_slashes=False)


async def _to_dashboard(request: Request) -> Response:
    return RedirectResponse("/admin/", status_code=308)


async def _server_error(request: Request, exc: Exception) -> Response:
    """A bug: the answer is JSON like every other (the traceback goes to the log)."""
    detail = "the server failed on this request; its log has the details"
    return error_response(500, "internal_error", detail)


async def _client_disconnected(request: Request, exc: Exception) -> Response:
    """The client hung up before its body arrived: one line in the log, nothing stored.

    The answer goes nowhere (the server drops what is sent to a closed connection); it
    exists so that Starlette does not treat the disconnect as a server error.
    """
    log.info("client_disconnected", route=route_template(request), method=request.method)
    return Response(status_code=400)


async def _store_unavailable(request: Request, exc: Exception) -> Response:
    return error_response(
        503,
        "store_unavailable",
        "the store is busy or unavailable; try again",
        {"Retry-After": "1"},
    )


def _warn_about(settings: Settings, engine: Engine) -> None:
    """Configurations that work but may not do what their author expects."""
    for name, trigger in settings.triggers.items():
        if trigger.webhook is not None and trigger.webhook.scheme == "none":
            log.warning("webhook_unsigned", trigger=name, hint="anyone can fire it")
    for name, service in settings.services.items():
        if service.auth == "capability":
            log.warning(
                "callback_capability_only", service=name,
                hint="anyone holding a task's callback URL can complete it: no signature",
            )  # fmt: skip
    found = sync_steps_with_timeout(settings.workflows, engine.handler)
    for workflow, step, handler, timeout in found:
        log.warning(
            "sync_handler_timeout",
            workflow=workflow,
            step=step,
            handler=handler,
            timeout=timeout,
            hint="a plain function runs in a thread that cannot be stopped: at the timeout "
            "the task fails and ctx.cancelled is set, but the thread runs on until the "
            "function returns; check ctx.cancelled, or make the handler async",
        )


def _stop_this_process() -> None:
    """A replica that lost its lease stops the way SIGTERM stops it (drained, then out)."""
    os.kill(os.getpid(), signal.SIGTERM)


def configured_store(settings: Settings) -> Store:
    """The store the settings name, not yet opened."""
    return open_store(
        settings.database_url,
        synchronous=settings.sqlite_synchronous,
        pool_min=settings.database_pool_min,
        pool_max=settings.database_pool_max,
        pool_timeout=settings.database_pool_timeout,
        busy_timeout=settings.store_busy_timeout,
    )


def create_app(
    settings: Settings,
    *,
    on_started: Sequence[Started] = (),
    background: Sequence[Started] = (),
) -> Starlette:
    """The orchestrator as an ASGI app.

    Once the engine is up and has recovered, each `background` coroutine is started (and
    cancelled at shutdown) and each `on_started` callback is awaited in turn. The app's
    `state.metrics` holds its figures and `state.drain` its graceful shutdown.
    """
    metrics = Metrics()
    drain = Drain(settings.shutdown_grace)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        store = configured_store(settings)
        await store.open()
        async with http_client() as http:
            key = settings.callback_key
            engine = Engine(
                store,
                settings.workflows,
                settings.triggers,
                http=http,
                services=settings.services,
                public_url=settings.public_url or f"http://{settings.host}:{settings.port}",
                callback_key=key.get_secret_value().encode() if key else None,
                handler_threads=settings.handler_threads,
                max_running_handlers=settings.max_running_handlers,
                metrics=metrics,
                replica=settings.replica_id or default_replica_id(settings.port),
                lease=settings.replica_lease,
                on_lease_lost=_stop_this_process,
            )
            app.state.engine = engine
            rejections = Rejections(store, engine.timers, engine.clock, engine.record, metrics)
            app.state.rejections = rejections
            app.state.readiness = Readiness(store, fresh_for=settings.ready_probe_reuse)
            running = [asyncio.ensure_future(job(engine)) for job in background]
            try:
                await engine.recover()
                _warn_about(settings, engine)
                await CronScheduler(engine, settings.triggers).start()
                retention = Retention(settings.retention_history, settings.retention_runs)
                RetentionJob(engine, retention).arm(delay=60.0)
                for callback in on_started:
                    await callback(engine)
                yield
            finally:
                for job in running:
                    job.cancel()
                await asyncio.gather(*running, return_exceptions=True)
                await rejections.close(within=settings.store_busy_timeout)
                await engine.close()
                await store.close()
                elapsed = drain.elapsed()
                log.info(
                    "shutdown_complete",
                    seconds=None if elapsed is None else round(elapsed, 3),
                    requests_cut_off=drain.cut_off,
                    streams_ended=drain.streams_ended,
                )

    routes: list[Any] = [  # the hot routes first: the router tries them in order
        Mount("/callbacks", app=_router(callbacks.routes)),
        Mount("/hooks", app=_router(hooks.routes)),
        Route("/healthz", healthz, methods=["GET"]),
        Route("/readyz", readyz, methods=["GET"]),
        Route("/metrics", metrics_page, methods=["GET"]),
        Route("/openapi.json", openapi, methods=["GET"]),
        Route("/admin", _to_dashboard, methods=["GET"]),
        Route("/admin/", dashboard, methods=["GET"]),
        Mount(
            "/admin",
            app=_router([*admin.routes, *admin_rejections.routes, *admin_waits.routes]),
            middleware=[Middleware(BearerAuth, tokens=settings.admin_tokens())],
        ),
    ]
    app = Starlette(
        routes=routes,
        lifespan=lifespan,
        exception_handlers={
            HttpError: _http_error,
            StoreUnavailable: _store_unavailable,
            ClientDisconnect: _client_disconnected,
            StarletteHTTPException: _routing_error,
            Exception: _server_error,
        },
        middleware=[
            Middleware(InboundMetrics, metrics=metrics),
            Middleware(HeaderLimit, limit=settings.header_limit),
            Middleware(DrainMiddleware, drain=drain),
        ],
    )
    app.router.redirect_slashes = False
    app.state.callback_limits = CallbackLimits(settings.body_limit, settings.signature_tolerance)
    app.state.metrics = metrics
    app.state.metrics_tokens = settings.metrics_tokens()
    app.state.drain = drain
    return app
