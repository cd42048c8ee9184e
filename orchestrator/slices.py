"""Work on thousands of rows in slices, giving the event loop a turn between them.

A cancel of 10,000 tasks or a 10,000-task fan-out builds as many records, history entries
and statement parameters in Python; done in one go that holds the loop for hundreds of
milliseconds, and callbacks and timers wait. Sliced, each piece takes a few milliseconds
and the loop serves whatever arrived in between (the transaction keeps its lock: other
writers queue, readers and timers do not).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable, Sequence
from typing import TypeVar

T = TypeVar("T")
R = TypeVar("R")

SLICE = 500


async def sliced_map(function: Callable[[T], R], items: Sequence[T], size: int = SLICE) -> list[R]:
    """`[function(item) for item in items]`, yielding to the loop between slices."""
    if len(items) <= size:
        return [function(item) for item in items]
    out: list[R] = []
    for start in range(0, len(items), size):
        if start:
            await asyncio.sleep(0)
        out.extend(function(item) for item in items[start : start + size])
    return out


async def sliced_each(
    function: Callable[[T], object], items: Iterable[T], size: int = SLICE
) -> None:
    """`function(item)` for every item, yielding to the loop between slices."""
    for count, item in enumerate(items, 1):
        function(item)
        if count % size == 0:
            await asyncio.sleep(0)
