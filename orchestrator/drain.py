"""Graceful shutdown: readiness turns 503 first, requests already received finish, then exit.

A drain starts at the first SIGTERM (`serve.run`). From that moment `/readyz` answers 503,
so a load balancer stops sending; the server closes its listener, so no new connection is
accepted; and every answer carries `Connection: close`, so a client on a kept-alive
connection takes its next request elsewhere. The drain then waits until every request
already received has been answered, at most `grace` seconds. What still runs after that
is cut off: live event streams (which never end by themselves; their clients resume with
Last-Event-ID) end cleanly, and requests still being handled are answered 503. Nothing is
lost by a cut-off: pending work is in the store before anyone is told about it.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import structlog
from starlette.types import ASGIApp, Message, Receive, Scope, Send

log = structlog.get_logger("orchestrator.drain")

CUT_OFF_WAIT = 1.0  # seconds for cut-off requests to send their last bytes
CUT_OFF_BODY = json.dumps(
    {"error": "shutting_down", "detail": "the server is shutting down; send the request again"}
).encode()


class Drain:
    """Which requests are in flight, and the state of a shutdown once one begins."""

    def __init__(self, grace: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.grace = grace
        self._clock = clock
        self.started_at: float | None = None
        self.cut_off = 0
        self.streams_ended = 0
        self._working: set[asyncio.Task[Any]] = set()
        self._streaming: set[asyncio.Task[Any]] = set()
        self._cut: set[asyncio.Task[Any]] = set()
        self._idle = asyncio.Event()

    @property
    def draining(self) -> bool:
        return self.started_at is not None

    @property
    def in_flight(self) -> int:
        """Requests being answered, not counting live streams."""
        return len(self._working)

    def elapsed(self) -> float | None:
        """Seconds since the drain began, or None if it has not."""
        return None if self.started_at is None else self._clock() - self.started_at

    def begin(self) -> None:
        """Readiness turns 503 and answers close their connections from now on."""
        if self.started_at is not None:
            return
        self.started_at = self._clock()
        log.info(
            "shutdown_started",
            grace=self.grace,
            requests_in_flight=len(self._working),
            streams_open=len(self._streaming),
        )
        self._check_idle()

    async def finish(self) -> bool:
        """Wait for the requests in flight (at most the rest of the grace period), then cut
        off what still runs. True if every request finished by itself."""
        self.begin()
        assert self.started_at is not None  # noqa: S101 - begin() set it
        remaining = max(0.0, self.started_at + self.grace - self._clock())
        try:
            async with asyncio.timeout(remaining):
                await self._idle.wait()
        except TimeoutError:
            pass
        finished = not self._working
        self.cut_off = len(self._working)
        self.streams_ended = len(self._streaming)
        if self.cut_off:
            log.warning("shutdown_grace_expired", grace=self.grace, cutting_off=self.cut_off)
        cut = self._working | self._streaming
        for task in cut:
            self._cut.add(task)
            task.cancel()
        if cut:
            await asyncio.wait(cut, timeout=CUT_OFF_WAIT)
        return finished

    def _started(self, task: asyncio.Task[Any]) -> None:
        self._working.add(task)

    def _streams(self, task: asyncio.Task[Any]) -> None:
        """This request's answer is a live stream: the drain does not wait for it to end."""
        self._working.discard(task)
        self._streaming.add(task)
        self._check_idle()

    def _done(self, task: asyncio.Task[Any]) -> None:
        self._working.discard(task)
        self._streaming.discard(task)
        self._cut.discard(task)
        self._check_idle()

    def _check_idle(self) -> None:
        if self.started_at is not None and not self._working:
            self._idle.set()

    def was_cut(self, task: asyncio.Task[Any]) -> bool:
        return task in self._cut


@dataclass(slots=True)
class _Answer:
    started: bool = False
    complete: bool = False


class DrainMiddleware:
    """ASGI middleware: tracks the requests in flight for `Drain`, and answers for it."""

    def __init__(self, app: ASGIApp, drain: Drain) -> None:
        self.app = app
        self.drain = drain

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        drain = self.drain
        task = asyncio.current_task()
        assert task is not None  # noqa: S101 - ASGI apps run in a task
        drain._started(task)
        answer = _Answer()

        async def send_tracked(message: Message) -> None:
            if message["type"] == "http.response.start":
                answer.started = True
                if _is_stream(message):
                    drain._streams(task)
                if drain.draining:
                    message = _closing(message)
            elif message["type"] == "http.response.body" and not message.get("more_body"):
                answer.complete = True
            await send(message)

        try:
            await self.app(scope, receive, send_tracked)
        except asyncio.CancelledError:
            if not drain.was_cut(task):
                raise
            task.uncancel()
            await _finish_cut_off(answer, send)
        finally:
            drain._done(task)


async def _finish_cut_off(answer: _Answer, send: Send) -> None:
    """A request cut off by the drain: 503 if nothing was sent yet, else end the body."""
    if not answer.started:
        await send(
            {
                "type": "http.response.start",
                "status": 503,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(CUT_OFF_BODY)).encode()),
                    (b"retry-after", b"1"),
                    (b"connection", b"close"),
                ],
            }
        )
        await send({"type": "http.response.body", "body": CUT_OFF_BODY})
    elif not answer.complete:
        await send({"type": "http.response.body", "body": b"", "more_body": False})


def _is_stream(message: Message) -> bool:
    for name, value in message.get("headers", ()):
        if name.lower() == b"content-type":
            return bytes(value).startswith(b"text/event-stream")
    return False


def _closing(message: Message) -> Message:
    """The response start with `Connection: close`, so the client reconnects elsewhere."""
    headers = [(name, value) for name, value in message.get("headers", ()) if name != b"connection"]
    return {**message, "headers": [*headers, (b"connection", b"close")]}
