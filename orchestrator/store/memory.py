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
import re
import secrets
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import replace

from orchestrator.barrier import Barrier, BarrierStatus
from orchestrator.ids import time_floor
from orchestrator.records import Event, HistoryEntry, Run, Task
from orchestrator.states import RunState, TaskState
from orchestrator.store.base import (
    KeptEvent,
    NoticeFn,
    Page,
    RejectionCount,
    StoreUnavailable,
    Unfinished,
    Wait,
    kept_cursor,
    page_of,
)
from orchestrator.store.memory_tx import UNFINISHED, MemoryTx, Tables, as_json, stored_task

CRON_KEY = re.compile(r"^\d{4}-\d{2}-\d{2}T.*Z$")


class MemoryStore:
    """The Store protocol in one process's memory."""

    shared = False

    def __init__(self) -> None:
        self._tables = Tables()
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
        base.replicas.update(new.replicas)
        for replica in new.dropped:
            base.replicas.pop(replica, None)
        for wait_key in tx.gone_waits:
            base.waits.pop(wait_key, None)
        base.waits.update(new.waits)
        for gone in tx.gone_kept:
            base.kept.pop(gone, None)
        base.kept.update(new.kept)
        self._next_history_id = tx.next_history_id
        self._next_task_order = tx.next_task_order

    # -- reads outside transactions ----------------------------------------------------------

    async def get_run(self, run_id: str) -> Run | None:
        run = self._tables.runs.get(run_id)
        return None if run is None else run.replace(spec=as_json(run.spec))

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
        return page_of(
            runs, max(1, limit), lambda run: run.replace(spec=as_json(run.spec)), lambda run: run.id
        )

    async def tasks_of_run(self, run_id: str) -> list[Task]:
        return [stored_task(task) for task in self._tables.tasks.values() if task.run_id == run_id]

    async def get_task(self, task_id: str) -> Task | None:
        task = self._tables.tasks.get(task_id)
        return None if task is None else stored_task(task)

    async def barriers_of_run(self, run_id: str) -> list[Barrier]:
        return [b for key, b in self._tables.barriers.items() if key[0] == run_id]

    async def get_event(self, event_id: str) -> Event | None:
        event = self._tables.events.get(event_id)
        return None if event is None else replace(event, payload=as_json(event.payload))

    async def runs_of_event(self, event_id: str) -> list[Run]:
        runs = [run for run in self._tables.runs.values() if run.event_id == event_id]
        return [run.replace(spec=as_json(run.spec)) for run in sorted(runs, key=lambda run: run.id)]

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
                found.append(replace(entry, data=as_json(entry.data)))
        return found

    async def callback_target(self, token_hash: str) -> tuple[Task, int] | None:
        found = self._tables.tokens.get(token_hash)
        if found is None:
            return None
        task = self._tables.tasks.get(found[0])
        return None if task is None else (stored_task(task), found[1])

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

    # -- waits on keys and events kept for them -----------------------------------------------

    def _waiting(self, wait: Wait) -> Task | None:
        task = self._tables.tasks.get(wait.task_id)
        if task is None or task.state is not TaskState.DISPATCHED or task.attempt != wait.attempt:
            return None
        return task

    async def list_waits(
        self, *, trigger: str | None = None, cursor: str | None = None, limit: int = 100
    ) -> Page[Wait]:
        found = []
        for wait in self._tables.waits.values():
            task = self._waiting(wait)
            if (
                task is not None
                and (trigger is None or wait.trigger == trigger)
                and (cursor is None or wait.task_id > cursor)
            ):
                found.append(replace(wait, run_id=task.run_id, step=task.step))
        found.sort(key=lambda wait: wait.task_id)
        return page_of(found, max(1, limit), lambda wait: wait, lambda wait: wait.task_id)

    async def list_kept_events(
        self,
        *,
        now: float,
        trigger: str | None = None,
        cursor: str | None = None,
        limit: int = 100,
    ) -> Page[KeptEvent]:
        after = None if cursor is None else cursor.partition(":")[::2]
        found = sorted(
            (
                kept
                for kept in self._tables.kept.values()
                if kept.expires > now
                and (trigger is None or kept.trigger == trigger)
                and (after is None or (kept.event_id, kept.key) > after)
            ),
            key=lambda kept: (kept.event_id, kept.key),
        )
        return page_of(found, max(1, limit), lambda kept: kept, kept_cursor)

    async def prune_waits(self, limit: int) -> int:
        async with self._lock:
            doomed = [
                key for key, wait in self._tables.waits.items() if self._waiting(wait) is None
            ]
            for key in doomed[:limit]:
                del self._tables.waits[key]
            return len(doomed[:limit])

    async def prune_kept_events(self, before: float, limit: int) -> int:
        async with self._lock:
            kept = self._tables.kept
            doomed = sorted((k for k, v in kept.items() if v.expires < before), key=str)[:limit]
            for key in doomed:
                del kept[key]
            return len(doomed)

    # -- rejection counts and readiness ------------------------------------------------------

    async def add_rejections(self, counts: Sequence[RejectionCount]) -> None:
        await self.ping()
        stored = [replace(count, sample=as_json(count.sample)) for count in counts]
        async with self._lock:
            table = self._tables.rejections
            for count in stored:
                before = table.get(count.key)
                table[count.key] = count if before is None else before.plus(count)

    async def rejections(self, *, since: float = 0.0, limit: int = 1000) -> list[RejectionCount]:
        keys = sorted(key for key in self._tables.rejections if key[0] >= since)[: max(1, limit)]
        found = [self._tables.rejections[key] for key in keys]
        return [replace(count, sample=as_json(count.sample)) for count in found]

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
            stored_task(task)
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

    async def replicas(self) -> dict[str, float]:
        return {replica_id: lease for replica_id, (_, lease) in self._tables.replicas.items()}

    async def listen(self, on_notice: NoticeFn) -> None:
        """No other process shares this store: nothing to hear."""

    async def deadlines_before(self, until: float) -> list[Task]:
        due = [
            task for task in self._deadlines() if task.due_at is not None and task.due_at < until
        ]
        return [stored_task(task) for task in sorted(due, key=lambda task: task.due_at or 0.0)]

    async def next_deadline(self, after: float) -> float | None:
        later = [
            task.due_at
            for task in self._deadlines()
            if task.due_at is not None and task.due_at >= after
        ]
        return min(later, default=None)
