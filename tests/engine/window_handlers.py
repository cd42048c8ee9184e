"""Handlers for the deadline-window and running-cap tests; module state lets a test steer them."""

from __future__ import annotations

import asyncio
from typing import Any

from orchestrator.invoke import AwaitCallback, Context


class Gate:
    """Counts the handlers inside `gated` and holds them until `release` is set."""

    def __init__(self) -> None:
        self.inside = 0
        self.peak = 0
        self.release = asyncio.Event()
        self.changed = asyncio.Condition()

    async def inside_at_least(self, count: int, within: float = 2.0) -> None:
        async with asyncio.timeout(within), self.changed:
            await self.changed.wait_for(lambda: self.inside >= count)


GATE = Gate()


def reset() -> None:
    global GATE
    GATE = Gate()


async def await_for(ctx: Context, item: dict[str, Any]) -> AwaitCallback[Any]:
    """Hands its item off and waits for the callback for `item["timeout"]` seconds."""
    return ctx.await_callback(timeout=item["timeout"])


async def gated(ctx: Context, item: Any) -> Any:
    """Returns its item once GATE.release is set; GATE counts how many wait at once."""
    async with GATE.changed:
        GATE.inside += 1
        GATE.peak = max(GATE.peak, GATE.inside)
        GATE.changed.notify_all()
    await GATE.release.wait()
    GATE.inside -= 1
    return item
