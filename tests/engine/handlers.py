"""Handlers for engine tests; module state lets a test steer and observe them."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

from pydantic import BaseModel

from orchestrator.invoke import AwaitCallback, Context, DispatchError


class State:
    """What the handlers of one test share; reset before each test."""

    def __init__(self) -> None:
        self.started = 0
        self.all_started = asyncio.Event()
        self.expected = 0
        self.pairs: asyncio.Barrier | None = None
        self.threads: list[str] = []
        self.hang_forever = True
        self.gate = asyncio.Event()
        self.handed_off: dict[str, Context] = {}
        self.before_return: Any = None
        self.dispatch_failures = 0
        self.fixed = False
        self.await_timeouts: dict[int, str] = {}  # attempt -> timeout asked of await_callback
        self.retry_after = 0.01
        self.doubtful: dict[str, Context] = {}


STATE = State()


def reset() -> None:
    global STATE
    STATE = State()


async def echo(ctx: Context, item: Any) -> Any:
    return item


def single(ctx: Context) -> dict[str, Any]:
    return {"numbers": [1, 2, 3], "event": dict(ctx.event)}


def join(ctx: Context) -> dict[str, Any]:
    """Reports what the join saw of every upstream step."""
    return {
        name: {"outputs": up.outputs, "failed": up.failed, "missing": up.missing}
        for name, up in ctx.upstream.items()
    }


async def gathered(ctx: Context, item: Any) -> Any:
    """Finishes only once every expected task of the step has started."""
    STATE.started += 1
    if STATE.started >= STATE.expected:
        STATE.all_started.set()
    await STATE.all_started.wait()
    return item


async def in_pairs(ctx: Context, item: Any) -> Any:
    """Finishes only when another task of the step is in flight at the same time."""
    assert STATE.pairs is not None
    await STATE.pairs.wait()
    return item


async def fail_first_attempt(ctx: Context, item: Any) -> Any:
    if ctx.attempt == 1:
        raise RuntimeError("transient failure")
    return {"item": item, "attempt": ctx.attempt}


async def fail_odd(ctx: Context, item: int) -> int:
    if item % 2:
        raise ValueError(f"odd item {item}")
    return item


async def always_fail(ctx: Context, item: Any) -> Any:
    raise RuntimeError("always fails")


async def hang(ctx: Context, item: Any) -> Any:
    """Never returns while STATE.hang_forever; otherwise returns the item."""
    if STATE.hang_forever:
        await asyncio.Future()
    return item


async def quick_or_hang(ctx: Context, item: int) -> int:
    """Item 0 returns at once; the others hang."""
    if item != 0:
        await asyncio.Future()
    return item


def in_thread(ctx: Context) -> str:
    name = threading.current_thread().name
    STATE.threads.append(name)
    return name


class Shaped(BaseModel):
    name: str
    count: int


def bad_output(ctx: Context) -> Shaped:
    return {"name": "x", "count": "not a number"}  # type: ignore[return-value]


def good_output(ctx: Context) -> Shaped:
    return Shaped(name="x", count=2)


def not_json(ctx: Context) -> object:
    return object()


async def hand_off(ctx: Context, item: Any) -> AwaitCallback[Shaped]:
    """Hands its item to an imaginary service; the test plays the service's callbacks."""
    STATE.handed_off[ctx.item_key] = ctx
    if STATE.before_return is not None:
        await STATE.before_return(ctx)
    return ctx.await_callback(timeout=STATE.await_timeouts.get(ctx.attempt))


async def hand_off_after_failures(ctx: Context, item: Any) -> AwaitCallback[Any]:
    """The first STATE.dispatch_failures hand-offs do not get through."""
    if STATE.dispatch_failures > 0:
        STATE.dispatch_failures -= 1
        STATE.doubtful[ctx.item_key] = ctx  # the service may have got it after all
        raise DispatchError("read timeout", retry_after=STATE.retry_after)
    STATE.handed_off[ctx.item_key] = ctx
    return ctx.await_callback()


class Push(BaseModel):
    """The payload model of the test push webhook."""

    ref: str
    commits: int


async def odd_fails_until_fixed(ctx: Context, item: int) -> int:
    """Odd items fail until the test sets STATE.fixed (an operator fixed the cause)."""
    if item % 2 and not STATE.fixed:
        raise RuntimeError(f"item {item} broken")
    return item
