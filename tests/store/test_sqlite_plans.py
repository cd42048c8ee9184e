"""SQLite-specific: the retention sweep's statements start from what expired.

A sweep runs hourly beside live work; if it scanned history or tasks its cost would grow
with everything ever stored (100,000 waiting tasks made one sweep cost more than 30 s
of idling). Each statement must reach rows through an index.
"""

from __future__ import annotations

import sqlite3

import pytest

from orchestrator.store import sqlite as store_sql

SWEEP = [
    "PRUNE_TASK_HISTORY",
    "PRUNE_TASK_PAYLOADS",
    "PRUNE_EVENT_PAYLOADS",
    "SELECT_EXPIRED_RUNS",
    "DELETE_ORPHAN_EVENTS",
    "SELECT_DEADLINES_BEFORE",
    "SELECT_NEXT_DEADLINE",
]


@pytest.mark.parametrize("name", SWEEP)
def test_sweep_and_window_statements_never_scan_a_table(name: str) -> None:
    """Every step of the plan is an index search, never a full SCAN."""
    db = sqlite3.connect(":memory:")
    for script in store_sql.MIGRATIONS:
        for statement in store_sql._statements(script):
            db.execute(statement)
    sql = getattr(store_sql, name)
    plan = [row[3] for row in db.execute(f"EXPLAIN QUERY PLAN {sql}", [0] * sql.count("?"))]
    scans = [step for step in plan if step.startswith("SCAN")]
    assert not scans, f"{name} scans: {plan}"
