"""Handlers that the orchestrator subprocess runs in end-to-end tests.

They talk to the test's gate service over real HTTP: the gate holds each request until
it opens, which lets a test prove that tasks really run at the same time.
"""

from __future__ import annotations

from typing import Any

import httpx

from orchestrator.invoke import AwaitCallback, Context


async def _arrive(gate: str, name: str) -> None:
    async with httpx.AsyncClient(timeout=60.0) as client:
        response = await client.post(f"{gate}/arrive/{name}")
        response.raise_for_status()


async def gated(ctx: Context, item: Any) -> Any:
    """Returns once the gate named in the event opens."""
    await _arrive(ctx.event["gate"], ctx.event.get("gate_name", "main"))
    return {"item": item}


async def fast_or_gated(ctx: Context, item: int) -> Any:
    """Items below event.fast return at once; the rest wait for the gate."""
    if item >= ctx.event["fast"]:
        await _arrive(ctx.event["gate"], "slow")
    return {"item": item}


async def never(ctx: Context, item: Any) -> Any:
    """Waits on a gate that the test never opens."""
    await _arrive(ctx.event["gate"], "never")
    return item


def join(ctx: Context) -> dict[str, Any]:
    return {name: len(up.outputs) for name, up in ctx.upstream.items()}


def five(ctx: Context) -> dict[str, Any]:
    return {"items": list(range(5))}


async def echo(ctx: Context, item: Any) -> Any:
    return item


async def research(ctx: Context, item: int) -> AwaitCallback[dict[str, Any]]:
    """Hands item to the research service named in the event; its signed callback completes it."""
    lead = {
        "id": f"lead-{item}",
        "name": f"Lead {item}",
        "company": "Acme",
        "email": "a@acme.example",
    }
    await ctx.dispatch(
        ctx.event["service"],
        json={
            "lead": lead,
            "callback_url": ctx.callback_url,
            "callback_secret": ctx.callback_secret,
        },
    )
    return ctx.await_callback(timeout="120s")


async def use_crm(ctx: Context, item: Any) -> Any:
    """Uses the CRM tracker named in the event (which counts how many use it at once)."""
    async with httpx.AsyncClient(timeout=30.0) as client:
        response = await client.post(f"{ctx.event['tracker']}/use", json={"item": item})
        response.raise_for_status()
    return {"item": item}
