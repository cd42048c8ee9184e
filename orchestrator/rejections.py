"""Rejections at the edge, counted per route, reason and minute instead of stored one by one.

A request refused before anyone is authenticated (an unknown callback token or trigger, a
bad signature, a body over the limit, an unsigned hook's unreadable body) must not cost a
database row each, or a flood grows the database without bound and waits on its write
lock. Every rejection on the inbound routes is counted in memory under (minute, route,
reason) and in `rejections_total{route, reason}`; the counts go to the store in the
background, from one timer-heap entry armed when the first count after a flush arrives
and due just after that count's minute ends. The first rejection of each key keeps a
sample: its status, its detail and target name cut and escaped, the client's address.

A crash loses the counts not yet flushed (at most about a minute's); a busy store keeps
them pending and is tried again later. The pending counts are bounded (MAX_PENDING keys),
and so is what reaches the store: at most one row per route, reason and minute.

A rejection that names a known task without proving to be its sender (the callback token
resolved; the signature did not check out, or the body was too large to check) is also
written to the task's history, at most once per task and minute, in the background: the
answer never waits for the write lock.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import structlog

from orchestrator.http import HttpError
from orchestrator.metrics import Metrics
from orchestrator.records import HistoryEntry
from orchestrator.store import RejectionCount, Store, StoreUnavailable
from orchestrator.store.base import RejectionKey
from orchestrator.timers import Clock, TimerHeap

log = structlog.get_logger("orchestrator.rejections")

MINUTE = 60
NAME_SHOWN = 64  # characters of an attacker-chosen name kept in samples and answers
DETAIL_SHOWN = 200
FLUSH_AFTER = 1.0  # seconds after a minute ends, so its last counts join its flush
RETRY_FIRST, RETRY_MAX = 5.0, 60.0
MAX_PENDING = 10_000  # keys held while the store is busy; 26 keys a minute at the very most
MAX_ATTRIBUTED = 10_000  # tasks given a history row in one minute
FLUSH_KEY = ("rejections", "flush")

Record = Callable[[HistoryEntry], Awaitable[None]]


def shown(text: str, limit: int = NAME_SHOWN) -> str:
    """`text` as it may be stored, logged and echoed: backslashes and non-printable
    characters escaped (`\\x07`, `\\u200b`, `\\ud800`), cut to `limit` characters and then
    marked with its full length."""
    head = text[: limit + 1]  # never more work than what may be shown, however long `text` is
    escaped = "".join(
        ch if ch.isprintable() and ch != "\\" else ch.encode("unicode_escape").decode("ascii")
        for ch in head
    )
    if len(text) <= limit and len(escaped) <= limit:
        return escaped
    return f"{escaped[:limit]}… ({len(text)} characters)"


@dataclass(slots=True)
class _Tally:
    """A pending count: mutable, since a flood adds to it thousands of times a second."""

    first_at: float
    last_at: float
    sample: dict[str, Any]
    count: int = 1


class Rejections:
    """The counter of one process: counts in memory, flushed to the store on the timer heap."""

    def __init__(
        self,
        store: Store,
        timers: TimerHeap,
        clock: Clock,
        record: Record,
        metrics: Metrics | None = None,
    ) -> None:
        self._store = store
        self._timers = timers
        self._clock = clock
        self._record = record
        self._metrics = metrics
        self._pending: dict[RejectionKey, _Tally] = {}
        self._armed = False
        self._closed = False
        self._tries = 0
        self._attributed_minute = -1
        self._attributed: set[str] = set()
        self._recording: set[asyncio.Task[None]] = set()
        self.dropped = 0  # counts given up on (pending overflow, a store that never came back)

    # -- counting ----------------------------------------------------------------------------

    def count(
        self, route: str, error: HttpError, *, target: str | None = None, client: str | None = None
    ) -> None:
        """One rejection on `route` (its template), for the reason `error.error`."""
        now = self._clock()
        key = (int(now // MINUTE) * MINUTE, route, error.error)
        tally = self._pending.get(key)
        if tally is None:
            self._make_room()
            self._pending[key] = _Tally(now, now, _sample(error, target, client))
        else:
            tally.count += 1
            tally.last_at = max(tally.last_at, now)
        if self._metrics is not None:
            self._metrics.rejected(route, error.error)
        if not self._armed and not self._closed:
            self._arm(key[0] + MINUTE + FLUSH_AFTER)

    def _make_room(self) -> None:
        if len(self._pending) >= MAX_PENDING:
            oldest = min(self._pending)
            self.dropped += self._pending.pop(oldest).count

    def attribute(self, entry: HistoryEntry) -> None:
        """Write `entry` to its task's history in the background, unless that task already
        had one this minute."""
        minute = int(entry.at // MINUTE)
        if minute != self._attributed_minute:
            self._attributed_minute, self._attributed = minute, set()
        if entry.task_id is None or entry.task_id in self._attributed:
            return
        if len(self._attributed) >= MAX_ATTRIBUTED or self._closed:
            return
        self._attributed.add(entry.task_id)
        task = asyncio.ensure_future(self._record_quietly(entry))
        self._recording.add(task)
        task.add_done_callback(self._recording.discard)

    async def _record_quietly(self, entry: HistoryEntry) -> None:
        try:
            await self._record(entry)
        except StoreUnavailable as error:  # counted all the same; the row is a courtesy
            log.info("rejection_not_recorded", task_id=entry.task_id, reason=str(error))

    # -- flushing ----------------------------------------------------------------------------

    def _arm(self, due: float) -> None:
        self._armed = True
        self._timers.schedule(FLUSH_KEY, due, self._due)

    async def _due(self) -> None:
        self._armed = False
        await self.flush()

    def pending(self) -> list[RejectionCount]:
        """The counts not yet in the store, in key order."""
        return [_frozen(key, tally) for key, tally in sorted(self._pending.items())]

    async def flush(self) -> None:
        """Add the pending counts to the store; if it is busy, keep them and try again later."""
        batch, self._pending = self._pending, {}
        if not batch:
            return
        try:
            await self._store.add_rejections([_frozen(key, t) for key, t in batch.items()])
        except StoreUnavailable as error:
            self._put_back(batch)
            delay = min(RETRY_MAX, RETRY_FIRST * 2**self._tries)
            self._tries += 1
            log.warning("rejections_flush_deferred", keys=len(batch), retry_in=delay,
                        reason=str(error))  # fmt: skip
            if not self._closed:
                self._arm(self._clock() + delay)
            return
        except BaseException:  # cancelled (a shutdown's bound), or a bug: keep the counts
            self._put_back(batch)
            raise
        self._tries = 0

    def _put_back(self, batch: dict[RejectionKey, _Tally]) -> None:
        """Counts that could not be stored join what arrived meanwhile, keeping the first sample."""
        for key, tally in batch.items():
            later = self._pending.get(key)
            if later is not None:
                tally.count += later.count
                tally.last_at = max(tally.last_at, later.last_at)
            elif len(self._pending) >= MAX_PENDING:
                self.dropped += tally.count
                continue
            self._pending[key] = tally

    async def read(self, since: float, limit: int) -> list[RejectionCount]:
        """The counts of minutes starting at or after `since`, stored and pending together,
        oldest first, at most `limit`."""
        stored = {
            count.key: count for count in await self._store.rejections(since=since, limit=limit)
        }
        for count in self.pending():
            if count.minute >= since:
                before = stored.get(count.key)
                stored[count.key] = count if before is None else before.plus(count)
        return [stored[key] for key in sorted(stored)][:limit]

    async def close(self, within: float = 2.0) -> None:
        """Finish the history rows under way and flush what is pending, each within `within`
        seconds; what does not make it is logged as lost."""
        self._closed = True
        self._timers.cancel(FLUSH_KEY)
        if self._recording:
            _, late = await asyncio.wait(self._recording, timeout=within)
            for task in late:
                task.cancel()
            await asyncio.gather(*late, return_exceptions=True)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(within):
                await self.flush()
        lost = sum(tally.count for tally in self._pending.values()) + self.dropped
        if lost:
            log.warning("rejections_lost", count=lost)


def _sample(error: HttpError, target: str | None, client: str | None) -> dict[str, Any]:
    return {
        "status": error.status,
        "detail": shown(error.detail, DETAIL_SHOWN),
        "target": None if target is None else shown(target),
        "client": client,
    }


def _frozen(key: RejectionKey, tally: _Tally) -> RejectionCount:
    minute, route, reason = key
    return RejectionCount(
        minute, route, reason, tally.count, tally.first_at, tally.last_at, dict(tally.sample)
    )
