"""Handlers that wait for an inbound event's key; module state lets a test steer them."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from pydantic import BaseModel

from orchestrator.invoke import AwaitEvent, Context

# Called (and awaited) before the handler returns: a test fires the event here to make it
# arrive before the wait is registered.
before_return: Callable[[Context, str], Awaitable[None]] | None = None


class Payment(BaseModel):
    """What the handler declares the completing event must look like."""

    type: str
    data: dict[str, Any]


async def await_payment(ctx: Context, item: str) -> AwaitEvent[Payment]:
    """Waits for the stripe event whose key is the item (a payment intent id)."""
    if before_return is not None:
        await before_return(ctx, item)
    return ctx.await_event(trigger="stripe", key=item, timeout=ctx.event.get("timeout"))


async def await_untyped(ctx: Context, item: str) -> AwaitEvent[Any]:
    """Waits for the stripe event with this key, taking whatever payload it has."""
    return ctx.await_event(trigger="stripe", key=item)


async def await_bad_key(ctx: Context) -> AwaitEvent[Any]:
    """Asks to wait on a key that is too long: the attempt fails."""
    return ctx.await_event(trigger="stripe", key="k" * 257)
