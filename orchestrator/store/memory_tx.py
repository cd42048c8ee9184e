"""The transaction of the in-memory store: writes to an overlay, merged on commit.

`MemoryTx` keeps the promises the SQL stores' transactions keep (memory.py says which);
`Tables` is what one store holds.
"""

from __future__ import annotations

import json
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from orchestrator.barrier import Barrier
from orchestrator.records import Event, HistoryEntry, Run, Task
from orchestrator.states import RunState, TaskState
from orchestrator.store.base import (
    BarrierWrite,
    CallbackToken,
    KeptEvent,
    Lane,
    LaneLoad,
    Receipt,
    ReceiptKey,
    RejectionCount,
    RejectionKey,
    StepKey,
    StoreUnavailable,
    Wait,
    WaitKey,
)
from orchestrator.store.lanes import lane_loads_of
from orchestrator.task_moves import TaskWrite

UNFINISHED = (TaskState.PENDING, TaskState.DISPATCHED)


def as_json(value: Any) -> Any:
    """`value` as it comes back from a JSON column: a copy, and only if it is JSON."""
    return json.loads(json.dumps(value))


def stored_task(task: Task) -> Task:
    return task.replace(item=as_json(task.item), output=as_json(task.output))


@dataclass(slots=True)
class Tables:
    events: dict[str, Event] = field(default_factory=dict)
    dedup: dict[tuple[str, str], str] = field(default_factory=dict)
    runs: dict[str, Run] = field(default_factory=dict)
    barriers: dict[StepKey, Barrier] = field(default_factory=dict)
    tasks: dict[str, Task] = field(default_factory=dict)
    steps: dict[StepKey, list[str]] = field(default_factory=dict)
    item_keys: set[tuple[str, str, str]] = field(default_factory=set)
    order: dict[str, int] = field(default_factory=dict)
    tokens: dict[str, tuple[str, int]] = field(default_factory=dict)
    receipts: dict[ReceiptKey, tuple[str, float]] = field(default_factory=dict)
    history: list[HistoryEntry] = field(default_factory=list)
    meta: dict[str, str] = field(default_factory=dict)
    rejections: dict[RejectionKey, RejectionCount] = field(default_factory=dict)
    replicas: dict[str, tuple[float, float]] = field(default_factory=dict)  # started, lease
    dropped: set[str] = field(default_factory=set)  # replicas a transaction removed
    waits: dict[tuple[str, int], Wait] = field(default_factory=dict)
    kept: dict[tuple[str, str, str], KeptEvent] = field(default_factory=dict)


class MemoryTx:
    """Writes go to an overlay over the committed tables; the store merges it on commit."""

    def __init__(self, base: Tables, next_history_id: int, next_task_order: int) -> None:
        self._base = base
        self.new = Tables()
        self.gone_waits: set[tuple[str, int]] = set()  # deleted by this transaction
        self.gone_kept: set[tuple[str, str, str]] = set()
        self.next_history_id = next_history_id
        self.next_task_order = next_task_order

    # -- reading through the overlay ---------------------------------------------------------

    def _task(self, task_id: str) -> Task | None:
        return self.new.tasks.get(task_id) or self._base.tasks.get(task_id)

    def _run(self, run_id: str) -> Run | None:
        return self.new.runs.get(run_id) or self._base.runs.get(run_id)

    def _barrier(self, key: StepKey) -> Barrier | None:
        return self.new.barriers.get(key) or self._base.barriers.get(key)

    def _step_ids(self, key: StepKey) -> list[str]:
        return [*self._base.steps.get(key, []), *self.new.steps.get(key, [])]

    # -- events and runs ---------------------------------------------------------------------

    async def insert_event(self, event: Event) -> tuple[Event, bool]:
        stored = replace(event, payload=as_json(event.payload))
        if event.dedup_key is not None:
            dedup = (event.trigger, event.dedup_key)
            existing = self.new.dedup.get(dedup) or self._base.dedup.get(dedup)
            if existing is not None:
                first = await self.get_event(existing)
                assert first is not None  # noqa: S101 - the dedup index names stored events
                return first, False
            self.new.dedup[dedup] = event.id
        self.new.events[event.id] = stored
        return replace(stored, payload=as_json(stored.payload)), True

    async def get_event(self, event_id: str) -> Event | None:
        event = self.new.events.get(event_id) or self._base.events.get(event_id)
        return None if event is None else replace(event, payload=as_json(event.payload))

    async def insert_run(self, run: Run) -> None:
        if self._run(run.id) is not None:
            raise StoreUnavailable(f"run {run.id} exists")
        self.new.runs[run.id] = run.replace(spec=as_json(run.spec))

    async def runs(self, run_ids: Collection[str]) -> dict[str, Run]:
        found = {run_id: self._run(run_id) for run_id in run_ids}
        return {key: run.replace(spec=as_json(run.spec)) for key, run in found.items() if run}

    async def set_run_status(
        self, run_id: str, expected: RunState, new: RunState, at: float | None
    ) -> bool:
        run = self._run(run_id)
        if run is None or run.status is not expected:
            return False
        self.new.runs[run_id] = run.replace(status=new, finished_at=at)
        return True

    # -- barriers ----------------------------------------------------------------------------

    async def insert_barriers(self, barriers: Sequence[Barrier]) -> None:
        for barrier in barriers:
            key = (barrier.run_id, barrier.step)
            if self._barrier(key) is not None:
                raise StoreUnavailable(f"barrier {key} exists")
            self.new.barriers[key] = barrier

    async def barriers(self, keys: Collection[StepKey]) -> dict[StepKey, Barrier]:
        found = {key: self._barrier(key) for key in keys}
        return {key: barrier for key, barrier in found.items() if barrier is not None}

    async def barriers_of_runs(self, run_ids: Collection[str]) -> list[Barrier]:
        wanted = set(run_ids)
        keys = [
            *self._base.barriers,
            *(k for k in self.new.barriers if k not in self._base.barriers),
        ]
        found = (self._barrier(key) for key in keys if key[0] in wanted)
        return [barrier for barrier in found if barrier is not None]

    async def write_barriers(self, writes: Sequence[BarrierWrite]) -> set[StepKey]:
        applied = set()
        for write in writes:
            stored = self._barrier(write.key)
            if stored is None or (stored.status, stored.succeeded, stored.failed) != (
                write.expected.status,
                write.expected.succeeded,
                write.expected.failed,
            ):
                continue
            self.new.barriers[write.key] = replace(write.barrier, policy=stored.policy)
            applied.add(write.key)
        return applied

    # -- tasks -------------------------------------------------------------------------------

    async def insert_tasks(self, tasks: Sequence[Task]) -> None:
        for task in [stored_task(task) for task in tasks]:  # a non-JSON value fails them all
            key = (task.run_id, task.step)
            unique = (task.run_id, task.step, task.item_key)
            if (
                self._task(task.id) is not None
                or unique in self._base.item_keys
                or unique in self.new.item_keys
            ):
                raise StoreUnavailable(f"task {task.id} ({task.label}) exists")
            self.new.tasks[task.id] = task
            self.new.steps.setdefault(key, []).append(task.id)
            self.new.item_keys.add(unique)
            self.new.order[task.id] = self.next_task_order
            self.next_task_order += 1

    async def tasks(self, task_ids: Collection[str]) -> dict[str, Task]:
        found = {task_id: self._task(task_id) for task_id in task_ids}
        return {key: stored_task(task) for key, task in found.items() if task is not None}

    async def tasks_of_steps(self, keys: Collection[StepKey]) -> list[Task]:
        ids = [task_id for key in dict.fromkeys(keys) for task_id in self._step_ids(key)]
        ordered = sorted(ids, key=self._creation_order)
        return [stored_task(task) for task in map(self._task, ordered) if task is not None]

    def _creation_order(self, task_id: str) -> int:
        return self._base.order.get(task_id, self.new.order.get(task_id, 0))

    async def unfinished_tasks(self, run_id: str, step: str | None = None) -> list[Task]:
        keys = [
            key
            for key in [*self._base.steps, *self.new.steps]
            if key[0] == run_id and (step is None or key[1] == step)
        ]
        tasks = await self.tasks_of_steps(list(dict.fromkeys(keys)))
        return [task for task in tasks if task.state in UNFINISHED]

    async def write_tasks(self, writes: Sequence[TaskWrite]) -> set[str]:
        outputs = [as_json(write.task.output) for write in writes]  # a non-JSON one fails all
        applied = set()
        for write, output in zip(writes, outputs, strict=True):
            stored = self._task(write.task.id)
            if stored is None or (stored.state, stored.attempt) != (
                write.expected_state,
                write.expected_attempt,
            ):
                continue
            self.new.tasks[write.task.id] = write.task.replace(
                item=stored.item,
                output=output,
                run_id=stored.run_id,
                step=stored.step,
                item_key=stored.item_key,
            )
            applied.add(write.task.id)
        return applied

    # -- callbacks ---------------------------------------------------------------------------

    async def insert_callback_tokens(self, tokens: Sequence[CallbackToken]) -> None:
        for token in tokens:
            if token.token_hash not in self._base.tokens:
                self.new.tokens.setdefault(token.token_hash, (token.task_id, token.attempt))

    async def receipts(self, keys: Collection[ReceiptKey]) -> dict[ReceiptKey, str]:
        found = {key: self.new.receipts.get(key) or self._base.receipts.get(key) for key in keys}
        return {key: value[0] for key, value in found.items() if value is not None}

    async def insert_receipts(self, receipts: Sequence[Receipt]) -> None:
        for receipt in receipts:
            if receipt.key in self._base.receipts or receipt.key in self.new.receipts:
                raise StoreUnavailable(f"receipt {receipt.key} exists")
            self.new.receipts[receipt.key] = (receipt.body_hash, receipt.at)

    async def insert_meta(self, key: str, value: str) -> None:
        if key not in self._base.meta:
            self.new.meta.setdefault(key, value)

    # -- replicas ----------------------------------------------------------------------------

    async def lock_runs(self, run_ids: Collection[str]) -> dict[str, Run]:
        return await self.runs(run_ids)  # one writer at a time: every read is locked

    async def lane_loads(
        self, lanes: Collection[Lane], since: Mapping[Lane, float]
    ) -> dict[Lane, LaneLoad]:
        wanted = set(lanes)
        in_flight: dict[Lane, int] = {}
        started: list[tuple[str, str, float]] = []
        ids = [*self._base.tasks, *(i for i in self.new.tasks if i not in self._base.tasks)]
        for task in map(self._task, ids):
            run = None if task is None else self._run(task.run_id)
            if task is None or run is None or (run.workflow, task.step) not in wanted:
                continue
            lane = (run.workflow, task.step)
            if task.state is TaskState.DISPATCHED:
                in_flight[lane] = in_flight.get(lane, 0) + 1
            if task.started_at is not None:
                started.append((*lane, task.started_at))
        return lane_loads_of(wanted, in_flight, started, since)

    def _replica(self, replica_id: str) -> tuple[float, float] | None:
        if replica_id in self.new.dropped:
            return None
        return self.new.replicas.get(replica_id) or self._base.replicas.get(replica_id)

    async def save_replica(self, replica_id: str, started_at: float, lease_until: float) -> None:
        self.new.dropped.discard(replica_id)
        self.new.replicas[replica_id] = (started_at, lease_until)

    async def drop_replica(self, replica_id: str, expired_before: float) -> bool:
        found = self._replica(replica_id)
        if found is None or found[1] >= expired_before:
            return False
        self.new.replicas.pop(replica_id, None)
        self.new.dropped.add(replica_id)
        return True

    async def owned_tasks(self, owners: Collection[str | None]) -> list[Task]:
        wanted = set(owners)
        ids = [*self._base.tasks, *(i for i in self.new.tasks if i not in self._base.tasks)]
        found = (self._task(task_id) for task_id in ids)
        return [
            stored_task(task)
            for task in sorted(
                (t for t in found if t is not None and t.state in UNFINISHED and t.owner in wanted),
                key=lambda t: self._creation_order(t.id),
            )
        ]

    def notify(self, topic: str, payload: str) -> None:
        """No other process shares this store: nobody to tell."""

    # -- waits on keys ---------------------------------------------------------------------

    def live_waits(self) -> list[Wait]:
        """Every wait as this transaction sees it."""
        merged = {**self._base.waits, **self.new.waits}
        return [wait for key, wait in merged.items() if key not in self.gone_waits]

    def live_kept(self) -> list[KeptEvent]:
        merged = {**self._base.kept, **self.new.kept}
        return [kept for key, kept in merged.items() if key not in self.gone_kept]

    async def lock_wait_keys(self, keys: Collection[WaitKey]) -> None:
        """One transaction at a time holds the store: nothing more to lock."""

    async def waiting_on(self, keys: Collection[WaitKey]) -> list[tuple[Wait, Task]]:
        wanted = set(keys)
        found = []
        for wait in self.live_waits():
            task = self._task(wait.task_id)
            if (
                wait.wait_key in wanted
                and task is not None
                and task.state is TaskState.DISPATCHED
                and task.attempt == wait.attempt
            ):
                found.append((wait, stored_task(task)))
        return sorted(found, key=lambda pair: (pair[0].registered_at, pair[0].task_id))

    async def insert_waits(self, waits: Sequence[Wait]) -> None:
        for wait in waits:
            key = (wait.task_id, wait.attempt)
            self.gone_waits.discard(key)
            self.new.waits[key] = replace(wait, run_id=None, step=None)

    async def delete_waits(self, task_ids: Collection[str]) -> None:
        doomed = set(task_ids)
        for wait in self.live_waits():
            if wait.task_id in doomed:
                self.gone_waits.add((wait.task_id, wait.attempt))
                self.new.waits.pop((wait.task_id, wait.attempt), None)

    async def keep_events(self, kept: Sequence[KeptEvent], most: Mapping[str, int]) -> None:
        for event in kept:
            key = (event.trigger, event.key, event.event_id)
            if key not in self._base.kept and key not in self.new.kept:
                self.gone_kept.discard(key)
                self.new.kept[key] = replace(event, payload=None)
        for trigger, limit in most.items():
            mine = [k for k in self.live_kept() if k.trigger == trigger]
            mine.sort(key=lambda k: (k.received_at, k.event_id), reverse=True)
            for old in mine[limit:]:
                gone = (old.trigger, old.key, old.event_id)
                self.gone_kept.add(gone)
                self.new.kept.pop(gone, None)

    async def kept_for(self, keys: Collection[WaitKey], now: float) -> list[KeptEvent]:
        wanted = set(keys)
        found = []
        for kept in self.live_kept():
            event = await self.get_event(kept.event_id)
            if kept.wait_key in wanted and kept.expires > now and event is not None:
                found.append(replace(kept, payload=event.payload))
        return sorted(found, key=lambda k: (k.received_at, k.event_id))

    # -- history -----------------------------------------------------------------------------

    async def append_history(self, entries: Iterable[HistoryEntry]) -> list[HistoryEntry]:
        batch = [(entry, as_json(entry.data)) for entry in entries]  # a non-JSON one fails all
        appended = []
        for entry, data in batch:
            stored = replace(entry, id=self.next_history_id, data=data)
            self.next_history_id += 1
            self.new.history.append(stored)
            appended.append(replace(stored, data=entry.data))
        return appended
