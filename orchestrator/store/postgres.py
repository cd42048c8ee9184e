"""PostgresStore: the Store protocol on PostgreSQL, shared by several replicas.

A pool of connections (asyncpg) serves transactions (postgres_tx.py) and the reads here,
which run outside any transaction and see what has committed. Every driver or network
error reaches callers as StoreUnavailable (the 503 kind) or StoreConflict (try the whole
transaction again); no message carries the URL's password.
"""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any

import asyncpg

from orchestrator.barrier import Barrier
from orchestrator.ids import time_floor
from orchestrator.records import Event, HistoryEntry, Run, Task
from orchestrator.states import RunState
from orchestrator.store.base import NoticeFn, Page, StoreUnavailable, Unfinished, page_of
from orchestrator.store.postgres_driver import UNAVAILABLE, describe, translating
from orchestrator.store.postgres_notices import Listener, channel_of
from orchestrator.store.postgres_schema import migrate
from orchestrator.store.postgres_tx import PostgresTx
from orchestrator.store.postgres_upkeep import Upkeep
from orchestrator.store.postgres_url import redact, scrub
from orchestrator.store.postgres_waits import PostgresWaitsStore
from orchestrator.store.rows import (
    barrier_from_row,
    event_from_row,
    history_from_row,
    run_from_row,
    task_from_row,
)

# How long ping() waits for a connection and its answer: readiness must answer quickly.
PING_TIMEOUT = 5.0

SELECT_RUN = "SELECT * FROM runs WHERE id = $1"
SELECT_REPLICAS = "SELECT id, lease_until FROM replicas"
SELECT_RUNS_OF_EVENT = "SELECT * FROM runs WHERE event_id = $1 ORDER BY id"
SELECT_EVENT = "SELECT * FROM events WHERE id = $1"
SELECT_TASK = "SELECT * FROM tasks WHERE id = $1"
SELECT_TASKS_OF_RUN = "SELECT * FROM tasks WHERE run_id = $1 ORDER BY seq"
SELECT_BARRIERS_OF_RUN = "SELECT * FROM barriers WHERE run_id = $1 ORDER BY seq"
SELECT_CALLBACK_TARGET = """
    SELECT tasks.*, callback_tokens.attempt AS token_attempt
    FROM callback_tokens JOIN tasks ON tasks.id = callback_tokens.task_id
    WHERE callback_tokens.token_hash = $1
"""
SELECT_META = "SELECT value FROM meta WHERE key = $1"
# The same keys as SQLite's GLOB '[0-9][0-9][0-9][0-9]-[0-9][0-9]-[0-9][0-9]T*Z'.
SELECT_LAST_CRON_FIRE = """
    SELECT max(dedup_key) FROM events
    WHERE trigger = $1 AND dedup_key ~ '^[0-9]{4}-[0-9]{2}-[0-9]{2}T.*Z$'
"""
SELECT_UNFINISHED_TASKS = """
    SELECT tasks.* FROM tasks JOIN runs ON runs.id = tasks.run_id
    WHERE tasks.state IN ('pending', 'dispatched') AND runs.status = 'running'
    ORDER BY tasks.seq
"""
SELECT_DEADLINES_BEFORE = """
    SELECT tasks.* FROM tasks JOIN runs ON runs.id = tasks.run_id
    WHERE tasks.state = 'dispatched' AND tasks.due_at < $1 AND runs.status = 'running'
    ORDER BY tasks.due_at
"""
SELECT_NEXT_DEADLINE = """
    SELECT min(tasks.due_at) FROM tasks JOIN runs ON runs.id = tasks.run_id
    WHERE tasks.state = 'dispatched' AND tasks.due_at >= $1 AND runs.status = 'running'
"""
SELECT_WAITING_BARRIERS = """
    SELECT barriers.* FROM barriers JOIN runs ON runs.id = barriers.run_id
    WHERE barriers.status = 'waiting' AND runs.status = 'running'
    ORDER BY barriers.seq
"""


async def _keep_session(conn: asyncpg.Connection) -> None:
    """What a connection needs on its way back to the pool: nothing.

    asyncpg's default reset (unlisten, unlock, RESET ALL) is a round trip per release, and
    nothing here changes session state: locks are transaction-scoped, no SET, no LISTEN.
    An open transaction is still rolled back before this is called.
    """


class PostgresStore(PostgresWaitsStore, Upkeep):
    """The Store protocol on one PostgreSQL database, through a pool of connections: the
    store several replicas share."""

    shared = True

    def __init__(
        self, url: str, *, pool_min: int = 1, pool_max: int = 10, pool_timeout: float = 10.0
    ) -> None:
        self.url = url
        self._pool_min = pool_min
        self._pool_max = max(pool_min, pool_max)
        self._timeout = pool_timeout
        self._pool: asyncpg.Pool | None = None
        self._channel = "orchestrator"
        self._listener: Listener | None = None

    @property
    def where(self) -> str:
        """The database, as messages name it: its URL without the password."""
        return redact(self.url)

    async def open(self) -> None:
        try:
            pool = await asyncpg.create_pool(
                self.url,
                min_size=self._pool_min,
                max_size=self._pool_max,
                timeout=self._timeout,
                reset=_keep_session,
            )
        except UNAVAILABLE as error:
            cause = scrub(describe(error), self.url)
            raise StoreUnavailable(f"cannot connect to {self.where}: {cause}") from None
        except ValueError as error:  # a URL asyncpg cannot parse
            raise StoreUnavailable(f"{self.where}: {scrub(str(error), self.url)}") from None
        try:
            async with pool.acquire(timeout=self._timeout) as conn:
                with translating():
                    await migrate(conn, self.where)
        except asyncpg.PostgresError as error:  # not a passing problem: no rights, say
            await pool.close()
            raise StoreUnavailable(
                f"cannot migrate the schema of {self.where}: {describe(error)} (the user must "
                "be able to create tables in the database, or its schema on the search_path)"
            ) from None
        except BaseException:
            await pool.close()
            raise
        self._pool = pool
        with translating():
            async with pool.acquire(timeout=self._timeout) as conn:
                self._channel = channel_of(str(await conn.fetchval("SELECT current_schema()")))

    async def close(self) -> None:
        listener, self._listener = self._listener, None
        if listener is not None:
            await listener.close()
        pool, self._pool = self._pool, None
        if pool is not None:
            await pool.close()

    def _open_pool(self) -> asyncpg.Pool:
        if self._pool is None:
            raise StoreUnavailable("the store is not open")
        return self._pool

    async def ping(self) -> None:
        pool = self._open_pool()
        with translating():
            async with pool.acquire(timeout=PING_TIMEOUT) as conn:
                await conn.fetchval("SELECT 1", timeout=PING_TIMEOUT)

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[PostgresTx]:
        pool = self._open_pool()
        with translating():
            conn = await pool.acquire(timeout=self._timeout)
        try:
            started = conn.transaction()
            with translating():
                await started.start()
            tx = PostgresTx(conn, self._channel)
            try:
                yield tx
                await tx.send_notices()
            except BaseException:
                # The body's own error is the one to raise; a rollback that fails (the
                # connection is gone) has nothing to add, and the server rolls back anyway.
                try:
                    await started.rollback()
                except (*UNAVAILABLE, asyncpg.PostgresError):
                    pass
                raise
            with translating():
                await started.commit()
        finally:
            with translating():
                await pool.release(conn)

    # -- reads outside transactions ----------------------------------------------------------

    async def _fetch(self, sql: str, *args: Any) -> list[asyncpg.Record]:
        pool = self._open_pool()
        with translating():
            async with pool.acquire(timeout=self._timeout) as conn:
                return await conn.fetch(sql, *args)

    async def _fetchrow(self, sql: str, *args: Any) -> asyncpg.Record | None:
        rows = await self._fetch(sql, *args)
        return rows[0] if rows else None

    async def get_run(self, run_id: str) -> Run | None:
        row = await self._fetchrow(SELECT_RUN, run_id)
        return None if row is None else run_from_row(row)

    async def runs_of_event(self, event_id: str) -> list[Run]:
        return [run_from_row(row) for row in await self._fetch(SELECT_RUNS_OF_EVENT, event_id)]

    async def get_event(self, event_id: str) -> Event | None:
        row = await self._fetchrow(SELECT_EVENT, event_id)
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
        clauses, params = ["true"], list[Any]()

        def where(clause: str, value: Any) -> None:
            params.append(value)
            clauses.append(clause.format(f"${len(params)}"))

        # Ids sort by creation time, so a time window is a range of the primary key.
        if since is not None:
            where("id >= {}", time_floor("run", since))
        if until is not None:
            where("id < {}", time_floor("run", until))
        if workflow is not None:
            where("workflow = {}", workflow)
        if status is not None:
            where("status = {}", status.value)
        if cursor is not None:
            where("id < {}", cursor)
        limit = max(1, limit)
        params.append(limit + 1)
        sql = f"SELECT * FROM runs WHERE {' AND '.join(clauses)} ORDER BY id DESC LIMIT ${len(params)}"  # noqa: S608 - clauses are fixed strings
        return page_of(await self._fetch(sql, *params), limit, run_from_row, lambda run: run.id)

    async def tasks_of_run(self, run_id: str) -> list[Task]:
        return [task_from_row(row) for row in await self._fetch(SELECT_TASKS_OF_RUN, run_id)]

    async def barriers_of_run(self, run_id: str) -> list[Barrier]:
        return [barrier_from_row(row) for row in await self._fetch(SELECT_BARRIERS_OF_RUN, run_id)]

    async def get_task(self, task_id: str) -> Task | None:
        row = await self._fetchrow(SELECT_TASK, task_id)
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
        clauses, params = ["id > $1"], list[Any]([after])

        def where(clause: str, value: Any) -> None:
            params.append(value)
            clauses.append(clause.format(f"${len(params)}"))

        if task_id is not None:
            where("task_id = {}", task_id)
        if since is not None:
            where("at >= {}", since)
        if run_id is not None:
            where("run_id = {}", run_id)
        if types is not None:
            where("type = ANY({}::text[])", list(types))
        params.append(limit)
        sql = (
            f"SELECT * FROM history WHERE {' AND '.join(clauses)} ORDER BY id LIMIT ${len(params)}"  # noqa: S608 - clauses are fixed strings
        )
        return [history_from_row(row) for row in await self._fetch(sql, *params)]

    async def callback_target(self, token_hash: str) -> tuple[Task, int] | None:
        row = await self._fetchrow(SELECT_CALLBACK_TARGET, token_hash)
        return None if row is None else (task_from_row(row), row["token_attempt"])

    async def last_cron_fire(self, trigger: str) -> str | None:
        row = await self._fetchrow(SELECT_LAST_CRON_FIRE, trigger)
        return None if row is None else row[0]

    async def server_key(self) -> bytes:
        """Made by whichever replica asks first: the insert does nothing if one exists."""
        row = await self._fetchrow(SELECT_META, "server_key")
        if row is None:
            async with self.transaction() as tx:
                await tx.insert_meta("server_key", secrets.token_hex(32))
            row = await self._fetchrow(SELECT_META, "server_key")
        if row is None:  # pragma: no cover - inserted or kept just above
            raise StoreUnavailable("the server key vanished")
        return bytes.fromhex(row[0])

    # -- restart and deadlines ---------------------------------------------------------------

    async def replicas(self) -> dict[str, float]:
        rows = await self._fetch(SELECT_REPLICAS)
        return {row["id"]: float(row["lease_until"]) for row in rows}

    async def listen(self, on_notice: NoticeFn) -> None:
        if self._listener is not None:
            return
        self._open_pool()
        listener = Listener(self.url, self._channel, on_notice)
        try:
            await listener.start()
        except (*UNAVAILABLE, asyncpg.PostgresError) as error:
            cause = scrub(describe(error), self.url)
            raise StoreUnavailable(f"cannot listen on {self.where}: {cause}") from None
        self._listener = listener

    async def deadlines_before(self, until: float) -> list[Task]:
        return [task_from_row(row) for row in await self._fetch(SELECT_DEADLINES_BEFORE, until)]

    async def next_deadline(self, after: float) -> float | None:
        row = await self._fetchrow(SELECT_NEXT_DEADLINE, after)
        return None if row is None or row[0] is None else float(row[0])

    async def unfinished(self) -> Unfinished:
        tasks = [task_from_row(row) for row in await self._fetch(SELECT_UNFINISHED_TASKS)]
        barriers = [barrier_from_row(row) for row in await self._fetch(SELECT_WAITING_BARRIERS)]
        return Unfinished(tasks, barriers)
