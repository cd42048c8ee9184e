"""The outgoing client against real uvicorn servers on loopback: its limit, reuse and close."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
import pytest
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, RedirectResponse, Response
from starlette.routing import Route

from orchestrator.outgoing import http_client
from orchestrator.sending import plain_request
from orchestrator.serve import listening_socket


class Origin:
    """A server that records the client port of every request; /block holds until released."""

    def __init__(self) -> None:
        self.ports: list[int] = []
        self.inside = 0
        self.peak = 0
        self.release = asyncio.Event()
        self._changed = asyncio.Condition()
        self.url = ""

    async def port(self, request: Request) -> Response:
        assert request.client is not None
        self.ports.append(request.client.port)
        return PlainTextResponse(str(request.client.port))

    async def moved(self, request: Request) -> Response:
        return RedirectResponse("/port", status_code=307)

    async def block(self, request: Request) -> Response:
        async with self._changed:
            self.inside += 1
            self.peak = max(self.peak, self.inside)
            self._changed.notify_all()
        await self.release.wait()
        self.inside -= 1
        return PlainTextResponse("released")

    async def inside_at_least(self, count: int, within: float = 2.0) -> None:
        """Wait until `count` requests are held in /block at once."""
        async with asyncio.timeout(within), self._changed:
            await self._changed.wait_for(lambda: self.inside >= count)


@asynccontextmanager
async def serving() -> AsyncIterator[Origin]:
    origin = Origin()
    app = Starlette(
        routes=[
            Route("/port", origin.port),
            Route("/block", origin.block),
            Route("/moved", origin.moved),
        ]
    )
    sock = listening_socket("127.0.0.1", 0)
    config = uvicorn.Config(app, log_level="critical", lifespan="off", timeout_graceful_shutdown=1)
    server = uvicorn.Server(config)
    origin.url = f"http://127.0.0.1:{sock.getsockname()[1]}"
    task = asyncio.ensure_future(server.serve(sockets=[sock]))
    try:
        yield origin
    finally:
        origin.release.set()
        server.should_exit = True
        await task
        sock.close()


@pytest.fixture
async def origin() -> AsyncIterator[Origin]:
    async with serving() as origin:
        yield origin


@pytest.fixture
async def other_origin() -> AsyncIterator[Origin]:
    async with serving() as origin:
        yield origin


async def test_requests_beyond_the_limit_wait_for_a_free_connection(origin: Origin) -> None:
    """With a limit of 2, five requests at once reach the server two at a time, and all finish."""
    async with http_client(max_connections=2) as client, httpx.AsyncClient() as probe:
        requests = asyncio.gather(*(client.get(f"{origin.url}/block") for _ in range(5)))
        await origin.inside_at_least(2)
        # A whole round trip on another client: any request let past the limit is in by now.
        assert (await probe.get(f"{origin.url}/port")).status_code == 200
        assert origin.inside == 2
        origin.release.set()
        async with asyncio.timeout(2):
            responses = await requests
    assert [response.text for response in responses] == ["released"] * 5
    assert origin.peak == 2


async def test_sequential_requests_to_one_origin_reuse_one_connection(origin: Origin) -> None:
    """Three requests one after another arrive on one connection (one client port)."""
    async with http_client() as client:
        for _ in range(3):
            (await client.get(f"{origin.url}/port")).raise_for_status()
    assert len(origin.ports) == 3
    assert len(set(origin.ports)) == 1


async def test_each_origin_keeps_its_own_connection(origin: Origin, other_origin: Origin) -> None:
    """Requests alternating between two origins keep one connection to each, not one shared."""
    async with http_client() as client:
        for _ in range(3):
            for server in (origin, other_origin):
                (await client.get(f"{server.url}/port")).raise_for_status()
    assert (len(origin.ports), len(other_origin.ports)) == (3, 3)
    assert len(set(origin.ports)) == 1
    assert len(set(other_origin.ports)) == 1
    assert set(origin.ports).isdisjoint(other_origin.ports)


async def test_a_redirect_is_answered_not_followed(origin: Origin) -> None:
    """A 3xx comes back as it is: the client never follows a service elsewhere."""
    async with http_client() as client:
        response = await client.get(f"{origin.url}/moved")
    assert (response.status_code, response.headers["location"]) == (307, "/port")
    assert origin.ports == []


async def test_a_refused_connection_is_a_transport_error() -> None:
    """Nobody listening: httpx.TransportError (which ctx.dispatch turns into a re-dispatch)."""
    sock = listening_socket("127.0.0.1", 0)
    port = sock.getsockname()[1]
    sock.close()
    async with http_client() as client:
        with pytest.raises(httpx.TransportError):
            await client.get(f"http://127.0.0.1:{port}/port")


async def test_a_read_timeout_is_a_transport_error(origin: Origin) -> None:
    """A service that accepts and never answers times out as an httpx.TransportError."""
    async with http_client() as client:
        with pytest.raises(httpx.TransportError):
            await client.get(f"{origin.url}/block", timeout=httpx.Timeout(0.2))


async def test_a_connection_cut_mid_answer_is_a_transport_error() -> None:
    """A server that closes the connection before answering: httpx.TransportError."""

    async def cut(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\npartial")
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(cut, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        async with http_client() as client:
            with pytest.raises(httpx.TransportError):
                await client.get(f"http://127.0.0.1:{port}/")
    finally:
        server.close()
        await server.wait_closed()


async def test_a_closed_client_refuses_requests(origin: Origin) -> None:
    """After aclose() the client makes no more requests (its pool is gone)."""
    client = http_client()
    (await client.get(f"{origin.url}/port")).raise_for_status()
    await client.aclose()
    with pytest.raises(RuntimeError):
        await client.get(f"{origin.url}/port")


@pytest.mark.parametrize(
    "kwargs",
    [
        {"json": {"lead": "Zoë", "n": [1, 2.5, None]}},
        {"content": b"raw bytes"},
        {"json": {"a": 1}, "headers": {"X-Trace": "t1"}},
    ],
)
async def test_a_plain_request_is_the_request_the_client_would_build(
    kwargs: dict[str, Any],
) -> None:
    """The hand-off's lean request carries the same method, URL, headers and body as
    client.build_request would make."""
    async with http_client() as client:
        headers = {"Idempotency-Key": "tsk_1:1", **kwargs.pop("headers", {})}
        lean = plain_request(client, "POST", "http://svc.test:8080/jobs?x=1", headers, kwargs)
        built = client.build_request(
            "POST", "http://svc.test:8080/jobs?x=1", headers=headers, **kwargs
        )
    assert (lean.method, lean.url) == (built.method, built.url)
    assert sorted(lean.headers.multi_items()) == sorted(built.headers.multi_items())
    assert lean.content == built.content
    assert lean.extensions["timeout"] == built.extensions["timeout"]


async def test_other_arguments_are_built_by_the_client() -> None:
    """Form data, params or files take the client's own request building."""
    async with http_client() as client:
        lean = plain_request(client, "POST", "http://svc.test/jobs", {}, {"data": {"a": "1"}})
    assert lean.content == b"a=1"
    assert lean.headers["content-type"] == "application/x-www-form-urlencoded"
