"""Small HTTP helpers shared by the routes: JSON errors, bounded bodies, bearer-token auth."""

from __future__ import annotations

import hmac
import json
import re
from collections.abc import Sequence
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send

DEFAULT_BODY_LIMIT = 1024 * 1024


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
    return JSONResponse({"error": error, "detail": detail}, status_code=status, headers=headers)


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


def parse_json_object(body: bytes, *, empty_ok: bool = False) -> dict[str, Any]:
    """The body as a JSON object: 400 if it is not JSON, 422 if it is JSON but not an object."""
    if not body.strip() and empty_ok:
        return {}
    try:
        value = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise HttpError(400, "malformed_json", f"the body is not valid JSON: {error}") from None
    if not isinstance(value, dict):
        raise HttpError(422, "not_an_object", f"expected a JSON object, got {type(value).__name__}")
    return value


def token_matches(presented: str, accepted: Sequence[str]) -> bool:
    """Constant-time comparison against every accepted token (rotation keeps several)."""
    found = False
    for token in accepted:
        found |= hmac.compare_digest(presented.encode(), token.encode())
    return found


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
