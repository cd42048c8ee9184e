"""One logical SQLite write transaction: the StoreTx operations as batch statements.

Statements run on the calling thread (each takes microseconds, where a hop to a database
thread would cost far more: group_commit.py), except those whose cost grows with the batch
(thousands of rows), which run in the connection's own thread so the event loop keeps
serving callbacks and timers. A batch of any size is one statement: `executemany`, or a
query over `json_each(?)` of the keys.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import replace
from typing import Any, TypeVar

from orchestrator.barrier import Barrier
from orchestrator.records import Event, HistoryEntry, Run, Task
from orchestrator.slices import sliced_map
from orchestrator.states import RunState
from orchestrator.store.base import (
    BarrierWrite,
    CallbackToken,
    Lane,
    LaneLoad,
    Receipt,
    ReceiptKey,
    StepKey,
)
from orchestrator.store.group_commit import GroupCommit
from orchestrator.store.lanes import lane_loads_of
from orchestrator.store.rows import (
    barrier_from_row,
    dumps,
    event_from_row,
    run_from_row,
    task_from_row,
    task_state_params,
)
from orchestrator.store.sqlite_waits import SqliteWaitsTx
from orchestrator.task_moves import TaskWrite

T = TypeVar("T")

# Batches past this many rows run in the connection's thread, not on the event loop.
OFFLOAD_ROWS = 256

SELECT_EVENT = "SELECT * FROM events WHERE id = ?"
SELECT_EVENT_BY_DEDUP = "SELECT * FROM events WHERE trigger = ? AND dedup_key = ?"
INSERT_EVENT = """
    INSERT INTO events (
        id, trigger, workflow, received_at, payload, dedup_key, traceparent, tracestate
    )
    VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (trigger, dedup_key) DO NOTHING
"""
INSERT_RUN = """
    INSERT INTO runs (id, workflow, event_id, status, created_at, finished_at, spec)
    VALUES (?, ?, ?, ?, ?, ?, ?)
"""
SELECT_RUN = "SELECT * FROM runs WHERE id = ?"
SELECT_RUNS = "SELECT * FROM runs WHERE id IN (SELECT value FROM json_each(?))"
UPDATE_RUN_STATUS = "UPDATE runs SET status = ?, finished_at = ? WHERE id = ? AND status = ?"
INSERT_BARRIER = """
    INSERT INTO barriers (run_id, step, expected, required, succeeded, failed, status, policy,
                          deadline_at, decided_at, reason)
    VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
"""
SELECT_BARRIER = "SELECT * FROM barriers WHERE run_id = ? AND step = ?"
SELECT_BARRIERS = """
    SELECT * FROM barriers WHERE (run_id, step) IN
        (SELECT value ->> 0, value ->> 1 FROM json_each(?))
"""
SELECT_BARRIERS_OF_RUNS = """
    SELECT * FROM barriers WHERE run_id IN (SELECT value FROM json_each(?)) ORDER BY rowid
"""
UPDATE_BARRIER = """
    UPDATE barriers SET expected = ?, required = ?, succeeded = ?, failed = ?, status = ?,
                        deadline_at = ?, decided_at = ?, reason = ?
    WHERE run_id = ? AND step = ? AND status = ? AND succeeded = ? AND failed = ?
"""
INSERT_TASK = """
    INSERT INTO tasks (id, run_id, step, item_key, item, state, attempt, due_at, started_at,
                       finished_at, output, error, awaiting, dispatch_tries, wait_window,
                       queued_at, owner)
    VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
"""
SELECT_TASK = "SELECT * FROM tasks WHERE id = ?"
SELECT_TASKS = "SELECT * FROM tasks WHERE id IN (SELECT value FROM json_each(?))"
SELECT_TASKS_OF_STEPS = """
    SELECT * FROM tasks WHERE (run_id, step) IN
        (SELECT value ->> 0, value ->> 1 FROM json_each(?))
    ORDER BY rowid
"""
SELECT_UNFINISHED_OF_RUN = """
    SELECT * FROM tasks WHERE run_id = ? AND state IN ('pending', 'dispatched') ORDER BY rowid
"""
SELECT_UNFINISHED_OF_STEP = """
    SELECT * FROM tasks WHERE run_id = ? AND step = ? AND state IN ('pending', 'dispatched')
    ORDER BY rowid
"""
UPDATE_TASK = """
    UPDATE tasks SET state = ?, attempt = ?, due_at = ?, started_at = ?, finished_at = ?,
                     output = ?, error = ?, awaiting = ?, dispatch_tries = ?, wait_window = ?,
                     queued_at = ?, owner = ?
    WHERE id = ? AND state = ? AND attempt = ?
"""
INSERT_CAPABILITY = """
    INSERT INTO callback_tokens (token_hash, task_id, attempt) VALUES (?, ?, ?)
    ON CONFLICT (token_hash) DO NOTHING
"""
SELECT_RECEIPT = """
    SELECT task_id, webhook_id, body_hash FROM callback_receipts WHERE task_id = ? AND webhook_id = ?
"""
SELECT_RECEIPTS = """
    SELECT task_id, webhook_id, body_hash FROM callback_receipts WHERE (task_id, webhook_id) IN
        (SELECT value ->> 0, value ->> 1 FROM json_each(?))
"""
INSERT_RECEIPT = """
    INSERT INTO callback_receipts (task_id, webhook_id, body_hash, received_at) VALUES (?, ?, ?, ?)
"""
SELECT_OWNED_TASKS = """
    SELECT * FROM tasks WHERE state IN ('pending', 'dispatched')
      AND (owner IN (SELECT value FROM json_each(?)) OR (? AND owner IS NULL))
    ORDER BY rowid
"""
LANES_IN_FLIGHT = """
    SELECT r.workflow, t.step, count(*) FROM tasks t JOIN runs r ON r.id = t.run_id
    WHERE t.state = 'dispatched' AND (r.workflow, t.step) IN
        (SELECT value ->> 0, value ->> 1 FROM json_each(?))
    GROUP BY r.workflow, t.step
"""
LANES_STARTED = """
    SELECT r.workflow, t.step, t.started_at FROM tasks t JOIN runs r ON r.id = t.run_id
    WHERE t.started_at > ? AND (r.workflow, t.step) IN
        (SELECT value ->> 0, value ->> 1 FROM json_each(?))
"""
UPSERT_REPLICA = """
    INSERT INTO replicas (id, started_at, lease_until) VALUES (?, ?, ?)
    ON CONFLICT (id) DO UPDATE SET lease_until = excluded.lease_until
"""
DELETE_EXPIRED_REPLICA = "DELETE FROM replicas WHERE id = ? AND lease_until < ?"
INSERT_META = "INSERT INTO meta (key, value) VALUES (?, ?) ON CONFLICT (key) DO NOTHING"
INSERT_HISTORY = """
    INSERT INTO history (at, type, run_id, task_id, step, data) VALUES (?, ?, ?, ?, ?, ?)
"""
INSERT_HISTORY_RETURNING = INSERT_HISTORY.rstrip() + " RETURNING id"
SELECT_LAST_ID = "SELECT last_insert_rowid()"


def _keys(keys: Iterable[Any]) -> str:
    """A batch of keys as the JSON array that `json_each(?)` reads."""
    return json.dumps(list(keys), separators=(",", ":"))


class SqliteTx(SqliteWaitsTx):
    """The StoreTx of one logical transaction on the writer connection."""

    def __init__(self, conn: sqlite3.Connection, commits: GroupCommit) -> None:
        self._conn = conn
        self._commits = commits

    async def _run(self, rows: int, work: Callable[[], T]) -> T:
        """`work` on the loop for a small batch, in the connection's thread for a large one."""
        if rows > OFFLOAD_ROWS:
            return await self._commits.offload(work)
        return work()

    def _one(self, sql: str, params: Sequence[Any]) -> sqlite3.Row | None:
        row: sqlite3.Row | None = self._conn.execute(sql, params).fetchone()
        return row

    def _all(self, sql: str, params: Sequence[Any]) -> list[sqlite3.Row]:
        return self._conn.execute(sql, params).fetchall()

    def _keyed(self, one: str, many: str, keys: Collection[Any]) -> list[sqlite3.Row]:
        """Rows by key: a plain lookup for one key (json_each costs more than the lookup
        itself), one query over `json_each(?)` for several."""
        if len(keys) == 1:
            (key,) = keys
            return self._all(one, key if isinstance(key, tuple) else (key,))
        return self._all(many, (_keys(keys),))

    def _many(self, sql: str, rows: Sequence[Sequence[Any]]) -> int:
        return self._conn.executemany(sql, rows).rowcount

    def _conditional(self, sql: str, rows: Sequence[Sequence[Any]]) -> list[bool]:
        """Run a conditional UPDATE for each row; which of them applied.

        executemany answers only how many applied. When some did not, a row already holding
        what its write would write cannot tell whether that write applied (a duplicate
        report must not count twice), so the batch is undone and run a row at a time.
        """
        if len(rows) == 1:
            return [self._conn.execute(sql, rows[0]).rowcount == 1]
        self._conn.execute("SAVEPOINT batch")
        if self._many(sql, rows) == len(rows):
            self._conn.execute("RELEASE batch")
            return [True] * len(rows)
        self._conn.execute("ROLLBACK TO batch")
        self._conn.execute("RELEASE batch")
        return [self._conn.execute(sql, row).rowcount == 1 for row in rows]

    # -- events and runs -------------------------------------------------------------------

    async def insert_event(self, event: Event) -> tuple[Event, bool]:
        params = (
            event.id,
            event.trigger,
            event.workflow,
            event.received_at,
            dumps(event.payload),
            event.dedup_key,
            event.traceparent,
            event.tracestate,
        )
        if self._conn.execute(INSERT_EVENT, params).rowcount == 1:
            return event, True
        row = self._one(SELECT_EVENT_BY_DEDUP, (event.trigger, event.dedup_key))
        assert row is not None, "a dedup conflict implies a stored event"  # noqa: S101
        return event_from_row(row), False

    async def get_event(self, event_id: str) -> Event | None:
        row = self._one(SELECT_EVENT, (event_id,))
        return None if row is None else event_from_row(row)

    async def insert_run(self, run: Run) -> None:
        self._conn.execute(
            INSERT_RUN,
            (
                run.id,
                run.workflow,
                run.event_id,
                run.status.value,
                run.created_at,
                run.finished_at,
                dumps(run.spec),
            ),
        )

    async def runs(self, run_ids: Collection[str]) -> dict[str, Run]:
        if not run_ids:
            return {}
        rows = self._keyed(SELECT_RUN, SELECT_RUNS, run_ids)
        return {row["id"]: run_from_row(row) for row in rows}

    async def set_run_status(
        self, run_id: str, expected: RunState, new: RunState, at: float | None
    ) -> bool:
        params = (new.value, at, run_id, expected.value)
        return self._conn.execute(UPDATE_RUN_STATUS, params).rowcount == 1

    # -- barriers --------------------------------------------------------------------------

    async def insert_barriers(self, barriers: Sequence[Barrier]) -> None:
        rows = [
            (
                barrier.run_id,
                barrier.step,
                barrier.expected,
                barrier.required,
                barrier.succeeded,
                barrier.failed,
                barrier.status.value,
                barrier.policy.model_dump_json(),
                barrier.deadline_at,
                barrier.decided_at,
                barrier.reason,
            )
            for barrier in barriers
        ]
        if rows:
            self._many(INSERT_BARRIER, rows)

    async def barriers(self, keys: Collection[StepKey]) -> dict[StepKey, Barrier]:
        if not keys:
            return {}
        found = (
            barrier_from_row(row) for row in self._keyed(SELECT_BARRIER, SELECT_BARRIERS, keys)
        )
        return {(barrier.run_id, barrier.step): barrier for barrier in found}

    async def barriers_of_runs(self, run_ids: Collection[str]) -> list[Barrier]:
        if not run_ids:
            return []
        rows = self._all(SELECT_BARRIERS_OF_RUNS, (_keys(run_ids),))
        return [barrier_from_row(row) for row in rows]

    async def write_barriers(self, writes: Sequence[BarrierWrite]) -> set[StepKey]:
        rows = [
            (
                write.barrier.expected,
                write.barrier.required,
                write.barrier.succeeded,
                write.barrier.failed,
                write.barrier.status.value,
                write.barrier.deadline_at,
                write.barrier.decided_at,
                write.barrier.reason,
                write.barrier.run_id,
                write.barrier.step,
                write.expected.status.value,
                write.expected.succeeded,
                write.expected.failed,
            )
            for write in writes
        ]
        if not rows:
            return set()
        applied = self._conditional(UPDATE_BARRIER, rows)
        return {write.key for write, ok in zip(writes, applied, strict=True) if ok}

    # -- tasks -----------------------------------------------------------------------------

    async def insert_tasks(self, tasks: Sequence[Task]) -> None:
        rows = await sliced_map(_insert_params, tasks)
        if rows:
            await self._run(len(rows), lambda: self._many(INSERT_TASK, rows))

    async def tasks(self, task_ids: Collection[str]) -> dict[str, Task]:
        if not task_ids:
            return {}
        if len(task_ids) == 1:
            (task_id,) = task_ids
            row = self._one(SELECT_TASK, (task_id,))
            return {} if row is None else {task_id: task_from_row(row)}
        rows = await self._run(len(task_ids), lambda: self._all(SELECT_TASKS, (_keys(task_ids),)))
        return {task.id: task for task in await sliced_map(task_from_row, rows)}

    async def tasks_of_steps(self, keys: Collection[StepKey]) -> list[Task]:
        if not keys:
            return []
        rows = self._all(SELECT_TASKS_OF_STEPS, (_keys(keys),))
        return await sliced_map(task_from_row, rows)

    async def unfinished_tasks(self, run_id: str, step: str | None = None) -> list[Task]:
        if step is None:
            rows = await self._commits.offload(
                lambda: self._all(SELECT_UNFINISHED_OF_RUN, (run_id,))
            )
        else:
            rows = self._all(SELECT_UNFINISHED_OF_STEP, (run_id, step))
        return await sliced_map(task_from_row, rows)

    async def write_tasks(self, writes: Sequence[TaskWrite]) -> set[str]:
        rows = await sliced_map(_write_params, writes)
        if not rows:
            return set()
        applied = await self._run(len(rows), lambda: self._conditional(UPDATE_TASK, rows))
        return {write.task.id for write, ok in zip(writes, applied, strict=True) if ok}

    # -- callbacks -------------------------------------------------------------------------

    async def insert_callback_tokens(self, tokens: Sequence[CallbackToken]) -> None:
        rows = [(token.token_hash, token.task_id, token.attempt) for token in tokens]
        if rows:
            await self._run(len(rows), lambda: self._many(INSERT_CAPABILITY, rows))

    async def receipts(self, keys: Collection[ReceiptKey]) -> dict[ReceiptKey, str]:
        if not keys:
            return {}
        rows = self._keyed(SELECT_RECEIPT, SELECT_RECEIPTS, keys)
        return {(row[0], row[1]): str(row[2]) for row in rows}

    async def insert_receipts(self, receipts: Sequence[Receipt]) -> None:
        rows = [(r.task_id, r.webhook_id, r.body_hash, r.at) for r in receipts]
        if rows:
            self._many(INSERT_RECEIPT, rows)

    async def insert_meta(self, key: str, value: str) -> None:
        """Set `key` unless it is already set (first writer wins across replicas)."""
        self._conn.execute(INSERT_META, (key, value))

    # -- replicas ----------------------------------------------------------------------------

    async def lock_runs(self, run_ids: Collection[str]) -> dict[str, Run]:
        return await self.runs(run_ids)  # SQLite's write lock is already held

    async def lane_loads(
        self, lanes: Collection[Lane], since: Mapping[Lane, float]
    ) -> dict[Lane, LaneLoad]:
        wanted = list(dict.fromkeys(lanes))  # SQLite's write lock is already held
        if not wanted:
            return {}
        rows = self._conn.execute(LANES_IN_FLIGHT, (_keys(wanted),)).fetchall()
        in_flight = {(row[0], row[1]): int(row[2]) for row in rows}
        started = []
        if since:
            params = (min(since.values()), _keys(list(since)))
            started = [
                (row[0], row[1], float(row[2]))
                for row in self._conn.execute(LANES_STARTED, params).fetchall()
            ]
        return lane_loads_of(wanted, in_flight, started, since)

    async def save_replica(self, replica_id: str, started_at: float, lease_until: float) -> None:
        self._conn.execute(UPSERT_REPLICA, (replica_id, started_at, lease_until))

    async def drop_replica(self, replica_id: str, expired_before: float) -> bool:
        params = (replica_id, expired_before)
        return self._conn.execute(DELETE_EXPIRED_REPLICA, params).rowcount == 1

    async def owned_tasks(self, owners: Collection[str | None]) -> list[Task]:
        named = [owner for owner in owners if owner is not None]
        params = (_keys(named), None in owners)
        rows = await self._run(OFFLOAD_ROWS + 1, lambda: self._all(SELECT_OWNED_TASKS, params))
        return await sliced_map(task_from_row, rows)

    def notify(self, topic: str, payload: str) -> None:
        """One process per SQLite file: nobody to tell."""

    # -- history ---------------------------------------------------------------------------

    async def append_history(self, entries: Iterable[HistoryEntry]) -> list[HistoryEntry]:
        batch = list(entries)
        if not batch:
            return []
        rows = await sliced_map(_history_params, batch)

        def insert() -> int:
            if len(rows) == 1:  # one statement for one entry
                (first,) = self._conn.execute(INSERT_HISTORY_RETURNING, rows[0]).fetchone()
                return int(first)
            self._conn.executemany(INSERT_HISTORY, rows)
            # This transaction holds SQLite's one write lock, so AUTOINCREMENT gave the batch
            # consecutive ids ending at last_insert_rowid(): two statements for any batch.
            row = self._one(SELECT_LAST_ID, ())
            assert row is not None  # noqa: S101 - the query always yields a row
            return int(row[0]) - len(batch) + 1

        first = await self._run(len(rows), insert)
        numbered = list(enumerate(batch, first))
        return await sliced_map(_numbered, numbered)


def _insert_params(task: Task) -> tuple[Any, ...]:
    return (
        task.id,
        task.run_id,
        task.step,
        task.item_key,
        dumps(task.item),
        *task_state_params(task),
    )


def _write_params(write: TaskWrite) -> tuple[Any, ...]:
    task = write.task
    return (*task_state_params(task), task.id, write.expected_state.value, write.expected_attempt)


def _history_params(entry: HistoryEntry) -> tuple[Any, ...]:
    return (entry.at, entry.type, entry.run_id, entry.task_id, entry.step, dumps(entry.data))


def _numbered(numbered: tuple[int, HistoryEntry]) -> HistoryEntry:
    number, entry = numbered
    return replace(entry, id=number)
