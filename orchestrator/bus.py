"""In-process fan-out of committed history entries to live subscribers (SSE, terminal progress).

Only committed entries are published, so a subscriber never sees what a rollback undid. A
subscriber that falls too far behind is dropped rather than slowing the engine; the SSE
client then reconnects with Last-Event-ID and reads what it missed from the store.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterable

from orchestrator.records import HistoryEntry

_OVERFLOW = None


class Subscription:
    """An async iterator over entries published after it was opened."""

    def __init__(self, bus: HistoryBus, maxsize: int) -> None:
        self._bus = bus
        # One slot more than `maxsize`, kept for the end-of-stream marker: on overflow the
        # subscriber still gets every entry it was sent, in order, and then the end, so a
        # resume from its last id misses nothing.
        self._maxsize = maxsize
        self._queue: asyncio.Queue[HistoryEntry | None] = asyncio.Queue(maxsize + 1)
        self.overflowed = False

    def _put(self, entry: HistoryEntry) -> bool:
        if self._queue.qsize() >= self._maxsize:
            self.overflowed = True
            self._queue.put_nowait(_OVERFLOW)
            return False
        self._queue.put_nowait(entry)
        return True

    def __aiter__(self) -> AsyncIterator[HistoryEntry]:
        return self

    async def __anext__(self) -> HistoryEntry:
        entry = await self._queue.get()
        if entry is _OVERFLOW:
            raise StopAsyncIteration
        return entry

    def close(self) -> None:
        self._bus._subscribers.discard(self)

    def __enter__(self) -> Subscription:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


class HistoryBus:
    def __init__(self) -> None:
        self._subscribers: set[Subscription] = set()

    @property
    def listening(self) -> bool:
        """Whether anyone subscribes (else publishing, and ordering, can be skipped)."""
        return bool(self._subscribers)

    def subscribe(self, maxsize: int = 10_000) -> Subscription:
        subscription = Subscription(self, maxsize)
        self._subscribers.add(subscription)
        return subscription

    def publish(self, entries: Iterable[HistoryEntry]) -> None:
        batch = list(entries)
        for subscription in list(self._subscribers):
            for entry in batch:
                if not subscription._put(entry):
                    subscription.close()
                    break
