"""The one outgoing HTTP client: bounded connections, sane timeouts, redirects not followed.

Handlers and tests see an `httpx.AsyncClient` (`ctx.http`, respx in unit tests); under it
runs aiohttp's connection pool and C HTTP parser through the `httpx-aiohttp` transport.
Measured side by side (bench/outgoing.py, docs/decisions.md section 10), it spends about
two thirds of the CPU per request of httpx's own httpcore stack, which was the largest
single cost of a remote task; and it queues requests beyond the connection limit in
order, in aiohttp's connector, costing nothing while they wait.
"""

from __future__ import annotations

import aiohttp
import httpx
from httpx_aiohttp import AiohttpTransport

MAX_CONNECTIONS = 32
TIMEOUT = httpx.Timeout(10.0, connect=5.0)


class ServiceTransport(AiohttpTransport):
    """httpx-aiohttp's transport, with every failure to reach a service raised as an
    httpx.TransportError, which callers (`ctx.dispatch`) treat as "try again later"."""

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        try:
            return await super().handle_async_request(request)
        except httpx.TransportError:
            raise
        except (TimeoutError, aiohttp.ClientError, OSError) as error:
            detail = str(error) or type(error).__name__
            raise httpx.NetworkError(detail, request=request) from error


def http_client(max_connections: int = MAX_CONNECTIONS) -> httpx.AsyncClient:
    """The shared client for every outgoing call the orchestrator and its handlers make."""
    limits = httpx.Limits(
        max_connections=max_connections, max_keepalive_connections=max_connections
    )
    return httpx.AsyncClient(
        transport=ServiceTransport(limits=limits), timeout=TIMEOUT, follow_redirects=False
    )
