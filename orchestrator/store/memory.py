"""MemoryStore: the Store protocol in memory, an honest fake for the engine's unit tests.

Honest means it keeps the promises the SQL stores keep, checked by the same contract suite:
one write transaction at a time; a transaction's writes are invisible outside it until it
commits and vanish if it raises; JSON values are stored as JSON (a value that is not JSON
fails the write, and a reader never shares a mutable value with a writer); conditional
writes apply only to rows still as expected. It holds nothing across processes, so crash
and restart tests use SQLite.
"""

from __future__ import annotations

import asyncio
import json
import re
import secrets
from collections.abc import AsyncIterator, Collection, Iterable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field, replace
from typing import Any

from orchestrator.barrier import Barrier, BarrierStatus
from orchestrator.ids import time_floor
from orchestrator.records import Event, HistoryEntry, Run, Task
from orchestrator.states import RunState, TaskState
from orchestrator.store.base import (
    BarrierWrite,
    CallbackToken,
    Page,
    Receipt,
    ReceiptKey,
    RejectionCount,
    RejectionKey,
    StepKey,
    StoreUnavailable,
    Unfinished,
)
from orchestrator.task_moves import TaskWrite

CRON_KEY = re.compile(r"^\d{4}-\d{2}-\d{2}T.*Z$")
UNFINISHED = (TaskState.PENDING, TaskState.DISPATCHED)


def _json(value: Any) -> Any:
    """`value` as it comes back from a JSON column: a copy, and only if it is JSON."""
    return json.loads(json.dumps(value))


def _stored_task(task: Task) -> Task:
    return task.replace(item=_json(task.item), output=_json(task.output))


@dataclass(slots=True)
class _Tables:
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


class MemoryTx:
    """Writes go to an overlay over the committed tables; the store merges it on commit."""

    def __init__(self, base: _Tables, next_history_id: int, next_task_order: int) -> None:
        self._base = base
        self.new = _Tables()
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
        stored = replace(event, payload=_json(event.payload))
        if event.dedup_key is not None:
            dedup = (event.trigger, event.dedup_key)
            existing = self.new.dedup.get(dedup) or self._base.dedup.get(dedup)
            if existing is not None:
                first = await self.get_event(existing)
                assert first is not None  # noqa: S101 - the dedup index names stored events
                return first, False
            self.new.dedup[dedup] = event.id
        self.new.events[event.id] = stored
        return replace(stored, payload=_json(stored.payload)), True

    async def get_event(self, event_id: str) -> Event | None:
        event = self.new.events.get(event_id) or self._base.events.get(event_id)
        return None if event is None else replace(event, payload=_json(event.payload))

    async def insert_run(self, run: Run) -> None:
        if self._run(run.id) is not None:
            raise StoreUnavailable(f"run {run.id} exists")
        self.new.runs[run.id] = run.replace(spec=_json(run.spec))

    async def runs(self, run_ids: Collection[str]) -> dict[str, Run]:
        found = {run_id: self._run(run_id) for run_id in run_ids}
        return {key: run.replace(spec=_json(run.spec)) for key, run in found.items() if run}

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
        for task in [_stored_task(task) for task in tasks]:  # a non-JSON value fails them all
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
        return {key: _stored_task(task) for key, task in found.items() if task is not None}

    async def tasks_of_steps(self, keys: Collection[StepKey]) -> list[Task]:
        ids = [task_id for key in dict.fromkeys(keys) for task_id in self._step_ids(key)]
        ordered = sorted(ids, key=self._creation_order)
        return [_stored_task(task) for task in map(self._task, ordered) if task is not None]

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
        outputs = [_json(write.task.output) for write in writes]  # a non-JSON one fails all
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

    # -- history -----------------------------------------------------------------------------

    async def append_history(self, entries: Iterable[HistoryEntry]) -> list[HistoryEntry]:
        batch = [(entry, _json(entry.data)) for entry in entries]  # a non-JSON one fails all
        appended = []
        for entry, data in batch:
            stored = replace(entry, id=self.next_history_id, data=data)
            self.next_history_id += 1
            self.new.history.append(stored)
            appended.append(replace(stored, data=entry.data))
        return appended


class MemoryStore:
    """The Store protocol in one process's memory."""

    def __init__(self) -> None:
        self._tables = _Tables()
        self._lock = asyncio.Lock()
        self._next_history_id = 1
        self._next_task_order = 0
        self._open = False

    async def open(self) -> None:
        self._open = True

    async def close(self) -> None:
        self._open = False

    async def ping(self) -> None:
        if not self._open:
            raise StoreUnavailable("the store is not open")

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[MemoryTx]:
        await self.ping()
        async with self._lock:
            tx = MemoryTx(self._tables, self._next_history_id, self._next_task_order)
            yield tx
            self._commit(tx)

    def _commit(self, tx: MemoryTx) -> None:
        base, new = self._tables, tx.new
        base.events.update(new.events)
        base.dedup.update(new.dedup)
        base.runs.update(new.runs)
        base.barriers.update(new.barriers)
        base.tasks.update(new.tasks)
        for key, ids in new.steps.items():
            base.steps.setdefault(key, []).extend(ids)
        base.item_keys.update(new.item_keys)
        base.order.update(new.order)
        base.tokens.update(new.tokens)
        base.receipts.update(new.receipts)
        base.history.extend(new.history)
        base.meta.update(new.meta)
        self._next_history_id = tx.next_history_id
        self._next_task_order = tx.next_task_order

    # -- reads outside transactions ----------------------------------------------------------

    async def get_run(self, run_id: str) -> Run | None:
        run = self._tables.runs.get(run_id)
        return None if run is None else run.replace(spec=_json(run.spec))

    async def list_runs(
        self,
        *,
        workflow: str | None = None,
        status: RunState | None = None,
        since: float | None = None,
        until: float | None = None,
        cursor: str | None = None,
        limit: int = 50,
    ) -> Page[Run]:
        low = None if since is None else time_floor("run", since)
        high = None if until is None else time_floor("run", until)
        runs = sorted(
            (
                run
                for run in self._tables.runs.values()
                if (workflow is None or run.workflow == workflow)
                and (status is None or run.status is status)
                and (low is None or run.id >= low)
                and (high is None or run.id < high)
                and (cursor is None or run.id < cursor)
            ),
            key=lambda run: run.id,
            reverse=True,
        )
        limit = max(1, limit)
        page = [run.replace(spec=_json(run.spec)) for run in runs[:limit]]
        return Page(page, page[-1].id if len(runs) > limit else None)

    async def tasks_of_run(self, run_id: str) -> list[Task]:
        return [_stored_task(task) for task in self._tables.tasks.values() if task.run_id == run_id]

    async def get_task(self, task_id: str) -> Task | None:
        task = self._tables.tasks.get(task_id)
        return None if task is None else _stored_task(task)

    async def barriers_of_run(self, run_id: str) -> list[Barrier]:
        return [b for key, b in self._tables.barriers.items() if key[0] == run_id]

    async def get_event(self, event_id: str) -> Event | None:
        event = self._tables.events.get(event_id)
        return None if event is None else replace(event, payload=_json(event.payload))

    async def runs_of_event(self, event_id: str) -> list[Run]:
        runs = [run for run in self._tables.runs.values() if run.event_id == event_id]
        return [run.replace(spec=_json(run.spec)) for run in sorted(runs, key=lambda run: run.id)]

    async def history(
        self,
        *,
        after: int = 0,
        run_id: str | None = None,
        task_id: str | None = None,
        types: Sequence[str] | None = None,
        since: float | None = None,
        limit: int = 100,
    ) -> list[HistoryEntry]:
        found: list[HistoryEntry] = []
        for entry in self._tables.history:
            if len(found) >= limit:
                break
            if (
                (entry.id or 0) > after
                and (run_id is None or entry.run_id == run_id)
                and (task_id is None or entry.task_id == task_id)
                and (types is None or entry.type in types)
                and (since is None or entry.at >= since)
            ):
                found.append(replace(entry, data=_json(entry.data)))
        return found

    async def callback_target(self, token_hash: str) -> tuple[Task, int] | None:
        found = self._tables.tokens.get(token_hash)
        if found is None:
            return None
        task = self._tables.tasks.get(found[0])
        return None if task is None else (_stored_task(task), found[1])

    async def last_cron_fire(self, trigger: str) -> str | None:
        keys = [
            key for (name, key) in self._tables.dedup if name == trigger and CRON_KEY.match(key)
        ]
        return max(keys, default=None)

    async def server_key(self) -> bytes:
        if "server_key" not in self._tables.meta:
            async with self.transaction() as tx:
                await tx.insert_meta("server_key", secrets.token_hex(32))
        return bytes.fromhex(self._tables.meta["server_key"])

    # -- retention ---------------------------------------------------------------------------

    def _expired_runs(self, before: float) -> list[Run]:
        return [
            run
            for run in self._tables.runs.values()
            if run.status.finished and run.finished_at is not None and run.finished_at < before
        ]

    async def prune_task_history(self, before: float, limit: int) -> int:
        async with self._lock:
            expired = {run.id for run in self._expired_runs(before)}
            doomed = [
                entry
                for entry in self._tables.history
                if entry.run_id in expired and entry.task_id is not None
            ][:limit]
            gone = {id(entry) for entry in doomed}
            self._tables.history = [e for e in self._tables.history if id(e) not in gone]
            return len(doomed)

    async def prune_payloads(self, before: float, limit: int) -> int:
        async with self._lock:
            expired = {run.id for run in self._expired_runs(before)}
            tasks = [
                task
                for task in self._tables.tasks.values()
                if task.run_id in expired and (task.output is not None or task.item is not None)
            ][:limit]
            for task in tasks:
                self._tables.tasks[task.id] = task.replace(item=None, output=None)
            events = [
                event
                for event in self._tables.events.values()
                if event.payload != {}
                and event.received_at < before
                and self._event_expired(event, before)
            ][:limit]
            for event in events:
                self._tables.events[event.id] = replace(event, payload={})
            return len(tasks) + len(events)

    def _event_expired(self, event: Event, before: float) -> bool:
        return all(
            run.status.finished and run.finished_at is not None and run.finished_at < before
            for run in self._tables.runs.values()
            if run.event_id == event.id
        )

    async def prune_runs(self, before: float, limit: int) -> int:
        async with self._lock:
            tables = self._tables
            doomed = {run.id for run in self._expired_runs(before)[:limit]}
            task_ids = {t.id for t in tables.tasks.values() if t.run_id in doomed}
            tables.receipts = {k: v for k, v in tables.receipts.items() if k[0] not in task_ids}
            tables.tokens = {k: v for k, v in tables.tokens.items() if v[0] not in task_ids}
            tables.history = [e for e in tables.history if e.run_id not in doomed]
            tables.tasks = {k: v for k, v in tables.tasks.items() if v.run_id not in doomed}
            tables.item_keys = {k for k in tables.item_keys if k[0] not in doomed}
            tables.order = {k: v for k, v in tables.order.items() if k in tables.tasks}
            tables.steps = {k: v for k, v in tables.steps.items() if k[0] not in doomed}
            tables.barriers = {k: v for k, v in tables.barriers.items() if k[0] not in doomed}
            tables.runs = {k: v for k, v in tables.runs.items() if k not in doomed}
            referenced = {run.event_id for run in tables.runs.values()}
            orphans = {
                event_id
                for event_id, event in tables.events.items()
                if event_id not in referenced and event.received_at < before
            }
            tables.events = {k: v for k, v in tables.events.items() if k not in orphans}
            tables.dedup = {k: v for k, v in tables.dedup.items() if v not in orphans}
            return len(doomed)

    async def prune_unattached(self, before: float, limit: int) -> int:
        async with self._lock:
            tables = self._tables
            doomed = [e for e in tables.history if e.run_id is None and e.at < before][:limit]
            gone = {id(entry) for entry in doomed}
            tables.history = [e for e in tables.history if id(e) not in gone]
            old = sorted(key for key in tables.rejections if key[0] < before)[:limit]
            for key in old:
                del tables.rejections[key]
            return len(doomed) + len(old)

    # -- rejection counts and readiness ------------------------------------------------------

    async def add_rejections(self, counts: Sequence[RejectionCount]) -> None:
        await self.ping()
        stored = [replace(count, sample=_json(count.sample)) for count in counts]
        async with self._lock:
            table = self._tables.rejections
            for count in stored:
                before = table.get(count.key)
                table[count.key] = count if before is None else before.plus(count)

    async def rejections(self, *, since: float = 0.0, limit: int = 1000) -> list[RejectionCount]:
        keys = sorted(key for key in self._tables.rejections if key[0] >= since)[: max(1, limit)]
        found = [self._tables.rejections[key] for key in keys]
        return [replace(count, sample=_json(count.sample)) for count in found]

    async def probe_write(self, within: float) -> None:
        """The write lock within `within` seconds: what a write needs here."""
        await self.ping()
        try:
            async with asyncio.timeout(within), self._lock:
                pass
        except TimeoutError:
            raise StoreUnavailable(f"no write committed within {within:g} s") from None

    # -- restart and deadlines ---------------------------------------------------------------

    def _running(self, run_id: str) -> bool:
        run = self._tables.runs.get(run_id)
        return run is not None and run.status is RunState.RUNNING

    async def unfinished(self) -> Unfinished:
        tasks = [
            _stored_task(task)
            for task in self._tables.tasks.values()
            if task.state in UNFINISHED and self._running(task.run_id)
        ]
        barriers = [
            barrier
            for (run_id, _), barrier in self._tables.barriers.items()
            if barrier.status is BarrierStatus.WAITING and self._running(run_id)
        ]
        return Unfinished(tasks, barriers)

    def _deadlines(self) -> list[Task]:
        return [
            task
            for task in self._tables.tasks.values()
            if task.state is TaskState.DISPATCHED
            and task.due_at is not None
            and self._running(task.run_id)
        ]

    async def deadlines_before(self, until: float) -> list[Task]:
        due = [
            task for task in self._deadlines() if task.due_at is not None and task.due_at < until
        ]
        return [_stored_task(task) for task in sorted(due, key=lambda task: task.due_at or 0.0)]

    async def next_deadline(self, after: float) -> float | None:
        later = [
            task.due_at
            for task in self._deadlines()
            if task.due_at is not None and task.due_at >= after
        ]
        return min(later, default=None)
