"""The one timer heap: deadlines, retry backoff, rate-limit wake-ups and step deadlines.

Entries are keyed; scheduling a key again replaces its entry and cancelling is lazy (the
stale heap item is skipped when it surfaces). Only the earliest due time is armed, with
one `loop.call_at`; adding an earlier entry re-arms it. Nothing sleeps and checks.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import time
from collections.abc import Awaitable, Callable, Hashable
from dataclasses import dataclass, field
from typing import Protocol

import structlog

log = structlog.get_logger("orchestrator.timers")

TimerCallback = Callable[[], Awaitable[None]]
COMPACT_AFTER = 1024


class Clock(Protocol):
    def __call__(self) -> float:
        """Seconds since the epoch, UTC."""


class TimerObserver(Protocol):
    """Told of each entry scheduled and each wake-up (`orchestrator.metrics.Metrics` is one)."""

    def timer_armed(self) -> None: ...

    def timer_woke(self) -> None: ...


class _Unobserved:
    def timer_armed(self) -> None:
        pass

    def timer_woke(self) -> None:
        pass


@dataclass(order=True, slots=True)
class _Entry:
    due: float
    seq: int
    key: Hashable = field(compare=False)
    callback: TimerCallback = field(compare=False)
    live: bool = field(default=True, compare=False)


class TimerHeap:
    """Due-time callbacks on one heap; callbacks run as tasks that the heap keeps track of."""

    def __init__(self, clock: Clock = time.time) -> None:
        self._clock = clock
        self._heap: list[_Entry] = []
        self._entries: dict[Hashable, _Entry] = {}
        self._seq = itertools.count()
        self._armed: asyncio.TimerHandle | None = None
        self._armed_due: float | None = None
        self._running: set[asyncio.Task[None]] = set()
        self._closed = False
        self._stale = 0
        self._observer: TimerObserver = _Unobserved()

    def observe(self, observer: TimerObserver) -> None:
        """Report every entry scheduled and every wake-up to `observer` from now on."""
        self._observer = observer

    def __len__(self) -> int:
        return len(self._entries)

    def due_of(self, key: Hashable) -> float | None:
        entry = self._entries.get(key)
        return None if entry is None else entry.due

    def schedule(self, key: Hashable, due: float, callback: TimerCallback) -> None:
        """Run `callback` at `due` (epoch seconds), replacing any entry under `key`."""
        self._observer.timer_armed()
        self._schedule_only(key, due, callback)
        if self._armed_due is None or due < self._armed_due:
            self._arm()

    def _schedule_only(self, key: Hashable, due: float, callback: TimerCallback) -> None:
        """Put the entry on the heap without arming the loop (pure bookkeeping)."""
        self.cancel(key)
        entry = _Entry(due, next(self._seq), key, callback)
        self._entries[key] = entry
        heapq.heappush(self._heap, entry)

    def cancel(self, key: Hashable) -> None:
        entry = self._entries.pop(key, None)
        if entry is not None:
            entry.live = False
            self._stale += 1
            if self._stale > COMPACT_AFTER and self._stale > len(self._entries):
                self._compact()

    def _compact(self) -> None:
        """Drop cancelled entries once they outnumber live ones (heartbeats reschedule often)."""
        self._heap = [entry for entry in self._heap if entry.live]
        heapq.heapify(self._heap)
        self._stale = 0

    def pop_due(self, now: float) -> list[tuple[Hashable, TimerCallback]]:
        """Remove and return the live entries due at `now`, earliest first."""
        due = []
        while self._heap and self._heap[0].due <= now:
            entry = heapq.heappop(self._heap)
            if entry.live:
                del self._entries[entry.key]
                due.append((entry.key, entry.callback))
            else:
                self._stale -= 1
        return due

    def _arm(self) -> None:
        if self._armed is not None:
            self._armed.cancel()
            self._armed = self._armed_due = None
        while self._heap and not self._heap[0].live:
            heapq.heappop(self._heap)
            self._stale -= 1
        if self._closed or not self._heap:
            return
        loop = asyncio.get_running_loop()
        due = self._heap[0].due
        self._armed_due = due
        self._armed = loop.call_at(loop.time() + max(0.0, due - self._clock()), self._fire)

    def _fire(self) -> None:
        self._observer.timer_woke()
        self._armed = self._armed_due = None
        for key, callback in self.pop_due(self._clock()):
            task = asyncio.get_running_loop().create_task(self._run(key, callback))
            self._running.add(task)
            task.add_done_callback(self._running.discard)
        self._arm()

    async def _run(self, key: Hashable, callback: TimerCallback) -> None:
        try:
            await callback()
        except Exception:
            log.exception("timer_callback_failed", key=str(key))

    async def close(self) -> None:
        """Disarm, and wait for callbacks already running."""
        self._closed = True
        if self._armed is not None:
            self._armed.cancel()
        if self._running:
            await asyncio.gather(*self._running, return_exceptions=True)
