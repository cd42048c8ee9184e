"""Committed history to the live subscribers of this process, in id order, from every replica.

On a store no other process shares, a transaction's entries go straight to the bus once it
commits. On a shared store, other replicas commit too, and the live stream (SSE, the
dashboard) must show their entries as well, in id order, with nothing skipped: a resuming
client trusts that ids only grow.

The store makes this simple: history ids become visible in the order they were drawn (a
transaction draws them while holding a lock it keeps until it commits), so once entry N is
committed every id below N is final. A replica's commit leaves a `history` notice (its
last id); the relay then knows everything up to that id is final, publishes its own
commits straight from memory when they come next, and reads the store for the rest. Many
notices at once cost one read. A lost notice (the listening connection dropped) is
followed by a RECONNECTED one, after which the relay reads up to the end of the history.

Nobody listening, nothing is read: the relay just moves its mark.
"""

from __future__ import annotations

import asyncio

import structlog

from orchestrator.bus import HistoryBus
from orchestrator.records import HistoryEntry
from orchestrator.store import Store
from orchestrator.timers import Clock, TimerHeap

log = structlog.get_logger("orchestrator.relay")

TOPIC = "history"
PAGE = 1000
RETRY_SECONDS = 1.0
RETRY_KEY = ("relay", "retry")
MAX_HELD = 10_000  # local commits held for ordering; past it, the store is read instead


class HistoryRelay:
    def __init__(self, store: Store, bus: HistoryBus, timers: TimerHeap, clock: Clock) -> None:
        self._store = store
        self._clock = clock
        self._bus = bus
        self._timers = timers
        self._published = 0  # every id up to this one has gone to the bus (or nobody listened)
        self._final = 0  # every id up to this one is committed or never will be
        self._to_end = False  # a notice may be lost: read up to the end of the history
        self._held: dict[int, list[HistoryEntry]] = {}  # a local commit's entries, by first id
        self._draining: asyncio.Task[None] | None = None

    def committed(self, entries: list[HistoryEntry]) -> None:
        """This process's transaction committed these entries (ids increasing)."""
        if not entries:
            return
        if not self._store.shared:
            self._bus.publish(entries)
            return
        first, last = _id(entries[0]), _id(entries[-1])
        self._final = max(self._final, last)
        if last <= self._published:
            return  # a read of the store already published them
        if not self._bus.listening:
            self._published = self._final
            return
        if first == self._published + 1 and self._draining is None:
            self._bus.publish(entries)
            self._published = last
            return
        if len(self._held) < MAX_HELD:
            self._held[first] = entries
        self._drain_soon()

    def noticed(self, payload: str) -> None:
        """Another replica committed history up to the id in `payload`."""
        try:
            last = int(payload)
        except ValueError:
            log.warning("history_notice_unreadable", payload=payload[:80])
            return
        if last <= self._final:
            return
        self._final = last
        if not self._bus.listening:
            self._published = last
            return
        self._drain_soon()

    def reconnected(self) -> None:
        """Notices may have been lost: read to the end of the history once."""
        if not self._bus.listening:
            self._published = self._final
            return
        self._to_end = True
        self._drain_soon()

    async def close(self) -> None:
        self._timers.cancel(RETRY_KEY)
        if self._draining is not None:
            self._draining.cancel()
            await asyncio.gather(self._draining, return_exceptions=True)

    # -- draining ---------------------------------------------------------------------------

    def _drain_soon(self) -> None:
        if self._draining is None:
            self._draining = asyncio.ensure_future(self._drain())

    async def _drain(self) -> None:
        try:
            while self._published < self._final or self._to_end:
                entries = self._held.pop(self._published + 1, None)
                if entries is None:
                    entries = await self._store.history(after=self._published, limit=PAGE)
                    if len(entries) < PAGE:
                        self._to_end = False
                    if not entries:  # pruned, or burned ids: nothing more to show
                        self._published = max(self._published, self._final)
                        break
                self._publish(entries)
        except Exception:  # the store is busy: what is final stays final; read it later
            log.warning("history_relay_deferred", exc_info=True)
            self._timers.schedule(RETRY_KEY, self._clock() + RETRY_SECONDS, self._retry)
        finally:
            self._draining = None

    def _publish(self, entries: list[HistoryEntry]) -> None:
        fresh = [entry for entry in entries if _id(entry) > self._published]
        if not fresh:
            return
        if self._bus.listening:
            self._bus.publish(fresh)
        self._published = _id(fresh[-1])
        self._final = max(self._final, self._published)
        for first in [first for first in self._held if first <= self._published]:
            del self._held[first]

    async def _retry(self) -> None:
        self._drain_soon()


def _id(entry: HistoryEntry) -> int:
    if entry.id is None:
        raise ValueError("a committed history entry has an id")
    return entry.id
