"""The benchmark workflow's handler: hand each item to the fake service, await its callback."""

from __future__ import annotations

from typing import Any

from orchestrator.invoke import AwaitCallback, Context


async def remote(ctx: Context, item: Any = None) -> AwaitCallback[Any]:
    await ctx.dispatch(
        ctx.event["service"],
        json={
            "item": item,
            "callback_url": ctx.callback_url,
            "callback_secret": ctx.callback_secret,
        },
    )
    return ctx.await_callback(timeout="10m")


async def park(ctx: Context, item: Any) -> AwaitCallback[Any]:
    """Wait for a callback that the benchmark sends itself (or never sends): no service call."""
    return ctx.await_callback(timeout="1h")
