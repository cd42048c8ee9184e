"""GET /admin/rejections: what the inbound routes refused, counted per minute, route and reason.

The counts are the store's and those not flushed yet, together (orchestrator/rejections.py),
so the answer is current. `totals` sums them per route and reason over the window.
"""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from orchestrator.admin import _int_param, _time_param
from orchestrator.http import TolerantJSONResponse as JSONResponse
from orchestrator.rejections import MINUTE, Rejections
from orchestrator.store import RejectionCount

DEFAULT_WINDOW = 3600.0


def count_json(count: RejectionCount) -> dict[str, object]:
    return {
        "minute": count.minute,
        "minute_utc": datetime.fromtimestamp(count.minute, UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "route": count.route,
        "reason": count.reason,
        "count": count.count,
        "first_at": count.first_at,
        "last_at": count.last_at,
        "sample": count.sample,
    }


async def list_rejections(request: Request) -> Response:
    """Counts of the minutes from `since` (default: the last hour), oldest first."""
    since = _time_param(request, "since")
    if since is None:
        since = request.app.state.engine.clock() - DEFAULT_WINDOW
    start = int(since // MINUTE) * MINUTE  # the minute holding `since` counts whole
    limit = _int_param(request, "limit", 1000, 1, 10_000)
    rejections: Rejections = request.app.state.rejections
    counts = await rejections.read(start, limit + 1)
    shown = counts[:limit]
    totals: Counter[tuple[str, str]] = Counter()
    for count in shown:
        totals[(count.route, count.reason)] += count.count
    return JSONResponse(
        {
            "since": start,
            "counts": [count_json(count) for count in shown],
            "totals": [
                {"route": route, "reason": reason, "count": total}
                for (route, reason), total in sorted(totals.items())
            ],
            "truncated": len(counts) > limit,
        }
    )


routes = [Route("/rejections", list_rejections, methods=["GET"])]
