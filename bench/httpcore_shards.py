"""The outgoing client the orchestrator used before the aiohttp transport, kept to measure
against it (bench/outgoing.py): httpx's own httpcore stack, tuned.

httpcore's connection pool re-scans all its connections and queued requests on every
request and release, probing each idle socket; with 32 connections and a 1,000-task
fan-out that scan was most of the CPU (a 1,000-request burst took 4.7 s through one pool
of 32 connections, 0.7 s through the transport below; see docs/benchmarks.md). So each
connection gets a pool of its own (one connection, nothing to scan), kept in a free list
per origin, and requests beyond the limit wait on a semaphore, in order, costing nothing
while they wait.
"""

from __future__ import annotations

import asyncio
from collections import defaultdict

import httpx

MAX_CONNECTIONS = 32

Origin = tuple[bytes, bytes, int | None]


class ConnectionShards(httpx.AsyncBaseTransport):
    """At most `limit` requests at once, each on an idle one-connection pool of its origin."""

    def __init__(self, limit: int = MAX_CONNECTIONS) -> None:
        self._limit = limit
        self._slots = asyncio.Semaphore(limit)
        self._idle: defaultdict[Origin, list[httpx.AsyncHTTPTransport]] = defaultdict(list)
        self._idle_count = 0
        self._closed = False
        # Loading the CA bundle takes tens of milliseconds: once, not per connection.
        self._tls = httpx.create_ssl_context()

    def _origin(self, request: httpx.Request) -> Origin:
        url = request.url
        return (url.raw_scheme, url.raw_host, url.port)

    def _take(self, origin: Origin) -> httpx.AsyncHTTPTransport:
        idle = self._idle[origin]
        if idle:
            self._idle_count -= 1
            return idle.pop()  # the most recently used: its connection is the warmest
        return httpx.AsyncHTTPTransport(
            verify=self._tls, limits=httpx.Limits(max_connections=1, max_keepalive_connections=1)
        )

    async def _give_back(self, origin: Origin, transport: httpx.AsyncHTTPTransport) -> None:
        if self._closed or self._idle_count >= self._limit:
            await transport.aclose()  # many origins: keep at most `limit` idle connections
            return
        self._idle[origin].append(transport)
        self._idle_count += 1

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        async with self._slots:
            origin = self._origin(request)
            transport = self._take(origin)
            try:
                response = await transport.handle_async_request(request)
                # Read the body here, so the connection is free again when it goes back.
                await response.aread()
            finally:
                # A pool drops a broken connection by itself; the next request reconnects.
                await self._give_back(origin, transport)
            return response

    async def aclose(self) -> None:
        self._closed = True
        idle = [transport for transports in self._idle.values() for transport in transports]
        self._idle.clear()
        self._idle_count = 0
        for transport in idle:
            await transport.aclose()


def http_client(max_connections: int = MAX_CONNECTIONS) -> httpx.AsyncClient:
    """httpx over httpcore, one-connection pools, as the orchestrator had it."""
    return httpx.AsyncClient(
        transport=ConnectionShards(max_connections),
        timeout=httpx.Timeout(10.0, connect=5.0),
        follow_redirects=False,
    )
