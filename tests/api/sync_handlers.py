"""Plain-function handlers for the sync-handler tests; each reports through a threading.Event."""

from __future__ import annotations

import threading
from typing import Any

from orchestrator.invoke import Context

MAX_WAITS = 200  # 10 s of 50 ms waits: a handler that is never told still ends


class Seen:
    """What the looping handler saw, shared with the test thread-safely."""

    def __init__(self) -> None:
        self.returned = threading.Event()
        self.was_cancelled = False
        self.waits = 0


SEEN = Seen()


def loop_until_cancelled(ctx: Context) -> dict[str, Any]:
    """Works in 50 ms slices until its attempt is interrupted (or MAX_WAITS pass)."""
    try:
        while SEEN.waits < MAX_WAITS:
            SEEN.waits += 1
            if ctx.cancelled.wait(0.05):
                SEEN.was_cancelled = True
                break
        return {"waits": SEEN.waits}
    finally:
        SEEN.returned.set()


def quick(ctx: Context) -> dict[str, Any]:
    return {"ok": True}


async def quick_async(ctx: Context) -> dict[str, Any]:
    return {"ok": True}
