"""The dispatcher: admits ready tasks under their limits and starts each admitted batch at once.

Ready tasks pass admission (concurrency, exclusive, rate: limits.py). One dispatch
transaction at a time marks the admitted batch dispatched (one conditional write for the
batch), stores their callback tokens and builds their contexts; its outbox starts every
handler of the batch at once. Tasks admitted while a batch is being dispatched make up
the next one, so batches grow with the load. A pending task with a not-before time
(retry backoff) waits on the timer heap, never in a sleeping loop.

At most `max_running` handler coroutines run at once: a remote handler returns as soon as
it has handed off, so this bounds memory, not the work in flight at services.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterable

import structlog

from orchestrator import task_moves
from orchestrator.advance import Advance, Report
from orchestrator.applier import Applier
from orchestrator.capabilities import Capabilities
from orchestrator.launcher import Contexts
from orchestrator.limits import Admission
from orchestrator.outbox import Launch, Ready
from orchestrator.records import HistoryEntry
from orchestrator.states import Outcome
from orchestrator.store import StoreUnavailable
from orchestrator.timers import TimerHeap

log = structlog.get_logger("orchestrator.dispatch")

MAX_RUNNING_HANDLERS = 1024
BUSY_RETRY_SECONDS = 0.5
RATE_KEY = ("rate", "wake")


def not_before_key(task_id: str) -> tuple[str, str]:
    """The timer-heap key of a pending task waiting for its not-before time."""
    return ("not-before", task_id)


class Dispatcher:
    def __init__(
        self,
        *,
        applier: Applier,
        timers: TimerHeap,
        capabilities: Capabilities,
        contexts: Contexts,
        running: Callable[[], int],
        on_failed: Callable[[Report], None],
        max_running: int = MAX_RUNNING_HANDLERS,
    ) -> None:
        self._applier = applier
        self._timers = timers
        self._capabilities = capabilities
        self._contexts = contexts
        self._running = running
        self._on_failed = on_failed
        self._max_running = max_running
        self._admission: Admission[Ready] = Admission()
        self._dispatching = 0
        self._soon: asyncio.Handle | None = None
        self._current: asyncio.Task[None] | None = None

    @property
    def waiting(self) -> int:
        """Ready tasks waiting for admission (limits, or a free handler slot)."""
        return self._admission.waiting()

    def offer(self, ready: Iterable[Ready]) -> None:
        """Start these pending tasks as soon as their not-before time and limits allow."""
        now = self._applier.clock()
        offered = False
        for item in ready:
            due = item.task.due_at
            if due is not None and due > now:
                self._timers.schedule(not_before_key(item.task.id), due, self._offer_later(item))
            else:
                self._admission.offer(item.lane, item.limits, item.task.id, item)
                offered = True
        if offered:
            self.pump_soon()

    def _offer_later(self, item: Ready) -> Callable[[], Awaitable[None]]:
        async def offer() -> None:
            self._admission.offer(item.lane, item.limits, item.task.id, item)
            self.pump_soon()

        return offer

    def release(self, task_ids: Iterable[str]) -> None:
        """These tasks are no longer in flight: free their slots, drop their wake-ups."""
        freed = False
        for task_id in task_ids:
            self._timers.cancel(not_before_key(task_id))
            freed = self._admission.release(task_id) or freed
        if freed:
            self.pump_soon()

    def hold(self, item: Ready) -> None:
        """Count a task already in flight (awaiting its callback) against its limits: at
        start-up, it keeps its slot until its callback or deadline releases it."""
        self._admission.offer(item.lane, item.limits, item.task.id, item)
        self._admission.take_one(item.lane, item.task.id, self._applier.clock())

    def pump_soon(self) -> None:
        """Admit and dispatch once after this turn of the loop: what becomes ready together
        starts as one batch."""
        if self._soon is None:
            self._soon = asyncio.get_running_loop().call_soon(self._pump)

    def _pump(self) -> None:
        self._soon = None
        if self._dispatching:
            return  # the batch in flight pumps again when it is done
        room = self._max_running - self._running()
        if room <= 0:
            return  # a handler that ends pumps again
        now = self._applier.clock()
        admitted, wake_at = self._admission.take(now, room)
        if wake_at is not None:
            self._timers.schedule(RATE_KEY, wake_at, self._wake)
        if admitted:
            self._dispatching = len(admitted)
            self._current = asyncio.ensure_future(self._dispatch(admitted, now))

    async def _wake(self) -> None:
        self.pump_soon()

    async def _dispatch(self, batch: list[Ready], admitted_at: float) -> None:
        """Dispatch an admitted batch, stamped with the time admission let it start (what
        rate limits count)."""
        try:
            await self._capabilities.load()  # once; outside the transaction that needs it
            await self._applier.transact(lambda advance: self._mark(advance, batch), admitted_at)
        except StoreUnavailable as error:
            log.warning("dispatch_deferred", reason=str(error), tasks=len(batch))
            self._again_later(batch)
        except Exception as error:  # a bug in dispatching these: fail them, with the error
            log.exception("dispatch_failed", tasks=len(batch))
            self.release(item.task.id for item in batch)
            for item in batch:
                task = item.task
                message = f"could not be dispatched: {type(error).__name__}: {error}"
                self._on_failed(
                    Report(task, task.attempt, Outcome.FAILED, error=message, source="dispatch")
                )
        finally:
            self._dispatching = 0
            self._current = None
            self.pump_soon()

    def _again_later(self, batch: list[Ready]) -> None:
        """The store was busy: free the slots and offer the batch again a little later."""
        self.release(item.task.id for item in batch)
        retry_at = self._applier.clock() + BUSY_RETRY_SECONDS
        for item in batch:
            self._timers.schedule(not_before_key(item.task.id), retry_at, self._offer_later(item))

    async def _mark(self, advance: Advance, batch: list[Ready]) -> None:
        """Mark the batch dispatched, with its callback tokens, contexts and history."""
        now, outbox = advance.now, advance.outbox
        writes = [
            task_moves.dispatch(item.task, now, item.spec.timeout, advance.replica)
            for item in batch
        ]
        applied = await advance.tx.write_tasks(writes)
        started = []
        for item, write in zip(batch, writes, strict=True):
            if write.task.id in applied:
                started.append(Ready(write.task, item.workflow, item.spec))
            else:  # it changed meanwhile (cancelled, completed): nothing to start
                outbox.release(item.task, interrupt=False)
        # The tokens are committed before any handler can hand its URL out, so a service
        # that calls back at once never meets a 404.
        await advance.tx.insert_callback_tokens(
            self._capabilities.stored_tokens([item.task for item in started])
        )
        contexts = await self._contexts.build(advance.tx, started)
        outbox.launch.extend(Launch(item, ctx) for item, ctx in zip(started, contexts, strict=True))
        outbox.task_deadlines.extend(item.task for item in started)
        outbox.history.extend(
            HistoryEntry(
                "task_dispatched", now, item.task.run_id, item.task.id, item.task.step,
                {"attempt": item.task.attempt, "item": item.task.item_key},
            )
            for item in started
        )  # fmt: skip

    async def close(self) -> None:
        if self._soon is not None:
            self._soon.cancel()
            self._soon = None
        if self._current is not None:
            await asyncio.gather(self._current, return_exceptions=True)
