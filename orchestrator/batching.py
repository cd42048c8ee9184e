"""Work that arrives together is done together: one batch at a time, no timers, no waiting.

Items submitted while a batch is being processed make up the next one, so batches grow
with the load by themselves: one item when it is quiet, hundreds when callbacks flood in.
The first item of an idle batcher is processed on the next turn of the event loop, so
items submitted in the same moment (a fan-out's handlers returning) share a batch.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

import structlog

log = structlog.get_logger("orchestrator.batching")

W = TypeVar("W")

MAX_BATCH = 512


class Batcher(Generic[W]):
    def __init__(self, process: Callable[[list[W]], Awaitable[None]], max_batch: int = MAX_BATCH):
        self._process = process
        self._max = max_batch
        self._queue: list[W] = []
        self._busy = False
        self._scheduled: asyncio.Handle | None = None
        self._current: asyncio.Task[None] | None = None

    def __len__(self) -> int:
        return len(self._queue)

    def submit(self, item: W) -> None:
        """Queue `item` for the next batch."""
        self._queue.append(item)
        if not self._busy and self._scheduled is None:
            self._scheduled = asyncio.get_running_loop().call_soon(self._start)

    def _start(self) -> None:
        self._scheduled = None
        if self._busy or not self._queue:
            return
        batch, self._queue = self._queue[: self._max], self._queue[self._max :]
        self._busy = True
        self._current = asyncio.ensure_future(self._run(batch))

    async def _run(self, batch: list[W]) -> None:
        try:
            await self._process(batch)
        except Exception:  # the processor owns its error policy; this is a last resort
            log.exception("batch_failed", items=len(batch))
        finally:
            self._busy = False
            self._current = None
            if self._queue:
                self._start()

    async def close(self) -> None:
        """Wait for the batch in progress; what is still queued is dropped (it is in the
        store, or its sender gets no answer and retries)."""
        if self._scheduled is not None:
            self._scheduled.cancel()
            self._scheduled = None
        if self._current is not None:
            await asyncio.gather(self._current, return_exceptions=True)
        self._queue.clear()
