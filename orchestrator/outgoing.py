"""The one outgoing HTTP client: bounded connections, sane timeouts, redirects not followed.

Requests beyond the connection limit wait on a semaphore, in order, before they reach the
connection pool. httpcore's pool re-scans every queued request on each release, so letting
thousands queue there costs quadratic CPU (a 1,000-task fan-out stalled for tens of seconds);
a semaphore queue costs nothing while it waits.
"""

from __future__ import annotations

import asyncio

import httpx

MAX_CONNECTIONS = 32


class BoundedTransport(httpx.AsyncBaseTransport):
    """At most `limit` requests in the wrapped transport at once; the rest wait their turn."""

    def __init__(self, inner: httpx.AsyncBaseTransport, limit: int) -> None:
        self._inner = inner
        self._slots = asyncio.Semaphore(limit)

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        async with self._slots:
            response = await self._inner.handle_async_request(request)
            # Read the body inside the slot, so the connection is back in the pool when the
            # slot is released.
            await response.aread()
            return response

    async def aclose(self) -> None:
        await self._inner.aclose()


def http_client(max_connections: int = MAX_CONNECTIONS) -> httpx.AsyncClient:
    """The shared client for every outgoing call the orchestrator and its handlers make."""
    limits = httpx.Limits(
        max_connections=max_connections, max_keepalive_connections=max_connections
    )
    transport = BoundedTransport(httpx.AsyncHTTPTransport(limits=limits), max_connections)
    return httpx.AsyncClient(
        transport=transport,
        timeout=httpx.Timeout(10.0, connect=5.0),
        follow_redirects=False,
    )
