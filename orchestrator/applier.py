"""One transaction, then its outbox acted on: the only way the engine changes anything.

`Applier.transact(work)` runs `work` on an `Advance` inside one store transaction, appends
the history it noted, commits, and only then acts on the outbox, in one fixed order:
publish history (through the relay: in id order, across replicas), settle step deadlines,
stop interrupted handlers, drop the deadlines and free the slots of tasks no longer in
flight, arm task deadlines, start the handlers dispatched, offer ready tasks to the
dispatcher. A transaction that raises leaves nothing to undo.

On a store shared with other replicas, a transaction also leaves notices for them: the
last history id it committed (their relays publish it live) and the tasks it released
that another replica owns (that replica frees their slots and stops their handlers). Two
replicas' transactions that collide (a deadlock, a unique key both tried) are tried again
from the start, a few times, before the collision reaches the caller.
"""

from __future__ import annotations

import asyncio
import json
import random
import time
from collections.abc import Awaitable, Callable, Iterable
from typing import Any, Protocol, TypeVar

import structlog

from orchestrator.advance import LOCAL, Advance
from orchestrator.barrier import Barrier
from orchestrator.outbox import Launch, Outbox, Ready, StepKey
from orchestrator.records import HistoryEntry, Task
from orchestrator.slices import SLICE
from orchestrator.specs import SpecCache
from orchestrator.store import Store, StoreConflict, StoreTx
from orchestrator.timers import Clock

log = structlog.get_logger("orchestrator.engine")

T = TypeVar("T")

RUN_ENDS = ("run_succeeded", "run_failed", "run_cancelled")
COLLISION_TRIES = 4  # a transaction that collides with another replica's, tried again
RELEASED_TOPIC = "released"
NOTICE_IDS = 100  # task ids per notice: PostgreSQL's notices carry under 8000 bytes


class DeadlineKeeper(Protocol):
    def arm_tasks(self, tasks: list[Task]) -> None: ...

    def forget(self, task_ids: list[str]) -> None: ...

    def arm_steps(self, barriers: list[Barrier]) -> None: ...

    def clear_steps(self, keys: list[StepKey]) -> None: ...


class HandlerRunner(Protocol):
    def launch(self, launches: list[Launch]) -> None: ...

    def interrupt(self, task_ids: list[str]) -> None: ...


class Figures(Protocol):
    def committed(self, entries: Iterable[HistoryEntry], seconds: float) -> None: ...


class Publisher(Protocol):
    def committed(self, entries: list[HistoryEntry]) -> None: ...


class ReadyQueue(Protocol):
    def offer(self, ready: list[Ready]) -> None: ...

    def release(self, task_ids: list[str]) -> None: ...


class Applier:
    def __init__(
        self,
        store: Store,
        specs: SpecCache,
        publisher: Publisher,
        clock: Clock,
        rng: random.Random,
        replica: str = LOCAL,
    ) -> None:
        self.store = store
        self.specs = specs
        self.publisher = publisher
        self.clock = clock
        self.rng = rng
        self.replica = replica
        self.deadlines: DeadlineKeeper | None = None
        self.launcher: HandlerRunner | None = None
        self.dispatcher: ReadyQueue | None = None
        self.figures: Figures | None = None

    def connect(
        self, deadlines: DeadlineKeeper, launcher: HandlerRunner, dispatcher: ReadyQueue
    ) -> None:
        """The parts that act on outboxes (built after the applier: they use it too)."""
        self.deadlines, self.launcher, self.dispatcher = deadlines, launcher, dispatcher

    async def transact(
        self, work: Callable[[Advance], Awaitable[T]], now: float | None = None
    ) -> T:
        """`work` in one transaction; its outbox is applied once it has committed.

        `now` is the time the work happens at (default: when the transaction starts).
        """
        started = time.perf_counter()
        for tries in range(1, COLLISION_TRIES + 1):
            try:
                async with self.store.transaction() as tx:
                    at = self.clock() if now is None else now
                    advance = Advance(tx, at, self.rng, self.specs, self.replica)
                    result = await work(advance)
                    entries = await tx.append_history(advance.outbox.history)
                    if self.store.shared:
                        self._notify(tx, advance.outbox, entries)
                break
            except StoreConflict as error:
                if tries == COLLISION_TRIES or not self.store.shared:
                    raise
                log.info("transaction_collided", tries=tries, reason=str(error))
        if self.figures is not None:
            self.figures.committed(entries, time.perf_counter() - started)
        await self.apply(advance.outbox, entries)
        return result

    async def apply(self, outbox: Outbox, entries: list[HistoryEntry]) -> None:
        """Act on a committed transaction's outbox (the order matters: see the module doc).

        A large outbox (a cancel of thousands of tasks) is worked through in slices, the loop
        getting a turn between them.
        """
        deadlines, launcher, dispatcher = self.deadlines, self.launcher, self.dispatcher
        if deadlines is None or launcher is None or dispatcher is None:
            raise RuntimeError("the applier is not connected to the engine's parts")
        for published in _slices(entries):
            self.publisher.committed(published)
            await _turn(published, entries)
        deadlines.clear_steps(outbox.cleared_step_deadlines)
        deadlines.arm_steps(outbox.step_deadlines)
        launcher.interrupt(outbox.interrupted)
        for released in _slices(outbox.released):
            deadlines.forget(released)
            dispatcher.release(released)
            await _turn(released, outbox.released)
        deadlines.arm_tasks(outbox.task_deadlines)
        launcher.launch(outbox.launch)
        for ready in _slices(outbox.ready):
            dispatcher.offer(ready)
            await _turn(ready, outbox.ready)
        for entry in entries:
            if entry.type in RUN_ENDS:
                log.info(entry.type, run_id=entry.run_id, reason=entry.data.get("reason"))

    def _notify(self, tx: StoreTx, outbox: Outbox, entries: list[HistoryEntry]) -> None:
        """Leave the other replicas their notices (sent only if this commits)."""
        if entries and entries[-1].id is not None:
            tx.notify("history", str(entries[-1].id))
        for owner, (released, interrupted) in outbox.foreign(self.replica).items():
            for start in range(0, len(released), NOTICE_IDS):
                part = released[start : start + NOTICE_IDS]
                in_part = set(part)
                stop = [task_id for task_id in interrupted if task_id in in_part]
                tx.notify(RELEASED_TOPIC, json.dumps({"to": owner, "ids": part, "stop": stop}))


def _slices(items: list[T]) -> list[list[T]]:
    if len(items) <= SLICE:
        return [items]
    return [items[start : start + SLICE] for start in range(0, len(items), SLICE)]


async def _turn(part: list[Any], whole: list[Any]) -> None:
    """Give the loop a turn between the slices of a large list."""
    if len(part) < len(whole):
        await asyncio.sleep(0)
