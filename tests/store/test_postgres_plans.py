"""PostgreSQL-specific: the sweep, window, batch and lookup statements reach rows through an
index, never a sequential scan of a table.

As for SQLite (test_sqlite_plans.py): a sweep that scanned history or tasks would cost as
much as everything ever stored, and a batch lookup that scanned would make each completion
cost as much as the whole table. The tables here are empty, where a scan is the cheapest
plan, so sequential scans are priced out (enable_seqscan = off): a plan that still holds
one has no index to use.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import pytest

from orchestrator.store import postgres, postgres_tx, postgres_upkeep
from orchestrator.store.postgres_schema import migrate
from tests import pg
from tests.pg import PostgresServer

UPKEEP = [
    "PRUNE_TASK_HISTORY",
    "PRUNE_TASK_PAYLOADS",
    "PRUNE_EVENT_PAYLOADS",
    "SELECT_EXPIRED_RUNS",
    "DELETE_ORPHAN_EVENTS",
    "PRUNE_UNATTACHED_HISTORY",
    "PRUNE_REJECTIONS",
]
STORE = [
    "SELECT_DEADLINES_BEFORE",
    "SELECT_NEXT_DEADLINE",
    "SELECT_UNFINISHED_TASKS",
    "SELECT_WAITING_BARRIERS",
    "SELECT_CALLBACK_TARGET",
    "SELECT_LAST_CRON_FIRE",
    "SELECT_TASKS_OF_RUN",
    "SELECT_BARRIERS_OF_RUN",
    "SELECT_RUNS_OF_EVENT",
]
TX = [
    "SELECT_TASKS",
    "SELECT_BARRIERS",
    "SELECT_TASKS_OF_STEPS",
    "SELECT_RECEIPTS",
    "SELECT_RUNS",
    "SELECT_BARRIERS_OF_RUNS",
    "SELECT_UNFINISHED_OF_RUN",
    "SELECT_UNFINISHED_OF_STEP",
    "SELECT_EVENT_BY_DEDUP",
    "UPDATE_TASKS",
    "UPDATE_BARRIERS",
    "LANES_IN_FLIGHT",
    "LANES_STARTED",
]
STATEMENTS = [
    *((name, getattr(postgres_upkeep, name)) for name in UPKEEP),
    *((name, getattr(postgres, name)) for name in STORE),
    *((f"DELETE_RUN_PARTS[{i}]", sql) for i, sql in enumerate(postgres_upkeep.DELETE_RUN_PARTS)),
    *((name, getattr(postgres_tx, name)) for name in TX),
]
# A value of each parameter type the statements take, for the planner to plan with.
SAMPLES: dict[str, Any] = {
    "text": "x",
    "float8": 0.0,
    "int4": 0,
    "int8": 0,
    "bool": False,
    "text[]": ["x", "y"],
    "float8[]": [0.0, 1.0],
    "int4[]": [0, 1],
    "bool[]": [False, True],
}


# Enough rows that the planner prices a scan as a scan, shaped as a store in use: most runs
# finished (kept for a year), a few running, tasks and history of every run. Made once per
# session, then only read.
POPULATE = """
    INSERT INTO events (id, trigger, workflow, received_at, payload, dedup_key)
    SELECT 'evt_' || lpad(i::text, 6, '0'), 'leads', 'outreach', i, '{}', 'd' || i
    FROM generate_series(1, 2000) AS i;
    INSERT INTO runs (id, workflow, event_id, status, created_at, finished_at, spec)
    SELECT 'run_' || lpad(i::text, 6, '0'), 'outreach', 'evt_' || lpad(i::text, 6, '0'),
           CASE WHEN i % 50 = 0 THEN 'running' ELSE 'succeeded' END, i,
           CASE WHEN i % 50 <> 0 THEN i + 1 END, '{}'
    FROM generate_series(1, 2000) AS i;
    INSERT INTO barriers (run_id, step, expected, required, succeeded, failed, status, policy)
    SELECT 'run_' || lpad(i::text, 6, '0'), 'research', 10, 10, 10, 0,
           CASE WHEN i % 50 = 0 THEN 'waiting' ELSE 'open' END, '{}'
    FROM generate_series(1, 2000) AS i;
    INSERT INTO tasks (id, run_id, step, item_key, item, state, attempt, due_at)
    SELECT 'tsk_' || lpad(i::text, 6, '0'), 'run_' || lpad((i % 2000 + 1)::text, 6, '0'),
           'research', i::text, 'null',
           CASE WHEN i % 100 = 0 THEN 'dispatched' WHEN i % 100 = 1 THEN 'pending'
                ELSE 'succeeded' END, 1, i
    FROM generate_series(1, 20000) AS i;
    INSERT INTO history (at, type, run_id, task_id, step, data)
    SELECT i, 'task_succeeded', 'run_' || lpad((i % 2000 + 1)::text, 6, '0'),
           'tsk_' || lpad(i::text, 6, '0'), 'research', '{}'
    FROM generate_series(1, 20000) AS i;
    INSERT INTO callback_tokens (token_hash, task_id, attempt)
    SELECT md5(i::text), 'tsk_' || lpad(i::text, 6, '0'), 1 FROM generate_series(1, 20000) AS i;
    INSERT INTO callback_receipts (task_id, webhook_id, body_hash, received_at)
    SELECT 'tsk_' || lpad(i::text, 6, '0'), 'msg', 'h', i FROM generate_series(1, 20000) AS i;
    INSERT INTO rejections (minute, route, reason, count, first_at, last_at, sample)
    SELECT i * 60, '/hooks/{trigger}', 'unknown_trigger', 1, i * 60, i * 60, '{}'
    FROM generate_series(1, 2000) AS i;
    ANALYZE;
"""
# Partial indexes hold only the rows a statement wants: walking one whole is no scan.
PARTIAL = {
    "tasks_unfinished", "tasks_deadlines", "tasks_in_flight_by_step", "barriers_waiting",
    "runs_finished",
}  # fmt: skip
_populated: str | None = None


@pytest.fixture
async def conn(postgres: PostgresServer) -> AsyncIterator[asyncpg.Connection]:
    """A connection to a schema of the current tables holding the rows above, with
    sequential scans priced out."""
    global _populated
    if _populated is None:
        name = postgres.new_name("plans")
        await pg.admin(f'CREATE SCHEMA "{name}"')
        setup = await asyncpg.connect(postgres.url(search_path=name))
        try:
            await migrate(setup, name)
            await setup.execute(POPULATE)
        finally:
            await setup.close()
        _populated = name
    conn = await asyncpg.connect(postgres.url(search_path=_populated))
    try:
        await conn.execute("SET enable_seqscan = off")
        yield conn
    finally:
        await conn.close()


async def plan(conn: asyncpg.Connection, sql: str) -> dict[str, Any]:
    """The statement's plan tree, planned with sample values of its parameters."""
    statement = await conn.prepare(sql)
    samples = [SAMPLES[parameter.name] for parameter in statement.get_parameters()]
    text = await conn.fetchval(f"EXPLAIN (FORMAT JSON) {sql}", *samples)
    tree: dict[str, Any] = json.loads(text)[0]["Plan"]
    return tree


def scans(node: dict[str, Any]) -> list[str]:
    """The nodes of a plan that read a table whole: a sequential scan, or an index walked
    end to end (no Index Cond) that is not a partial index."""
    found = []
    kind = node["Node Type"]
    if kind == "Seq Scan":
        found.append(f"Seq Scan on {node['Relation Name']}")
    whole = kind in ("Index Scan", "Index Only Scan") and "Index Cond" not in node
    if whole and node["Index Name"] not in PARTIAL:
        found.append(f"{kind} of all of {node['Index Name']}")
    for child in node.get("Plans", []):
        found += scans(child)
    return found


@pytest.mark.parametrize(("name", "sql"), STATEMENTS, ids=[name for name, _ in STATEMENTS])
async def test_statements_never_scan_a_table(conn: asyncpg.Connection, name: str, sql: str) -> None:
    """The plan reaches every table through an index search (or a partial index of just the
    rows wanted), never a whole table or a whole index."""
    tree = await plan(conn, sql)
    assert scans(tree) == [], f"{name}: {json.dumps(tree, indent=1)}"
