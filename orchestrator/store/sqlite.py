"""SqliteStore: the embedded default store, on aiosqlite in WAL mode.

One write connection runs transactions one at a time (SQLite has a single writer anyway);
a second connection serves reads, which WAL lets run beside a write.
"""

from __future__ import annotations

import asyncio
import functools
import json
import secrets
import sqlite3
from collections.abc import AsyncIterator, Iterable, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiosqlite

from orchestrator.barrier import Barrier, BarrierStatus
from orchestrator.ids import time_floor
from orchestrator.model import JoinPolicy
from orchestrator.records import Event, HistoryEntry, Run, Task
from orchestrator.states import RunState, TaskState
from orchestrator.store.base import Page, StoreUnavailable, Unfinished
from orchestrator.store.group_commit import GroupCommit

MIGRATIONS: list[str] = [
    # 1: the initial schema.
    """
    CREATE TABLE events (
        id TEXT PRIMARY KEY,
        trigger TEXT NOT NULL,
        workflow TEXT NOT NULL,
        received_at REAL NOT NULL,
        payload TEXT NOT NULL,
        dedup_key TEXT,
        UNIQUE (trigger, dedup_key)
    );
    CREATE TABLE runs (
        id TEXT PRIMARY KEY,
        workflow TEXT NOT NULL,
        event_id TEXT NOT NULL REFERENCES events (id),
        status TEXT NOT NULL,
        created_at REAL NOT NULL,
        finished_at REAL,
        spec TEXT NOT NULL
    );
    CREATE INDEX runs_by_workflow ON runs (workflow, id);
    CREATE INDEX runs_by_status ON runs (status, id);
    CREATE INDEX runs_by_event ON runs (event_id);
    CREATE TABLE barriers (
        run_id TEXT NOT NULL REFERENCES runs (id),
        step TEXT NOT NULL,
        expected INTEGER NOT NULL,
        required INTEGER NOT NULL,
        succeeded INTEGER NOT NULL,
        failed INTEGER NOT NULL,
        status TEXT NOT NULL,
        policy TEXT NOT NULL,
        deadline_at REAL,
        decided_at REAL,
        reason TEXT,
        PRIMARY KEY (run_id, step)
    );
    CREATE INDEX barriers_waiting ON barriers (status) WHERE status = 'waiting';
    CREATE TABLE tasks (
        id TEXT PRIMARY KEY,
        run_id TEXT NOT NULL REFERENCES runs (id),
        step TEXT NOT NULL,
        item_key TEXT NOT NULL,
        item TEXT NOT NULL,
        state TEXT NOT NULL,
        attempt INTEGER NOT NULL,
        due_at REAL,
        started_at REAL,
        finished_at REAL,
        output TEXT,
        error TEXT,
        UNIQUE (run_id, step, item_key)
    );
    CREATE INDEX tasks_unfinished ON tasks (state) WHERE state IN ('pending', 'dispatched');
    CREATE TABLE history (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        at REAL NOT NULL,
        type TEXT NOT NULL,
        run_id TEXT,
        task_id TEXT,
        step TEXT,
        data TEXT NOT NULL
    );
    CREATE INDEX history_by_run ON history (run_id, id);
    CREATE INDEX history_by_type ON history (type, id);
    CREATE INDEX history_by_task ON history (task_id, id);
    """,
    # 2: completion callbacks - tokens per attempt, receipts per webhook-id, a server key.
    """
    ALTER TABLE tasks ADD COLUMN awaiting INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE tasks ADD COLUMN dispatch_tries INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE tasks ADD COLUMN wait_window REAL;
    CREATE TABLE callback_tokens (
        token_hash TEXT PRIMARY KEY,
        task_id TEXT NOT NULL REFERENCES tasks (id),
        attempt INTEGER NOT NULL
    );
    CREATE TABLE callback_receipts (
        task_id TEXT NOT NULL REFERENCES tasks (id),
        webhook_id TEXT NOT NULL,
        body_hash TEXT NOT NULL,
        received_at REAL NOT NULL,
        PRIMARY KEY (task_id, webhook_id)
    );
    CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
    """,
    # 3: deadlines far ahead stay in the store; the dispatcher reads them a window at a time.
    """
    CREATE INDEX tasks_deadlines ON tasks (due_at) WHERE state = 'dispatched';
    """,
    # 4: retention sweeps start from what expired, never scanning history or tasks.
    """
    CREATE INDEX runs_finished ON runs (finished_at) WHERE status != 'running';
    CREATE INDEX events_by_time ON events (received_at);
    """,
]

SELECT_EVENT = "SELECT * FROM events WHERE id = ?"
SELECT_EVENT_BY_DEDUP = "SELECT * FROM events WHERE trigger = ? AND dedup_key = ?"
INSERT_EVENT = """
    INSERT INTO events (id, trigger, workflow, received_at, payload, dedup_key)
    VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (trigger, dedup_key) DO NOTHING
"""
INSERT_RUN = """
    INSERT INTO runs (id, workflow, event_id, status, created_at, finished_at, spec)
    VALUES (?, ?, ?, ?, ?, ?, ?)
"""
SELECT_RUN = "SELECT * FROM runs WHERE id = ?"
SELECT_RUNS_OF_EVENT = "SELECT * FROM runs WHERE event_id = ? ORDER BY id"
UPDATE_RUN_STATUS = "UPDATE runs SET status = ?, finished_at = ? WHERE id = ? AND status = ?"
INSERT_BARRIER = """
    INSERT INTO barriers (run_id, step, expected, required, succeeded, failed, status, policy,
                          deadline_at, decided_at, reason)
    VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
"""
SELECT_BARRIER = "SELECT * FROM barriers WHERE run_id = ? AND step = ?"
SELECT_BARRIERS_OF_RUN = "SELECT * FROM barriers WHERE run_id = ? ORDER BY rowid"
UPDATE_BARRIER = """
    UPDATE barriers SET expected = ?, required = ?, succeeded = ?, failed = ?, status = ?,
                        deadline_at = ?, decided_at = ?, reason = ?
    WHERE run_id = ? AND step = ? AND status = ?
"""
INSERT_TASK = """
    INSERT INTO tasks (id, run_id, step, item_key, item, state, attempt, due_at, started_at,
                       finished_at, output, error, awaiting, dispatch_tries, wait_window)
    VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
"""
SELECT_TASK = "SELECT * FROM tasks WHERE id = ?"
SELECT_TASKS_OF_RUN = "SELECT * FROM tasks WHERE run_id = ? ORDER BY rowid"
SELECT_TASKS_OF_STEP = "SELECT * FROM tasks WHERE run_id = ? AND step = ? ORDER BY rowid"
UPDATE_TASK = """
    UPDATE tasks SET state = ?, attempt = ?, due_at = ?, started_at = ?, finished_at = ?,
                     output = ?, error = ?, awaiting = ?, dispatch_tries = ?, wait_window = ?
    WHERE id = ? AND state = ? AND attempt = ?
"""
INSERT_CAPABILITY = """
    INSERT INTO callback_tokens (token_hash, task_id, attempt) VALUES (?, ?, ?)
    ON CONFLICT (token_hash) DO NOTHING
"""
SELECT_CALLBACK_TARGET = """
    SELECT tasks.*, callback_tokens.attempt AS token_attempt
    FROM callback_tokens JOIN tasks ON tasks.id = callback_tokens.task_id
    WHERE callback_tokens.token_hash = ?
"""
SELECT_RECEIPT = "SELECT body_hash FROM callback_receipts WHERE task_id = ? AND webhook_id = ?"
INSERT_RECEIPT = """
    INSERT INTO callback_receipts (task_id, webhook_id, body_hash, received_at) VALUES (?, ?, ?, ?)
"""
SELECT_META = "SELECT value FROM meta WHERE key = ?"
SELECT_LAST_CRON_FIRE = """
    SELECT max(dedup_key) FROM events
    WHERE trigger = ? AND dedup_key GLOB '[0-9][0-9][0-9][0-9]-[0-9][0-9]-[0-9][0-9]T*Z'
"""
INSERT_META = "INSERT INTO meta (key, value) VALUES (?, ?) ON CONFLICT (key) DO NOTHING"
INSERT_HISTORY = """
    INSERT INTO history (at, type, run_id, task_id, step, data) VALUES (?, ?, ?, ?, ?, ?)
"""
SELECT_LAST_ID = "SELECT last_insert_rowid()"
PRUNE_TASK_HISTORY = """
    DELETE FROM history WHERE id IN (
        SELECT history.id FROM runs CROSS JOIN history ON history.run_id = runs.id
        WHERE runs.status != 'running' AND runs.finished_at < ? AND history.task_id IS NOT NULL
        LIMIT ?)
"""
PRUNE_TASK_PAYLOADS = """
    UPDATE tasks SET item = 'null', output = NULL WHERE rowid IN (
        SELECT tasks.rowid FROM runs CROSS JOIN tasks ON tasks.run_id = runs.id
        WHERE runs.status != 'running' AND runs.finished_at < ?
          AND (tasks.output IS NOT NULL OR tasks.item != 'null')
        LIMIT ?)
"""
PRUNE_EVENT_PAYLOADS = """
    UPDATE events SET payload = '{}' WHERE id IN (
        SELECT events.id FROM events
        WHERE events.payload != '{}' AND events.received_at < ?
          AND NOT EXISTS (SELECT 1 FROM runs WHERE runs.event_id = events.id
                          AND (runs.status = 'running' OR runs.finished_at >= ?))
        LIMIT ?)
"""
SELECT_EXPIRED_RUNS = """
    SELECT id FROM runs WHERE status != 'running' AND finished_at < ? LIMIT ?
"""
DELETE_RUN_PARTS = [
    "DELETE FROM callback_receipts WHERE task_id IN (SELECT id FROM tasks WHERE run_id = ?)",
    "DELETE FROM callback_tokens WHERE task_id IN (SELECT id FROM tasks WHERE run_id = ?)",
    "DELETE FROM history WHERE run_id = ?",
    "DELETE FROM tasks WHERE run_id = ?",
    "DELETE FROM barriers WHERE run_id = ?",
    "DELETE FROM runs WHERE id = ?",
]
DELETE_ORPHAN_EVENTS = """
    DELETE FROM events WHERE received_at < ?
      AND NOT EXISTS (SELECT 1 FROM runs WHERE runs.event_id = events.id)
"""
SELECT_UNFINISHED_TASKS = """
    SELECT tasks.* FROM tasks JOIN runs ON runs.id = tasks.run_id
    WHERE tasks.state IN ('pending', 'dispatched') AND runs.status = 'running'
    ORDER BY tasks.rowid
"""
SELECT_DEADLINES_BEFORE = """
    SELECT tasks.* FROM tasks JOIN runs ON runs.id = tasks.run_id
    WHERE tasks.state = 'dispatched' AND tasks.due_at < ? AND runs.status = 'running'
    ORDER BY tasks.due_at
"""
SELECT_NEXT_DEADLINE = """
    SELECT min(tasks.due_at) FROM tasks JOIN runs ON runs.id = tasks.run_id
    WHERE tasks.state = 'dispatched' AND tasks.due_at >= ? AND runs.status = 'running'
"""
SELECT_WAITING_BARRIERS = """
    SELECT barriers.* FROM barriers JOIN runs ON runs.id = barriers.run_id
    WHERE barriers.status = 'waiting' AND runs.status = 'running'
"""


def _dumps(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"))


def _loads_or_none(text: str | None) -> Any:
    return None if text is None else json.loads(text)


def event_from_row(row: sqlite3.Row) -> Event:
    return Event(
        id=row["id"],
        trigger=row["trigger"],
        workflow=row["workflow"],
        received_at=row["received_at"],
        payload=json.loads(row["payload"]),
        dedup_key=row["dedup_key"],
    )


@functools.lru_cache(maxsize=256)
def _spec(text: str) -> Any:
    """A run's spec, parsed once: every completion reads its run, and specs never change."""
    return json.loads(text)


@functools.lru_cache(maxsize=256)
def _policy(text: str) -> JoinPolicy:
    return JoinPolicy.model_validate_json(text)


def run_from_row(row: sqlite3.Row) -> Run:
    return Run(
        id=row["id"],
        workflow=row["workflow"],
        event_id=row["event_id"],
        status=RunState(row["status"]),
        created_at=row["created_at"],
        finished_at=row["finished_at"],
        spec=_spec(row["spec"]),
    )


def barrier_from_row(row: sqlite3.Row) -> Barrier:
    return Barrier(
        run_id=row["run_id"],
        step=row["step"],
        expected=row["expected"],
        required=row["required"],
        succeeded=row["succeeded"],
        failed=row["failed"],
        status=BarrierStatus(row["status"]),
        policy=_policy(row["policy"]),
        deadline_at=row["deadline_at"],
        decided_at=row["decided_at"],
        reason=row["reason"],
    )


def task_from_row(row: sqlite3.Row) -> Task:
    return Task(
        id=row["id"],
        run_id=row["run_id"],
        step=row["step"],
        item_key=row["item_key"],
        item=json.loads(row["item"]),
        state=TaskState(row["state"]),
        attempt=row["attempt"],
        due_at=row["due_at"],
        started_at=row["started_at"],
        finished_at=row["finished_at"],
        output=_loads_or_none(row["output"]),
        error=row["error"],
        awaiting=bool(row["awaiting"]),
        dispatch_tries=row["dispatch_tries"],
        wait_window=row["wait_window"],
    )


def history_from_row(row: sqlite3.Row) -> HistoryEntry:
    return HistoryEntry(
        id=row["id"],
        at=row["at"],
        type=row["type"],
        run_id=row["run_id"],
        task_id=row["task_id"],
        step=row["step"],
        data=json.loads(row["data"]),
    )


def _task_params(task: Task) -> tuple[Any, ...]:
    output = None if task.output is None else _dumps(task.output)
    return (
        task.state.value,
        task.attempt,
        task.due_at,
        task.started_at,
        task.finished_at,
        output,
        task.error,
        int(task.awaiting),
        task.dispatch_tries,
        task.wait_window,
    )


def sqlite_path(url: str) -> str:
    """The file path in `sqlite:///relative.db` or `sqlite:////absolute.db`."""
    prefix = "sqlite:///"
    if not url.startswith(prefix) or len(url) == len(prefix):
        raise ValueError(f"expected a URL such as sqlite:///orchestrator.db, got {url!r}")
    return url[len(prefix) :]


class SqliteTx:
    """One logical write transaction. Its statements run on the calling thread: each takes
    microseconds, where a hop to a database thread would cost far more (group_commit.py)."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self._conn = conn

    def _one(self, sql: str, params: Sequence[Any]) -> sqlite3.Row | None:
        row: sqlite3.Row | None = self._conn.execute(sql, params).fetchone()
        return row

    def _all(self, sql: str, params: Sequence[Any]) -> list[sqlite3.Row]:
        return self._conn.execute(sql, params).fetchall()

    async def changed_rows(self, sql: str, params: Sequence[Any]) -> int:
        return self._conn.execute(sql, params).rowcount

    def _changed(self, sql: str, params: Sequence[Any]) -> bool:
        return self._conn.execute(sql, params).rowcount == 1

    async def insert_event(self, event: Event) -> tuple[Event, bool]:
        params = (
            event.id,
            event.trigger,
            event.workflow,
            event.received_at,
            _dumps(event.payload),
            event.dedup_key,
        )
        if self._changed(INSERT_EVENT, params):
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
                _dumps(run.spec),
            ),
        )

    async def get_run(self, run_id: str) -> Run | None:
        row = self._one(SELECT_RUN, (run_id,))
        return None if row is None else run_from_row(row)

    async def set_run_status(
        self, run_id: str, expected: RunState, new: RunState, at: float | None
    ) -> bool:
        return self._changed(UPDATE_RUN_STATUS, (new.value, at, run_id, expected.value))

    async def insert_barrier(self, barrier: Barrier) -> None:
        self._conn.execute(
            INSERT_BARRIER,
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
            ),
        )

    async def get_barrier(self, run_id: str, step: str) -> Barrier | None:
        row = self._one(SELECT_BARRIER, (run_id, step))
        return None if row is None else barrier_from_row(row)

    async def barriers_of_run(self, run_id: str) -> list[Barrier]:
        return [barrier_from_row(row) for row in self._all(SELECT_BARRIERS_OF_RUN, (run_id,))]

    async def save_barrier(self, barrier: Barrier, expected: BarrierStatus) -> bool:
        params = (
            barrier.expected,
            barrier.required,
            barrier.succeeded,
            barrier.failed,
            barrier.status.value,
            barrier.deadline_at,
            barrier.decided_at,
            barrier.reason,
            barrier.run_id,
            barrier.step,
            expected.value,
        )
        return self._changed(UPDATE_BARRIER, params)

    async def insert_tasks(self, tasks: Sequence[Task]) -> None:
        rows = [
            (task.id, task.run_id, task.step, task.item_key, _dumps(task.item), *_task_params(task))
            for task in tasks
        ]
        self._conn.executemany(INSERT_TASK, rows)

    async def get_task(self, task_id: str) -> Task | None:
        row = self._one(SELECT_TASK, (task_id,))
        return None if row is None else task_from_row(row)

    async def tasks_of_run(self, run_id: str, step: str | None = None) -> list[Task]:
        if step is None:
            rows = self._all(SELECT_TASKS_OF_RUN, (run_id,))
        else:
            rows = self._all(SELECT_TASKS_OF_STEP, (run_id, step))
        return [task_from_row(row) for row in rows]

    async def transition_task(
        self, task: Task, expected_state: TaskState, expected_attempt: int
    ) -> bool:
        params = (*_task_params(task), task.id, expected_state.value, expected_attempt)
        return self._changed(UPDATE_TASK, params)

    async def insert_callback_tokens(self, tokens: Sequence[tuple[str, str, int]]) -> None:
        self._conn.executemany(INSERT_CAPABILITY, tokens)

    async def insert_meta(self, key: str, value: str) -> None:
        """Set `key` unless it is already set (first writer wins across replicas)."""
        self._conn.execute(INSERT_META, (key, value))

    async def get_receipt(self, task_id: str, webhook_id: str) -> str | None:
        row = self._one(SELECT_RECEIPT, (task_id, webhook_id))
        return None if row is None else str(row[0])

    async def insert_receipt(
        self, task_id: str, webhook_id: str, body_hash: str, at: float
    ) -> None:
        self._conn.execute(INSERT_RECEIPT, (task_id, webhook_id, body_hash, at))

    async def append_history(self, entries: Iterable[HistoryEntry]) -> list[HistoryEntry]:
        batch = list(entries)
        if not batch:
            return []
        rows = [
            (entry.at, entry.type, entry.run_id, entry.task_id, entry.step, _dumps(entry.data))
            for entry in batch
        ]
        self._conn.executemany(INSERT_HISTORY, rows)
        # This transaction holds SQLite's one write lock, so AUTOINCREMENT gave the batch
        # consecutive ids ending at last_insert_rowid(): two round trips for any batch size.
        row = self._one(SELECT_LAST_ID, ())
        assert row is not None  # noqa: S101 - the query always yields a row
        first = row[0] - len(batch) + 1
        return [
            HistoryEntry(
                id=first + offset,
                at=entry.at,
                type=entry.type,
                run_id=entry.run_id,
                task_id=entry.task_id,
                step=entry.step,
                data=entry.data,
            )
            for offset, entry in enumerate(batch)
        ]


class SqliteStore:
    """The Store protocol on one SQLite file.

    Three connections: the writer, whose logical transactions are committed in groups
    (group_commit.py); a point reader for the primary-key lookups on the callback path,
    run on the event loop (microseconds each); and an aiosqlite reader for the admin's
    range queries, which may be long and so run in aiosqlite's thread.
    """

    def __init__(self, path: str | Path, synchronous: str = "FULL") -> None:
        self.path = str(path)
        self._synchronous = synchronous
        self._writer: sqlite3.Connection | None = None
        self._point: sqlite3.Connection | None = None
        self._reader: aiosqlite.Connection | None = None
        self._commits: GroupCommit | None = None

    @classmethod
    def from_url(cls, url: str) -> SqliteStore:
        return cls(sqlite_path(url))

    async def open(self) -> None:
        Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        try:
            # Migrating may wait on another process's write lock: not on the event loop.
            self._writer = await asyncio.to_thread(self._open_writer)
            self._point = self._sync_connection()
            self._reader = await aiosqlite.connect(self.path, isolation_level=None)
            self._reader.row_factory = sqlite3.Row
            for pragma in self._pragmas():
                await self._reader.execute(pragma)
        except BaseException:
            await self.close()
            raise
        self._commits = GroupCommit(self._writer)

    def _pragmas(self) -> list[str]:
        return [
            "PRAGMA foreign_keys = ON",
            "PRAGMA busy_timeout = 5000",
            f"PRAGMA synchronous = {self._synchronous}",
        ]

    def _sync_connection(self) -> sqlite3.Connection:
        # Used from the event loop and the commit thread, never from two at once.
        db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        db.row_factory = sqlite3.Row
        for pragma in self._pragmas():
            db.execute(pragma)
        return db

    def _open_writer(self) -> sqlite3.Connection:
        db = self._sync_connection()
        try:
            db.execute("PRAGMA journal_mode = WAL")
            self._migrate(db)
        except BaseException:
            db.close()
            raise
        return db

    def _migrate(self, db: sqlite3.Connection) -> None:
        db.execute("BEGIN IMMEDIATE")
        try:
            db.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
            rows = db.execute("SELECT version FROM schema_version").fetchall()
            current = rows[0][0] if rows else 0
            if current > len(MIGRATIONS):
                raise RuntimeError(
                    f"{self.path} has schema version {current}; this orchestrator knows up to "
                    f"{len(MIGRATIONS)}: upgrade the orchestrator"
                )
            for script in MIGRATIONS[current:]:
                for statement in _statements(script):
                    db.execute(statement)
            db.execute("DELETE FROM schema_version")
            db.execute("INSERT INTO schema_version VALUES (?)", (len(MIGRATIONS),))
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise

    async def close(self) -> None:
        commits, self._commits = self._commits, None
        if commits is not None:
            await commits.close()
        if self._reader is not None:
            await self._reader.close()
        for db in (self._point, self._writer):
            if db is not None:
                db.close()
        self._reader = self._point = self._writer = None

    @property
    def reader(self) -> aiosqlite.Connection:
        if self._reader is None:
            raise StoreUnavailable("the store is not open")
        return self._reader

    def _lookup(self, sql: str, params: Sequence[Any]) -> sqlite3.Row | None:
        """A primary-key read on the event loop: cheaper than any thread hop."""
        if self._point is None:
            raise StoreUnavailable("the store is not open")
        try:
            row: sqlite3.Row | None = self._point.execute(sql, params).fetchone()
        except sqlite3.OperationalError as error:
            raise StoreUnavailable(str(error)) from error
        return row

    async def ping(self) -> None:
        try:
            await self.reader.execute_fetchall("SELECT 1")
        except (sqlite3.Error, ValueError) as error:
            raise StoreUnavailable(str(error)) from error

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[SqliteTx]:
        if self._commits is None:
            raise StoreUnavailable("the store is not open")
        try:
            async with self._commits.transaction() as conn:
                yield SqliteTx(conn)
        except sqlite3.OperationalError as error:
            # Locked, busy, disk full: a temporary problem that callers answer with 503.
            raise StoreUnavailable(str(error)) from error

    @property
    def commit_stats(self) -> tuple[int, int]:
        """(logical transactions, SQLite commits) so far: how well commits are grouped."""
        commits = self._commits
        return (0, 0) if commits is None else (commits.transactions, commits.groups)

    async def _rows(self, sql: str, params: Sequence[Any]) -> Iterable[sqlite3.Row]:
        return await self.reader.execute_fetchall(sql, params)

    async def get_run(self, run_id: str) -> Run | None:
        row = self._lookup(SELECT_RUN, (run_id,))
        return None if row is None else run_from_row(row)

    async def runs_of_event(self, event_id: str) -> list[Run]:
        return [run_from_row(row) for row in await self._rows(SELECT_RUNS_OF_EVENT, (event_id,))]

    async def get_event(self, event_id: str) -> Event | None:
        row = self._lookup(SELECT_EVENT, (event_id,))
        return None if row is None else event_from_row(row)

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
        clauses, params = ["1 = 1"], list[Any]()
        # Ids sort by creation time, so a time window is a range of the primary key.
        if since is not None:
            clauses.append("id >= ?")
            params.append(time_floor("run", since))
        if until is not None:
            clauses.append("id < ?")
            params.append(time_floor("run", until))
        if workflow is not None:
            clauses.append("workflow = ?")
            params.append(workflow)
        if status is not None:
            clauses.append("status = ?")
            params.append(status.value)
        if cursor is not None:
            clauses.append("id < ?")
            params.append(cursor)
        sql = f"SELECT * FROM runs WHERE {' AND '.join(clauses)} ORDER BY id DESC LIMIT ?"  # noqa: S608 - clauses are fixed strings
        limit = max(1, limit)
        rows = list(await self._rows(sql, [*params, limit + 1]))
        runs = [run_from_row(row) for row in rows[:limit]]
        next_cursor = runs[-1].id if len(rows) > limit else None
        return Page(runs, next_cursor)

    async def tasks_of_run(self, run_id: str) -> list[Task]:
        return [task_from_row(row) for row in await self._rows(SELECT_TASKS_OF_RUN, (run_id,))]

    async def barriers_of_run(self, run_id: str) -> list[Barrier]:
        return [
            barrier_from_row(row) for row in await self._rows(SELECT_BARRIERS_OF_RUN, (run_id,))
        ]

    async def get_task(self, task_id: str) -> Task | None:
        row = self._lookup(SELECT_TASK, (task_id,))
        return None if row is None else task_from_row(row)

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
        clauses, params = ["id > ?"], list[Any]([after])
        if task_id is not None:
            clauses.append("task_id = ?")
            params.append(task_id)
        if since is not None:
            clauses.append("at >= ?")
            params.append(since)
        if run_id is not None:
            clauses.append("run_id = ?")
            params.append(run_id)
        if types is not None:
            clauses.append(f"type IN ({', '.join('?' * len(types))})")
            params.extend(types)
        sql = f"SELECT * FROM history WHERE {' AND '.join(clauses)} ORDER BY id LIMIT ?"  # noqa: S608 - clauses are fixed strings
        return [history_from_row(row) for row in await self._rows(sql, [*params, limit])]

    async def prune_task_history(self, before: float, limit: int) -> int:
        async with self.transaction() as tx:
            return await tx.changed_rows(PRUNE_TASK_HISTORY, (before, limit))

    async def prune_payloads(self, before: float, limit: int) -> int:
        async with self.transaction() as tx:
            tasks = await tx.changed_rows(PRUNE_TASK_PAYLOADS, (before, limit))
            events = await tx.changed_rows(PRUNE_EVENT_PAYLOADS, (before, before, limit))
        return tasks + events

    async def prune_runs(self, before: float, limit: int) -> int:
        async with self.transaction() as tx:
            run_ids = [row[0] for row in tx._all(SELECT_EXPIRED_RUNS, (before, limit))]
            for run_id in run_ids:
                for statement in DELETE_RUN_PARTS:
                    await tx.changed_rows(statement, (run_id,))
            # Delivery ids go with their last run, and never before the runs' own age.
            await tx.changed_rows(DELETE_ORPHAN_EVENTS, (before,))
        return len(run_ids)

    async def callback_target(self, token_hash: str) -> tuple[Task, int] | None:
        row = self._lookup(SELECT_CALLBACK_TARGET, (token_hash,))
        return None if row is None else (task_from_row(row), row["token_attempt"])

    async def last_cron_fire(self, trigger: str) -> str | None:
        rows = list(await self._rows(SELECT_LAST_CRON_FIRE, (trigger,)))
        return rows[0][0] if rows else None

    async def server_key(self) -> bytes:
        rows = list(await self._rows(SELECT_META, ("server_key",)))
        if not rows:
            async with self.transaction() as tx:
                await tx.insert_meta("server_key", secrets.token_hex(32))
            rows = list(await self._rows(SELECT_META, ("server_key",)))
        return bytes.fromhex(rows[0][0])

    async def deadlines_before(self, until: float) -> list[Task]:
        return [task_from_row(row) for row in await self._rows(SELECT_DEADLINES_BEFORE, (until,))]

    async def next_deadline(self, after: float) -> float | None:
        rows = list(await self._rows(SELECT_NEXT_DEADLINE, (after,)))
        return None if not rows or rows[0][0] is None else float(rows[0][0])

    async def unfinished(self) -> Unfinished:
        tasks = [task_from_row(row) for row in await self._rows(SELECT_UNFINISHED_TASKS, ())]
        barriers = [barrier_from_row(row) for row in await self._rows(SELECT_WAITING_BARRIERS, ())]
        return Unfinished(tasks, barriers)


def _statements(script: str) -> list[str]:
    return [statement.strip() for statement in script.split(";") if statement.strip()]
