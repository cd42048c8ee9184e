"""Small HTTP helpers shared by the routes: JSON errors, bounded bodies, bearer-token auth."""

from __future__ import annotations

import hmac
import json
import math
import re
from collections.abc import Sequence
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send

from orchestrator.jsonread import JsonRejected, read_json

DEFAULT_BODY_LIMIT = 1024 * 1024
NESTING_SHOWN = 256  # stored values nested deeper than this are shown as a placeholder


class HttpError(Exception):
    """An answer with a status and a JSON body naming the problem."""

    def __init__(self, status: int, error: str, detail: str, headers: dict[str, str] | None = None):
        super().__init__(detail)
        self.status = status
        self.error = error
        self.detail = detail
        self.headers = headers

    def response(self) -> JSONResponse:
        return error_response(self.status, self.error, self.detail, self.headers)


def error_response(
    status: int, error: str, detail: str, headers: dict[str, str] | None = None
) -> JSONResponse:
    return TolerantJSONResponse(
        {"error": error, "detail": detail}, status_code=status, headers=headers
    )


class TolerantJSONResponse(JSONResponse):
    """A JSON answer that renders whatever the store holds, even what older versions let in.

    Older versions stored NaN, Infinity and lone surrogates, which strict JSON (and
    Starlette's JSONResponse) refuses. Those render as the strings "NaN", "Infinity" and
    "-Infinity", lone surrogates as U+FFFD, and containers nested over NESTING_SHOWN levels
    as a placeholder string: the answer is always strict JSON, and the rest of it exact.
    """

    def render(self, content: Any) -> bytes:
        try:
            return _dumps(content, ensure_ascii=False).encode("utf-8")
        except (ValueError, RecursionError):  # UnicodeEncodeError is a ValueError
            return _dumps(presentable(content), ensure_ascii=False).encode("utf-8")


def dumps_tolerant(content: Any) -> str:
    """Strict, ASCII-only JSON text for `content`, as TolerantJSONResponse renders it."""
    try:
        return _dumps(content, ensure_ascii=True)
    except (ValueError, RecursionError):
        return _dumps(presentable(content), ensure_ascii=True)


def _dumps(content: Any, ensure_ascii: bool) -> str:
    return json.dumps(content, ensure_ascii=ensure_ascii, allow_nan=False, separators=(",", ":"))


_SURROGATE = re.compile("[\ud800-\udfff]")
_NON_FINITE = {math.inf: "Infinity", -math.inf: "-Infinity"}


def presentable(value: Any, depth: int = 0) -> Any:
    """`value` with what strict JSON cannot hold replaced (see TolerantJSONResponse)."""
    if isinstance(value, float) and not math.isfinite(value):
        return _NON_FINITE.get(value, "NaN")
    if isinstance(value, str):
        return _SURROGATE.sub("\ufffd", value)
    if isinstance(value, dict | list | tuple) and depth >= NESTING_SHOWN:
        return f"(nested more than {NESTING_SHOWN} levels deep; not shown)"
    if isinstance(value, dict):
        return {presentable(key): presentable(item, depth + 1) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [presentable(item, depth + 1) for item in value]
    return value


async def read_body(request: Request, limit: int = DEFAULT_BODY_LIMIT) -> bytes:
    """The raw body, refusing (413) as soon as it passes `limit` bytes, before buffering it all."""
    declared = request.headers.get("content-length")
    if declared is not None and re.fullmatch(r"[0-9]{1,18}", declared) and int(declared) > limit:
        raise HttpError(413, "body_too_large", f"the body is over the limit of {limit} bytes")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise HttpError(413, "body_too_large", f"the body is over the limit of {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def route_template(request: Request) -> str:
    """The matched route as declared (`/hooks/{trigger}`), never the path the client sent."""
    route = request.scope.get("route")
    template = getattr(route, "path", None)
    if not isinstance(template, str):
        return "unmatched"
    return str(request.scope.get("root_path", "")) + template


def parse_json_object(body: bytes, *, empty_ok: bool = False) -> dict[str, Any]:
    """The body as a JSON object, read strictly (orchestrator.jsonread): 400 naming what is
    wrong if it is not strict JSON within the limits, 422 if it is JSON but not an object."""
    if not body.strip() and empty_ok:
        return {}
    try:
        value = read_json(body)
    except JsonRejected as error:
        raise HttpError(400, error.error, error.detail) from None
    if not isinstance(value, dict):
        raise HttpError(422, "not_an_object", f"expected a JSON object, got {type(value).__name__}")
    return value


IDEMPOTENCY_KEY_LIMIT = 255


def idempotency_key(request: Request) -> str | None:
    """The Idempotency-Key header, if sent: it becomes the event's dedup key, stored, so it
    is bounded (1 to 255 printable ASCII characters) like every other stored name."""
    key = request.headers.get("idempotency-key")
    if key is None:
        return None
    if not 0 < len(key) <= IDEMPOTENCY_KEY_LIMIT or not (key.isascii() and key.isprintable()):
        raise HttpError(
            400,
            "bad_idempotency_key",
            f"Idempotency-Key must be 1 to {IDEMPOTENCY_KEY_LIMIT} printable ASCII characters",
        )
    return key


def token_matches(presented: str, accepted: Sequence[str]) -> bool:
    """Constant-time comparison against every accepted token (rotation keeps several)."""
    found = False
    for token in accepted:
        found |= hmac.compare_digest(presented.encode(), token.encode())
    return found


class HeaderLimit:
    """ASGI middleware: a request whose header fields add up to more than `limit` bytes is
    answered 431 before any route reads them (uvicorn's httptools parser sets no bound)."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            size = sum(len(name) + len(value) for name, value in scope["headers"])
            if size > self.limit:
                detail = f"the header fields add up to {size} bytes, over the limit of {self.limit}"
                response = error_response(431, "headers_too_large", detail, {"Connection": "close"})
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)


class BearerAuth:
    """ASGI middleware: every request needs `Authorization: Bearer <token>`, else 401 JSON."""

    def __init__(self, app: ASGIApp, tokens: Sequence[str]) -> None:
        self.app = app
        self.tokens = list(tokens)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        header = Request(scope).headers.get("authorization", "")
        scheme, _, presented = header.partition(" ")
        if (
            scheme.lower() != "bearer"
            or not self.tokens
            or not token_matches(presented.strip(), self.tokens)
        ):
            detail = (
                "send Authorization: Bearer <token> with a token from ORCHESTRATOR_ADMIN_TOKEN"
                if self.tokens
                else "no admin token is configured: set ORCHESTRATOR_ADMIN_TOKEN"
            )
            response = error_response(
                401, "unauthorized", detail, {"WWW-Authenticate": 'Bearer realm="admin"'}
            )
            await response(scope, receive, send)
            return
        await self.app(scope, receive, send)
