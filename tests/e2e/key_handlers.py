"""Handlers the orchestrator subprocess runs in the end-to-end tests of completion schemes
and completion by key. They talk to the test's fake provider over real HTTP."""

from __future__ import annotations

from typing import Any

import httpx

from orchestrator.invoke import AwaitCallback, AwaitEvent, Context


async def hand_to_provider(ctx: Context) -> AwaitCallback[Any]:
    """Registers this attempt's callback URL (and secret) with the provider, then waits."""
    job = {"step": ctx.step, "callback_url": ctx.callback_url, "secret": ctx.callback_secret}
    await ctx.dispatch(ctx.event["provider"] + "/jobs", json=job)
    return ctx.await_callback(timeout="60s")


async def await_payment(ctx: Context, intent: str) -> AwaitEvent[dict[str, Any]]:
    """Starts a payment at the provider; the provider's webhook says how it went. For an
    intent named `early_...` the provider sends that webhook before it even answers."""
    async with httpx.AsyncClient(timeout=30.0) as client:
        answer = await client.post(ctx.event["provider"] + "/pay", json={"intent": intent})
        answer.raise_for_status()
    return ctx.await_event(trigger="stripe", key=intent, timeout="60s")
