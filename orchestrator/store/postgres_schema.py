"""The PostgreSQL schema as forward migrations, and the migrating itself.

The tables mirror the SQLite schema's final shape (sqlite_schema.py) with PostgreSQL's
types: epoch seconds as double precision, flags as boolean, JSON as text (byte for byte
what the engine wrote: jsonb would reorder keys, and reject NaN, which Python's json writes
and reads). Text columns compare and sort as bytes (COLLATE "C"), as SQLite's do: ids are
cursors and cron keys are compared by `max`, whatever the database's own collation.
Tasks and barriers carry `seq`, the creation order SQLite reads from its rowid.

Replicas starting at once migrate one at a time: each takes a transaction-scoped advisory
lock before it reads the version, so the second finds the work done.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from asyncpg import exceptions as pg

if TYPE_CHECKING:
    from orchestrator.store.postgres_driver import Connection

# pg_advisory_xact_lock's key for migrating: any constant the application uses for
# nothing else ("orchestrator schema" folded into 63 bits).
MIGRATION_LOCK = 0x6F72_6368_7363_686D

MIGRATIONS: list[str] = [
    # 1: the schema as SQLite's five migrations left it.
    """
    CREATE TABLE events (
        id TEXT COLLATE "C" PRIMARY KEY,
        trigger TEXT COLLATE "C" NOT NULL,
        workflow TEXT COLLATE "C" NOT NULL,
        received_at DOUBLE PRECISION NOT NULL,
        payload TEXT NOT NULL,
        dedup_key TEXT COLLATE "C",
        UNIQUE (trigger, dedup_key)
    );
    CREATE INDEX events_by_time ON events (received_at);
    CREATE TABLE runs (
        id TEXT COLLATE "C" PRIMARY KEY,
        workflow TEXT COLLATE "C" NOT NULL,
        event_id TEXT COLLATE "C" NOT NULL REFERENCES events (id),
        status TEXT COLLATE "C" NOT NULL,
        created_at DOUBLE PRECISION NOT NULL,
        finished_at DOUBLE PRECISION,
        spec TEXT NOT NULL
    );
    CREATE INDEX runs_by_workflow ON runs (workflow, id);
    CREATE INDEX runs_by_status ON runs (status, id);
    CREATE INDEX runs_by_event ON runs (event_id);
    CREATE INDEX runs_finished ON runs (finished_at) WHERE status <> 'running';
    CREATE TABLE barriers (
        seq BIGINT GENERATED ALWAYS AS IDENTITY,
        run_id TEXT COLLATE "C" NOT NULL REFERENCES runs (id),
        step TEXT COLLATE "C" NOT NULL,
        expected INTEGER NOT NULL,
        required INTEGER NOT NULL,
        succeeded INTEGER NOT NULL,
        failed INTEGER NOT NULL,
        status TEXT COLLATE "C" NOT NULL,
        policy TEXT NOT NULL,
        deadline_at DOUBLE PRECISION,
        decided_at DOUBLE PRECISION,
        reason TEXT,
        PRIMARY KEY (run_id, step)
    );
    CREATE INDEX barriers_waiting ON barriers (seq) WHERE status = 'waiting';
    CREATE TABLE tasks (
        seq BIGINT GENERATED ALWAYS AS IDENTITY,
        id TEXT COLLATE "C" PRIMARY KEY,
        run_id TEXT COLLATE "C" NOT NULL REFERENCES runs (id),
        step TEXT COLLATE "C" NOT NULL,
        item_key TEXT COLLATE "C" NOT NULL,
        item TEXT NOT NULL,
        state TEXT COLLATE "C" NOT NULL,
        attempt INTEGER NOT NULL,
        due_at DOUBLE PRECISION,
        started_at DOUBLE PRECISION,
        finished_at DOUBLE PRECISION,
        output TEXT,
        error TEXT,
        awaiting BOOLEAN NOT NULL DEFAULT false,
        dispatch_tries INTEGER NOT NULL DEFAULT 0,
        wait_window DOUBLE PRECISION,
        queued_at DOUBLE PRECISION,
        UNIQUE (run_id, step, item_key)
    );
    CREATE INDEX tasks_unfinished ON tasks (seq) WHERE state IN ('pending', 'dispatched');
    CREATE INDEX tasks_deadlines ON tasks (due_at) WHERE state = 'dispatched';
    CREATE TABLE history (
        id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        at DOUBLE PRECISION NOT NULL,
        type TEXT COLLATE "C" NOT NULL,
        run_id TEXT COLLATE "C",
        task_id TEXT COLLATE "C",
        step TEXT COLLATE "C",
        data TEXT NOT NULL
    );
    CREATE INDEX history_by_run ON history (run_id, id);
    CREATE INDEX history_by_type ON history (type, id);
    CREATE INDEX history_by_task ON history (task_id, id);
    CREATE TABLE callback_tokens (
        token_hash TEXT COLLATE "C" PRIMARY KEY,
        task_id TEXT COLLATE "C" NOT NULL REFERENCES tasks (id),
        attempt INTEGER NOT NULL
    );
    CREATE INDEX callback_tokens_by_task ON callback_tokens (task_id);
    CREATE TABLE callback_receipts (
        task_id TEXT COLLATE "C" NOT NULL REFERENCES tasks (id),
        webhook_id TEXT COLLATE "C" NOT NULL,
        body_hash TEXT COLLATE "C" NOT NULL,
        received_at DOUBLE PRECISION NOT NULL,
        PRIMARY KEY (task_id, webhook_id)
    );
    CREATE TABLE meta (key TEXT COLLATE "C" PRIMARY KEY, value TEXT NOT NULL);
    """,
    # 2: rejections nobody authenticated are counted per minute, route and reason (SQLite's
    # 6); retention finds history rows of no run by time.
    """
    CREATE TABLE rejections (
        minute BIGINT NOT NULL,
        route TEXT COLLATE "C" NOT NULL,
        reason TEXT COLLATE "C" NOT NULL,
        count BIGINT NOT NULL,
        first_at DOUBLE PRECISION NOT NULL,
        last_at DOUBLE PRECISION NOT NULL,
        sample TEXT NOT NULL,
        PRIMARY KEY (minute, route, reason)
    );
    CREATE INDEX history_unattached ON history (at) WHERE run_id IS NULL;
    """,
    # 3: replicas and their leases; a task's owner (SQLite's 8).
    """
    ALTER TABLE tasks ADD COLUMN owner TEXT COLLATE "C";
    CREATE INDEX tasks_by_owner ON tasks (owner) WHERE state IN ('pending', 'dispatched');
    CREATE TABLE replicas (
        id TEXT COLLATE "C" PRIMARY KEY,
        started_at DOUBLE PRECISION NOT NULL,
        lease_until DOUBLE PRECISION NOT NULL
    );
    """,
    # 4: what admission into a lane counts across replicas (its tasks dispatched now, and
    # started lately).
    """
    CREATE INDEX tasks_in_flight_by_step ON tasks (step) WHERE state = 'dispatched';
    CREATE INDEX tasks_started_by_step ON tasks (step, started_at) WHERE started_at IS NOT NULL;
    """,
    # 5: tasks waiting on an event's key, and events kept for a wait registered after they
    # arrived (SQLite's 9; issue 15).
    """
    CREATE TABLE waits (
        task_id TEXT COLLATE "C" NOT NULL,
        attempt INTEGER NOT NULL,
        trigger TEXT COLLATE "C" NOT NULL,
        key TEXT COLLATE "C" NOT NULL,
        registered_at DOUBLE PRECISION NOT NULL,
        deadline DOUBLE PRECISION,
        PRIMARY KEY (task_id, attempt)
    );
    CREATE INDEX waits_by_key ON waits (trigger, key);
    CREATE TABLE kept_events (
        trigger TEXT COLLATE "C" NOT NULL,
        key TEXT COLLATE "C" NOT NULL,
        event_id TEXT COLLATE "C" NOT NULL,
        received_at DOUBLE PRECISION NOT NULL,
        expires DOUBLE PRECISION NOT NULL,
        outcome TEXT COLLATE "C" NOT NULL,
        error TEXT,
        PRIMARY KEY (trigger, key, event_id)
    );
    CREATE INDEX kept_events_by_age ON kept_events (trigger, received_at, event_id);
    CREATE INDEX kept_events_expiring ON kept_events (expires);
    """,
    # 6: the W3C trace context an event continues (SQLite's 10; issue 13).
    """
    ALTER TABLE events ADD COLUMN traceparent TEXT;
    ALTER TABLE events ADD COLUMN tracestate TEXT;
    """,
]

CREATE_VERSION_TABLE = "CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)"
SELECT_VERSION = "SELECT max(version) FROM schema_version"
VERSION_TABLE_EXISTS = "SELECT to_regclass('schema_version') IS NOT NULL"
DELETE_VERSION = "DELETE FROM schema_version"
INSERT_VERSION = "INSERT INTO schema_version VALUES ($1)"


class SchemaTooNew(RuntimeError):
    """The database was migrated by a newer orchestrator: this one must not touch it."""


def too_new(where: str, version: int) -> SchemaTooNew:
    return SchemaTooNew(
        f"{where} has schema version {version}; this orchestrator knows up to "
        f"{len(MIGRATIONS)}: upgrade the orchestrator"
    )


async def migrate(conn: Connection, where: str) -> None:
    """Move the schema forward to the current version, one replica at a time."""
    try:
        current = await conn.fetchval(SELECT_VERSION) or 0
    except pg.UndefinedTableError:
        current = 0
    if current == len(MIGRATIONS):  # the common case: one read, no lock
        return
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock($1)", MIGRATION_LOCK)
        await conn.execute(CREATE_VERSION_TABLE)
        current = await conn.fetchval(SELECT_VERSION) or 0
        if current > len(MIGRATIONS):
            raise too_new(where, current)
        if current == len(MIGRATIONS):  # another replica migrated while this one waited
            return
        for script in MIGRATIONS[current:]:
            await conn.execute(script)
        await conn.execute(DELETE_VERSION)
        await conn.execute(INSERT_VERSION, len(MIGRATIONS))


async def stored_version(conn: Connection) -> int:
    """The database's schema version (0: none yet), read without changing anything."""
    if not await conn.fetchval(VERSION_TABLE_EXISTS):
        return 0
    version: int = await conn.fetchval(SELECT_VERSION) or 0
    return version
