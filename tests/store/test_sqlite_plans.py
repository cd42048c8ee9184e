"""SQLite-specific: the sweep, window and batch statements reach rows through an index.

A sweep runs hourly beside live work; if it scanned history or tasks its cost would grow
with everything ever stored (100,000 waiting tasks made one sweep cost more than 30 s
of idling). A batch lookup runs in every completion and dispatch: a scan there would make
each one cost as much as the whole table. Each statement must reach rows through an index.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import closing

import pytest

from orchestrator.store import sqlite, sqlite_tx
from orchestrator.store.sqlite_schema import MIGRATIONS, statements

SWEEP_AND_WINDOW = [
    "PRUNE_TASK_HISTORY",
    "PRUNE_TASK_PAYLOADS",
    "PRUNE_EVENT_PAYLOADS",
    "SELECT_EXPIRED_RUNS",
    "DELETE_ORPHAN_EVENTS",
    "SELECT_DEADLINES_BEFORE",
    "SELECT_NEXT_DEADLINE",
]

# Each batch statement and the table it must search; its keys arrive as a JSON array, read
# by the table-valued function json_each, whose own SCAN walks the keys, not a table.
BATCH = {
    "SELECT_TASKS": "tasks",
    "SELECT_BARRIERS": "barriers",
    "SELECT_TASKS_OF_STEPS": "tasks",
    "SELECT_RECEIPTS": "callback_receipts",
    "SELECT_RUNS": "runs",
    "SELECT_BARRIERS_OF_RUNS": "barriers",
    "SELECT_UNFINISHED_OF_RUN": "tasks",
    "SELECT_UNFINISHED_OF_STEP": "tasks",
    "UPDATE_TASK": "tasks",
    "UPDATE_BARRIER": "barriers",
}
KEYS_SCAN = "SCAN json_each VIRTUAL TABLE"


@pytest.fixture
def db() -> Iterator[sqlite3.Connection]:
    """An empty database with the current schema."""
    with closing(sqlite3.connect(":memory:")) as db:
        for script in MIGRATIONS:
            for statement in statements(script):
                db.execute(statement)
        yield db


def plan(db: sqlite3.Connection, sql: str) -> list[str]:
    """The steps of the statement's query plan."""
    return [row[3] for row in db.execute(f"EXPLAIN QUERY PLAN {sql}", [0] * sql.count("?"))]


@pytest.mark.parametrize("name", SWEEP_AND_WINDOW)
def test_sweep_and_window_statements_never_scan_a_table(db: sqlite3.Connection, name: str) -> None:
    """Every step of the plan is an index search, never a full SCAN."""
    steps = plan(db, getattr(sqlite, name))
    scans = [step for step in steps if step.startswith("SCAN")]
    assert not scans, f"{name} scans: {steps}"


@pytest.mark.parametrize(("name", "table"), BATCH.items())
def test_batch_statements_search_their_table_by_index(
    db: sqlite3.Connection, name: str, table: str
) -> None:
    """A batch statement searches its table through an index; its only SCAN is of json_each."""
    steps = plan(db, getattr(sqlite_tx, name))
    assert any(step.startswith(f"SEARCH {table} USING ") for step in steps), steps
    scans = [step for step in steps if step.startswith("SCAN") and not step.startswith(KEYS_SCAN)]
    assert not scans, f"{name} scans: {steps}"
