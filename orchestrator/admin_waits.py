"""GET /admin/waits and /admin/kept-events: completion by key, as an operator sees it.

Waits are tasks that returned `ctx.await_event(...)` and still wait (their task
dispatched on the wait's attempt), by task id. Kept events are events no task waited on
when they arrived, kept for waits registered before they expire, by event id.
"""

from __future__ import annotations

import re
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from orchestrator.admin import _int_param
from orchestrator.http import HttpError
from orchestrator.http import TolerantJSONResponse as JSONResponse
from orchestrator.model import NAME_PATTERN
from orchestrator.rejections import shown
from orchestrator.store import KeptEvent, Wait

CURSOR_MAX = 600  # an event id, a colon and a key of at most 256 characters, with room


def wait_json(wait: Wait) -> dict[str, Any]:
    return {
        "trigger": wait.trigger,
        "key": wait.key,
        "task_id": wait.task_id,
        "attempt": wait.attempt,
        "run_id": wait.run_id,
        "step": wait.step,
        "registered_at": wait.registered_at,
        "deadline": wait.deadline,
    }


def kept_json(kept: KeptEvent) -> dict[str, Any]:
    return {
        "trigger": kept.trigger,
        "key": kept.key,
        "event_id": kept.event_id,
        "received_at": kept.received_at,
        "expires": kept.expires,
        "outcome": kept.outcome,
        "error": kept.error,
    }


def _filters(request: Request) -> tuple[str | None, str | None, int]:
    """(trigger, cursor, limit) from the query; 400 naming the parameter otherwise."""
    trigger = request.query_params.get("trigger")
    if trigger is not None and not _is_name(trigger):
        raise HttpError(400, "bad_parameter", f"trigger {shown(trigger)!r} is not a trigger name")
    cursor = request.query_params.get("cursor")
    if cursor is not None and not 0 < len(cursor) <= CURSOR_MAX:
        raise HttpError(400, "bad_parameter", "cursor must be next_cursor of the previous page")
    return trigger, cursor, _int_param(request, "limit", 100, 1, 1000)


def _is_name(text: str) -> bool:
    return len(text) <= 128 and re.fullmatch(NAME_PATTERN, text) is not None


async def list_waits(request: Request) -> Response:
    """Tasks waiting on a key, by task id; `?trigger=` keeps one trigger's."""
    trigger, cursor, limit = _filters(request)
    page = await request.app.state.engine.store.list_waits(
        trigger=trigger, cursor=cursor, limit=limit
    )
    return JSONResponse(
        {"waits": [wait_json(wait) for wait in page.items], "next_cursor": page.next_cursor}
    )


async def list_kept_events(request: Request) -> Response:
    """Events kept for early arrival that have not expired, by event id then key."""
    trigger, cursor, limit = _filters(request)
    engine = request.app.state.engine
    page = await engine.store.list_kept_events(
        now=engine.clock(), trigger=trigger, cursor=cursor, limit=limit
    )
    return JSONResponse(
        {"kept_events": [kept_json(kept) for kept in page.items], "next_cursor": page.next_cursor}
    )


routes = [
    Route("/waits", list_waits, methods=["GET"]),
    Route("/kept-events", list_kept_events, methods=["GET"]),
]
