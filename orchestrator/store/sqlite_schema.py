"""The SQLite schema as forward migrations: each script moves the schema one version on.

`SqliteStore.open()` applies the scripts past the stored version in one transaction and
refuses a database newer than the code.
"""

from __future__ import annotations

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
    # 5: a task's wait (queued -> started) is kept apart from its run (started -> finished).
    """
    ALTER TABLE tasks ADD COLUMN queued_at REAL;
    """,
    # 6: rejections nobody authenticated are counted per minute, route and reason, not
    # stored one history row each; retention finds rows of no run by time.
    """
    CREATE TABLE rejections (
        minute INTEGER NOT NULL,
        route TEXT NOT NULL,
        reason TEXT NOT NULL,
        count INTEGER NOT NULL,
        first_at REAL NOT NULL,
        last_at REAL NOT NULL,
        sample TEXT NOT NULL,
        PRIMARY KEY (minute, route, reason)
    ) WITHOUT ROWID;
    CREATE INDEX history_unattached ON history (at) WHERE run_id IS NULL;
    """,
    # 7: deleting a run's tasks finds their callback tokens by index (the retention sweep,
    # and the foreign-key check of each deleted task).
    """
    CREATE INDEX callback_tokens_by_task ON callback_tokens (task_id);
    """,
    # 8: replicas: each holds a lease it renews; a task has an owner, the replica whose
    # dispatcher holds it, so that another can take over the tasks of one that died.
    """
    ALTER TABLE tasks ADD COLUMN owner TEXT;
    CREATE INDEX tasks_by_owner ON tasks (owner) WHERE state IN ('pending', 'dispatched');
    CREATE TABLE replicas (
        id TEXT PRIMARY KEY,
        started_at REAL NOT NULL,
        lease_until REAL NOT NULL
    );
    """,
    # 9: tasks waiting on an event's key, and events kept for a wait registered after they
    # arrived (issue 15). No foreign keys: a wait outlives nothing it names (retention
    # prunes those whose task no longer waits), and a kept event expires within hours.
    """
    CREATE TABLE waits (
        task_id TEXT NOT NULL,
        attempt INTEGER NOT NULL,
        trigger TEXT NOT NULL,
        key TEXT NOT NULL,
        registered_at REAL NOT NULL,
        deadline REAL,
        PRIMARY KEY (task_id, attempt)
    );
    CREATE INDEX waits_by_key ON waits (trigger, key);
    CREATE TABLE kept_events (
        trigger TEXT NOT NULL,
        key TEXT NOT NULL,
        event_id TEXT NOT NULL,
        received_at REAL NOT NULL,
        expires REAL NOT NULL,
        outcome TEXT NOT NULL,
        error TEXT,
        PRIMARY KEY (trigger, key, event_id)
    );
    CREATE INDEX kept_events_by_age ON kept_events (trigger, received_at, event_id);
    CREATE INDEX kept_events_expiring ON kept_events (expires);
    """,
    # 10: the W3C trace context an event continues (issue 13): its runs' tasks carry it on.
    """
    ALTER TABLE events ADD COLUMN traceparent TEXT;
    ALTER TABLE events ADD COLUMN tracestate TEXT;
    """,
]


def statements(script: str) -> list[str]:
    """The statements of a migration script, in order."""
    return [statement.strip() for statement in script.split(";") if statement.strip()]
