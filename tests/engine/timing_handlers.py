"""Handlers for the timing tests: they do (next to) nothing, so what a run's figures show
besides their run time is orchestration and waiting."""

from __future__ import annotations

from typing import Any

from orchestrator.invoke import Context


def nothing(ctx: Context, item: Any) -> Any:
    """A plain function: runs in a worker thread and returns at once."""
    return item


async def nothing_async(ctx: Context, item: Any) -> Any:
    return item


def fail_first(ctx: Context, item: Any) -> Any:
    """Fails its first attempt at once, succeeds on the next."""
    if ctx.attempt == 1:
        raise RuntimeError("transient")
    return item
