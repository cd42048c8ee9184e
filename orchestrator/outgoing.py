"""The one outgoing HTTP client: bounded connections, sane timeouts, redirects not followed.

Handlers and tests see an `httpx.AsyncClient` (`ctx.http`, respx in unit tests); under it
runs aiohttp's connection pool and C HTTP parser through the `httpx-aiohttp` transport.
Measured side by side (bench/outgoing.py, docs/decisions.md section 10), it spends about
two thirds of the CPU per request of httpx's own httpcore stack, which was the largest
single cost of a remote task; and it queues requests beyond the connection limit in
order, in aiohttp's connector, costing nothing while they wait.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Mapping
from typing import Any

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


PLAIN_KWARGS = frozenset({"json", "content", "headers"})


def plain_request(
    client: httpx.AsyncClient,
    method: str,
    url: str,
    headers: Mapping[str, str],
    kwargs: Mapping[str, Any],
) -> httpx.Request:
    """The request `client.build_request(method, url, headers=..., **kwargs)` would build,
    for the common hand-off (a JSON or bytes body, a few headers), without its merging of
    cookies, params and base URLs or its URL parsing (the parsed URL of each service is
    kept): that machinery cost more than a third of a hand-off's own CPU. Anything else is
    built by the client."""
    if not kwargs.keys() <= PLAIN_KWARGS or client.cookies or str(client.base_url):
        return client.build_request(method, url, headers=headers, **kwargs)
    raw = [(name, value) for name, value in client.headers.raw]
    raw += [(name.encode(), value.encode()) for name, value in headers.items()]
    content = kwargs.get("content")
    if "json" in kwargs:
        content = json.dumps(
            kwargs["json"], ensure_ascii=False, separators=(",", ":"), allow_nan=False
        ).encode()
        raw.append((b"content-type", b"application/json"))
    return httpx.Request(
        method, _url(url), headers=raw, content=content,
        extensions={"timeout": client.timeout.as_dict()},
    )  # fmt: skip


@functools.lru_cache(maxsize=256)
def _url(url: str) -> httpx.URL:
    return httpx.URL(url)


async def send_plain(client: httpx.AsyncClient, request: httpx.Request) -> httpx.Response:
    """`client.send(request)` for a request that needs none of the client's per-request
    machinery (auth, cookies, redirects, event hooks): straight to the transport the client
    would pick for its URL (a proxy mount included), the body read. A fan-out's hand-offs
    go this way: the machinery cost a fifth of a hand-off's CPU (bench/outgoing.py).
    """
    transport = client._transport_for_url(request.url)
    response = await transport.handle_async_request(request)
    response.request = request
    await response.aread()
    return response


def http_client(max_connections: int = MAX_CONNECTIONS) -> httpx.AsyncClient:
    """The shared client for every outgoing call the orchestrator and its handlers make."""
    limits = httpx.Limits(
        max_connections=max_connections, max_keepalive_connections=max_connections
    )
    return httpx.AsyncClient(
        transport=ServiceTransport(limits=limits), timeout=TIMEOUT, follow_redirects=False
    )
