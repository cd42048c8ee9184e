"""SqliteStore: the embedded default store, one SQLite file in WAL mode.

The writer's logical transactions are committed in groups (group_commit.py) and speak
batches (sqlite_tx.py); reads outside transactions are here.
"""

from __future__ import annotations

import asyncio
import secrets
import sqlite3
import time
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiosqlite

from orchestrator.barrier import Barrier
from orchestrator.ids import time_floor
from orchestrator.records import Event, HistoryEntry, Run, Task
from orchestrator.states import RunState
from orchestrator.store.base import (
    NoticeFn,
    Page,
    RejectionCount,
    StoreUnavailable,
    Unfinished,
    page_of,
)
from orchestrator.store.group_commit import BUSY_TIMEOUT, GroupCommit
from orchestrator.store.rows import (
    barrier_from_row,
    dumps,
    event_from_row,
    history_from_row,
    run_from_row,
    task_from_row,
)
from orchestrator.store.sqlite_schema import MIGRATIONS, statements
from orchestrator.store.sqlite_tx import SqliteTx
from orchestrator.store.sqlite_waits import SqliteWaitsStore

# The batch statements read their keys with the JSON ->> operator (SQLite 3.38).
MIN_SQLITE = (3, 38, 0)

SELECT_RUN = "SELECT * FROM runs WHERE id = ?"
SELECT_REPLICAS = "SELECT id, lease_until FROM replicas"
SELECT_RUNS_OF_EVENT = "SELECT * FROM runs WHERE event_id = ? ORDER BY id"
SELECT_EVENT = "SELECT * FROM events WHERE id = ?"
SELECT_TASK = "SELECT * FROM tasks WHERE id = ?"
SELECT_TASKS_OF_RUN = "SELECT * FROM tasks WHERE run_id = ? ORDER BY rowid"
SELECT_BARRIERS_OF_RUN = "SELECT * FROM barriers WHERE run_id = ? ORDER BY rowid"
SELECT_CALLBACK_TARGET = """
    SELECT tasks.*, callback_tokens.attempt AS token_attempt
    FROM callback_tokens JOIN tasks ON tasks.id = callback_tokens.task_id
    WHERE callback_tokens.token_hash = ?
"""
SELECT_META = "SELECT value FROM meta WHERE key = ?"
SELECT_LAST_CRON_FIRE = """
    SELECT max(dedup_key) FROM events
    WHERE trigger = ? AND dedup_key GLOB '[0-9][0-9][0-9][0-9]-[0-9][0-9]-[0-9][0-9]T*Z'
"""
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
UPSERT_REJECTION = """
    INSERT INTO rejections (minute, route, reason, count, first_at, last_at, sample)
    VALUES (?, ?, ?, ?, ?, ?, ?)
    ON CONFLICT (minute, route, reason) DO UPDATE SET
        count = count + excluded.count,
        first_at = min(first_at, excluded.first_at),
        last_at = max(last_at, excluded.last_at)
"""
SELECT_REJECTIONS = """
    SELECT * FROM rejections WHERE minute >= ? ORDER BY minute, route, reason LIMIT ?
"""
PRUNE_UNATTACHED_HISTORY = """
    DELETE FROM history WHERE id IN (
        SELECT id FROM history WHERE run_id IS NULL AND at < ? ORDER BY at LIMIT ?)
"""
PRUNE_REJECTIONS = """
    DELETE FROM rejections WHERE (minute, route, reason) IN (
        SELECT minute, route, reason FROM rejections WHERE minute < ? ORDER BY minute LIMIT ?)
"""
UPSERT_PROBE = """
    INSERT INTO meta (key, value) VALUES ('ready_probe', ?)
    ON CONFLICT (key) DO UPDATE SET value = excluded.value
"""
SELECT_WAITING_BARRIERS = """
    SELECT barriers.* FROM barriers JOIN runs ON runs.id = barriers.run_id
    WHERE barriers.status = 'waiting' AND runs.status = 'running'
"""


def sqlite_path(url: str) -> str:
    """The file path in `sqlite:///relative.db` or `sqlite:////absolute.db`."""
    prefix = "sqlite:///"
    if not url.startswith(prefix) or len(url) == len(prefix):
        raise ValueError(f"expected a URL such as sqlite:///orchestrator.db, got {url!r}")
    return url[len(prefix) :]


class SqliteStore(SqliteWaitsStore):
    """The Store protocol on one SQLite file.

    Three connections: the writer, whose logical transactions are committed in groups
    (group_commit.py); a point reader for the primary-key lookups on the callback path,
    run on the event loop (microseconds each); and an aiosqlite reader for the admin's
    range queries, which may be long and so run in aiosqlite's thread.

    One process serves a SQLite file: replicas share a PostgreSQL store instead.
    """

    shared = False

    def __init__(
        self, path: str | Path, synchronous: str = "FULL", busy_timeout: float = BUSY_TIMEOUT
    ) -> None:
        self.path = str(path)
        self._synchronous = synchronous
        self._busy_timeout = busy_timeout
        self._writer: sqlite3.Connection | None = None
        self._point: sqlite3.Connection | None = None
        self._reader: aiosqlite.Connection | None = None
        self._commits: GroupCommit | None = None

    @classmethod
    def from_url(cls, url: str) -> SqliteStore:
        return cls(sqlite_path(url))

    async def open(self) -> None:
        if sqlite3.sqlite_version_info < MIN_SQLITE:
            needed = ".".join(map(str, MIN_SQLITE))
            raise StoreUnavailable(
                f"SQLite {sqlite3.sqlite_version} is too old: the store needs {needed} or newer"
            )
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
        self._commits = GroupCommit(self._writer, busy_timeout=self._busy_timeout)

    def _pragmas(self) -> list[str]:
        return [
            "PRAGMA foreign_keys = ON",
            f"PRAGMA busy_timeout = {max(1, round(self._busy_timeout * 1000))}",
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
                for statement in statements(script):
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
                yield SqliteTx(conn, self._commits)
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
        return page_of(rows, limit, run_from_row, lambda run: run.id)

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

    async def _sweep(self, work: Callable[[sqlite3.Connection], int]) -> int:
        """One batch of a retention sweep: its own transaction, its statements in the
        connection's thread (they touch thousands of rows; the loop keeps serving)."""
        commits = self._commits
        if commits is None:
            raise StoreUnavailable("the store is not open")
        try:
            async with commits.transaction() as conn:
                return await commits.offload(lambda: work(conn))
        except sqlite3.OperationalError as error:
            raise StoreUnavailable(str(error)) from error

    async def prune_task_history(self, before: float, limit: int) -> int:
        return await self._sweep(
            lambda db: db.execute(PRUNE_TASK_HISTORY, (before, limit)).rowcount
        )

    async def prune_payloads(self, before: float, limit: int) -> int:
        def prune(db: sqlite3.Connection) -> int:
            tasks = db.execute(PRUNE_TASK_PAYLOADS, (before, limit)).rowcount
            return tasks + db.execute(PRUNE_EVENT_PAYLOADS, (before, before, limit)).rowcount

        return await self._sweep(prune)

    async def prune_runs(self, before: float, limit: int) -> int:
        def prune(db: sqlite3.Connection) -> int:
            run_ids = [(row[0],) for row in db.execute(SELECT_EXPIRED_RUNS, (before, limit))]
            for statement in DELETE_RUN_PARTS:
                db.executemany(statement, run_ids)
            # Delivery ids go with their last run, and never before the runs' own age.
            db.execute(DELETE_ORPHAN_EVENTS, (before,))
            return len(run_ids)

        return await self._sweep(prune)

    async def prune_unattached(self, before: float, limit: int) -> int:
        def prune(db: sqlite3.Connection) -> int:
            history = db.execute(PRUNE_UNATTACHED_HISTORY, (before, limit)).rowcount
            return history + db.execute(PRUNE_REJECTIONS, (before, limit)).rowcount

        return await self._sweep(prune)

    async def _write(self, work: Callable[[sqlite3.Connection], object], wait: float) -> None:
        """A few rows' write in its own transaction, on the loop; StoreUnavailable if the
        transaction cannot start within `wait` seconds."""
        commits = self._commits
        if commits is None:
            raise StoreUnavailable("the store is not open")
        try:
            async with commits.transaction(wait) as conn:
                work(conn)
        except sqlite3.OperationalError as error:
            raise StoreUnavailable(str(error)) from error

    async def add_rejections(self, counts: Sequence[RejectionCount]) -> None:
        rows = [
            (c.minute, c.route, c.reason, c.count, c.first_at, c.last_at, dumps(c.sample))
            for c in counts
        ]
        if rows:
            await self._write(lambda db: db.executemany(UPSERT_REJECTION, rows), self._busy_timeout)

    async def rejections(self, *, since: float = 0.0, limit: int = 1000) -> list[RejectionCount]:
        rows = await self._rows(SELECT_REJECTIONS, (since, max(1, limit)))
        return [RejectionCount.from_row(row) for row in rows]

    async def probe_write(self, within: float) -> None:
        try:
            async with asyncio.timeout(within):
                await self._write(lambda db: db.execute(UPSERT_PROBE, (repr(time.time()),)), within)
        except TimeoutError:
            raise StoreUnavailable(f"no write committed within {within:g} s") from None

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

    async def replicas(self) -> dict[str, float]:
        rows = await self._rows(SELECT_REPLICAS, ())
        return {row[0]: float(row[1]) for row in rows}

    async def listen(self, on_notice: NoticeFn) -> None:
        """One process per SQLite file: nothing to hear."""

    async def deadlines_before(self, until: float) -> list[Task]:
        return [task_from_row(row) for row in await self._rows(SELECT_DEADLINES_BEFORE, (until,))]

    async def next_deadline(self, after: float) -> float | None:
        rows = list(await self._rows(SELECT_NEXT_DEADLINE, (after,)))
        return None if not rows or rows[0][0] is None else float(rows[0][0])

    async def unfinished(self) -> Unfinished:
        tasks = [task_from_row(row) for row in await self._rows(SELECT_UNFINISHED_TASKS, ())]
        barriers = [barrier_from_row(row) for row in await self._rows(SELECT_WAITING_BARRIERS, ())]
        return Unfinished(tasks, barriers)
