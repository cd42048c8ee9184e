"""The drain: it waits for requests in flight, not for streams, and cuts off what outlives it."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
import uvicorn
from starlette.types import Message, Receive, Scope, Send

from orchestrator.drain import Drain, DrainMiddleware
from orchestrator.serve import MainServer

SCOPE: Scope = {"type": "http", "method": "GET", "path": "/", "headers": []}


async def no_body() -> Message:
    return {"type": "http.request", "body": b"", "more_body": False}


class Recorder:
    """The server side of one request: what the app sent."""

    def __init__(self) -> None:
        self.sent: list[Message] = []

    async def __call__(self, message: Message) -> None:
        self.sent.append(message)

    def header(self, name: bytes) -> bytes | None:
        start = next(m for m in self.sent if m["type"] == "http.response.start")
        return next((value for key, value in start["headers"] if key == name), None)


def answering_after(released: asyncio.Event, entered: asyncio.Event | None = None) -> Any:
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if entered is not None:
            entered.set()
        await released.wait()
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"done"})

    return app


def streaming(started: asyncio.Event) -> Any:
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        headers = [(b"content-type", b"text/event-stream; charset=utf-8")]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": b"retry: 1000\n\n", "more_body": True})
        started.set()
        await asyncio.Event().wait()  # a live stream never ends by itself

    return app


def request(app: Any, drain: Drain, recorder: Recorder) -> asyncio.Task[None]:
    return asyncio.ensure_future(DrainMiddleware(app, drain)(SCOPE, no_body, recorder))


async def test_the_drain_waits_for_a_request_in_flight_and_closes_its_connection() -> None:
    """finish() returns once the request is answered; that answer says Connection: close."""
    drain, released, entered, recorder = Drain(30.0), asyncio.Event(), asyncio.Event(), Recorder()
    handling = request(answering_after(released, entered), drain, recorder)
    async with asyncio.timeout(5):
        await entered.wait()
    assert drain.in_flight == 1
    finishing = asyncio.ensure_future(drain.finish())
    done, _ = await asyncio.wait([finishing], timeout=0.05)
    assert not done, "the drain waits while the request is in flight"
    released.set()
    async with asyncio.timeout(5):
        assert await finishing is True
    await handling
    assert recorder.sent[-1] == {"type": "http.response.body", "body": b"done"}
    assert recorder.header(b"connection") == b"close"
    assert (drain.cut_off, drain.in_flight) == (0, 0)


async def test_a_live_stream_is_not_waited_for_and_ends_cleanly() -> None:
    """An event stream does not hold the drain; it is ended with a last empty chunk."""
    drain, started, recorder = Drain(grace=30.0), asyncio.Event(), Recorder()
    handling = request(streaming(started), drain, recorder)
    async with asyncio.timeout(5):
        await started.wait()
        assert await drain.finish() is True
        await handling
    assert recorder.sent[-1] == {"type": "http.response.body", "body": b"", "more_body": False}
    assert (drain.cut_off, drain.streams_ended) == (0, 1)


async def test_a_request_outliving_the_grace_is_answered_503() -> None:
    """Past the grace period, a request that has not answered gets 503 shutting_down."""
    drain, entered, recorder = Drain(grace=0.05), asyncio.Event(), Recorder()
    handling = request(answering_after(asyncio.Event(), entered), drain, recorder)
    async with asyncio.timeout(5):
        await entered.wait()
        assert await drain.finish() is False
        await handling
    start, body = recorder.sent
    assert start["status"] == 503
    assert (b"connection", b"close") in start["headers"]
    assert b"shutting_down" in body["body"]
    assert drain.cut_off == 1


async def test_cancelling_a_request_for_another_reason_still_cancels_it() -> None:
    """Only the drain's own cut-off is turned into an answer; other cancellations propagate."""
    drain, entered, recorder = Drain(grace=30.0), asyncio.Event(), Recorder()
    handling = request(answering_after(asyncio.Event(), entered), drain, recorder)
    async with asyncio.timeout(5):
        await entered.wait()
    handling.cancel()
    async with asyncio.timeout(5):
        await asyncio.wait([handling])
    assert handling.cancelled()
    assert recorder.sent == []
    assert drain.in_flight == 0


async def test_before_a_drain_answers_are_untouched() -> None:
    """No drain, no Connection header added, and nothing is left in flight afterwards."""
    drain, released, recorder = Drain(grace=30.0), asyncio.Event(), Recorder()
    released.set()
    await request(answering_after(released), drain, recorder)
    assert recorder.header(b"connection") is None
    assert not drain.draining
    assert drain.in_flight == 0


async def test_a_drain_with_nothing_in_flight_is_done_at_once() -> None:
    """An idle server's drain does not wait for the grace period."""
    drain = Drain(grace=300.0)
    async with asyncio.timeout(5):
        assert await drain.finish() is True
    elapsed = drain.elapsed()
    assert elapsed is not None
    assert elapsed < 300.0


async def test_non_http_scopes_pass_through() -> None:
    """Lifespan messages are not requests: the drain does not track them."""
    seen: list[str] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        seen.append(scope["type"])

    drain = Drain(grace=1.0)
    await DrainMiddleware(app, drain)({"type": "lifespan"}, no_body, Recorder())
    assert seen == ["lifespan"]
    assert drain.in_flight == 0


def test_the_main_server_finds_the_drain_of_the_app_it_serves() -> None:
    """MainServer serves create_app's app; any other app is refused at once, by name."""

    async def ready() -> None:
        return None

    async def bare(scope: Scope, receive: Receive, send: Send) -> None:
        return None

    with pytest.raises(TypeError, match="create_app"):
        MainServer(uvicorn.Config(bare), ready)
    drain = Drain(grace=1.0)
    assert MainServer(uvicorn.Config(bare), ready, drain)._drain is drain
