"""Sending a hand-off: the lean request and the plain send, on any httpx client.

`ctx.dispatch` builds its request without the client's merging machinery where there is
nothing to merge, and sends it straight to the transport the client maps its URL to: that
machinery cost more than a third of a hand-off's own CPU (docs/decisions.md, section 10).
Only httpx here, so a process that sends nothing never imports the transport's aiohttp.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Mapping
from typing import Any

import httpx

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
