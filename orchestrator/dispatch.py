"""The dispatcher: admits ready tasks under their limits and starts each admitted batch at once.

Ready tasks pass admission (concurrency, exclusive, rate: limits.py). One dispatch
transaction at a time marks the admitted batch dispatched (one conditional write for the
batch), stores their callback tokens and builds their contexts; its outbox starts every
handler of the batch at once. Tasks admitted while a batch is being dispatched make up
the next one, so batches grow with the load. A pending task with a not-before time
(retry backoff) waits on the timer heap, never in a sleeping loop.

At most `max_running` handler coroutines run at once: a remote handler returns as soon as
it has handed off, so this bounds memory, not the work in flight at services.

On a store several replicas share, limits hold across all of them: the dispatch
transaction reads the limited lanes' loads under their locks and starts only what fits
(`limits.admit_shared`). What does not fit is parked, keeping its turn, until a slot may
have freed: a task of this replica leaves flight, another replica commits (its notice),
or a full rate window moves on (the timer heap).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Collection, Iterable, Mapping

import structlog

from orchestrator import task_moves
from orchestrator.advance import Advance, Report
from orchestrator.applier import Applier
from orchestrator.capabilities import Capabilities
from orchestrator.launcher import Contexts
from orchestrator.limits import Admission, admit_shared
from orchestrator.outbox import Launch, Ready
from orchestrator.records import HistoryEntry
from orchestrator.states import Outcome
from orchestrator.store import StoreUnavailable
from orchestrator.store.base import Lane
from orchestrator.timers import TimerHeap
from orchestrator.tracing import trace_data

log = structlog.get_logger("orchestrator.dispatch")

MAX_RUNNING_HANDLERS = 1024
BUSY_RETRY_SECONDS = 0.5
RATE_KEY = ("rate", "wake")
SHARED_WAKE_KEY = ("rate", "shared")


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
        shared: bool = False,
        resource_lanes: Mapping[str, Collection[Lane]] | None = None,
    ) -> None:
        self._applier = applier
        self._timers = timers
        self._capabilities = capabilities
        self._contexts = contexts
        self._running = running
        self._on_failed = on_failed
        self._max_running = max_running
        self._admission: Admission[Ready] = Admission()
        self._shared = shared
        self._resource_lanes = dict(resource_lanes or {})
        self._parked: list[Ready] = []  # admitted here, but full across replicas
        self._deferring: tuple[list[Ready], float | None] = ([], None)
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
        gone = set()
        for task_id in task_ids:
            self._timers.cancel(not_before_key(task_id))
            freed = self._admission.release(task_id) or freed
            gone.add(task_id)
        if self._parked:
            self._parked = [item for item in self._parked if item.task.id not in gone]
            self.unpark()
        if freed:
            self.pump_soon()

    def unpark(self) -> None:
        """A slot may have freed on some replica: parked tasks try again, in their turn."""
        if not self._parked:
            return
        parked, self._parked = self._parked, []
        for item in reversed(parked):
            self._admission.offer(item.lane, item.limits, item.task.id, item, first=True)
        self.pump_soon()

    async def _unpark_later(self) -> None:
        self.unpark()

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
            self._park(*self._deferring)
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

    def _park(self, deferred: list[Ready], wake_at: float | None) -> None:
        self._deferring = ([], None)
        if not deferred:
            return
        for item in deferred:
            self._admission.release(item.task.id)
        self._parked += deferred
        if wake_at is not None:
            self._timers.schedule(SHARED_WAKE_KEY, wake_at, self._unpark_later)

    async def _within_shared_limits(self, advance: Advance, batch: list[Ready]) -> list[Ready]:
        """The part of the batch every replica's load lets start; the rest is deferred."""
        limited = [item for item in batch if item.limits.bounded]
        if not limited:
            return batch
        resources: dict[str, set[Lane]] = {}
        for item in limited:
            if item.limits.resource is not None:
                named = resources.setdefault(item.limits.resource, set())
                named.update(self._resource_lanes.get(item.limits.resource, ()))
                named.add(item.lane)
        lanes = {item.lane for item in limited}.union(*resources.values())
        since = {
            item.lane: advance.now - item.limits.rate.per
            for item in limited
            if item.limits.rate is not None
        }
        loads = await advance.tx.lane_loads(lanes, since)
        decided = admit_shared(
            [(item.lane, item.limits, item) for item in limited], loads, resources, advance.now
        )
        self._deferring = (decided.deferred, decided.wake_at)
        waiting = {id(item) for item in decided.deferred}
        return [item for item in batch if id(item) not in waiting]

    async def _mark(self, advance: Advance, batch: list[Ready]) -> None:
        """Mark the batch dispatched, with its callback tokens, contexts and history."""
        now, outbox = advance.now, advance.outbox
        self._deferring = ([], None)
        if self._shared:
            batch = await self._within_shared_limits(advance, batch)
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
                {"attempt": item.task.attempt, "item": item.task.item_key,
                 **trace_data(ctx.trace)},
            )
            for item, ctx in zip(started, contexts, strict=True)
        )  # fmt: skip

    async def close(self) -> None:
        if self._soon is not None:
            self._soon.cancel()
            self._soon = None
        if self._current is not None:
            await asyncio.gather(self._current, return_exceptions=True)
