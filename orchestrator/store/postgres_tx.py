"""One PostgreSQL transaction: the StoreTx operations, each one statement whatever the batch.

A batch travels as one array per column and is read back with `unnest`, so N rows cost one
round trip, and a conditional write answers which rows it applied with RETURNING. `tasks()`
and `barriers()` lock what they return (FOR UPDATE, in key order so that two transactions
lock overlapping rows in the same order); the conditional writes re-check their condition
on the row as it is when they reach it (READ COMMITTED), so a write that lost a race to
another replica answers "not applied" instead of overwriting.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import replace
from typing import Any

import asyncpg

from orchestrator.barrier import Barrier
from orchestrator.records import Event, HistoryEntry, Run, Task
from orchestrator.states import RunState
from orchestrator.store.base import (
    BarrierWrite,
    CallbackToken,
    Lane,
    LaneLoad,
    Receipt,
    ReceiptKey,
    StepKey,
    StoreConflict,
)
from orchestrator.store.lanes import lane_loads_of
from orchestrator.store.postgres_driver import Connection, columns, rounds, text, translating
from orchestrator.store.postgres_notices import send
from orchestrator.store.postgres_waits import PostgresWaitsTx
from orchestrator.store.rows import (
    barrier_from_row,
    dumps,
    dumps_or_none,
    event_from_row,
    run_from_row,
    task_from_row,
)
from orchestrator.task_moves import TaskWrite

# A fan-out of 10,000 tasks, measured on one machine inside one transaction (loopback,
# fsync off): INSERT ... SELECT FROM unnest(arrays) 96-111 ms, executemany 112-117 ms,
# COPY (copy_records_to_table) 45-53 ms. COPY costs a second round trip (the server's
# CopyInResponse), so it is used past COPY_ROWS rows, where it already saves more than a
# network round trip (100 rows: unnest 2.2 ms, COPY 1.5 ms).
COPY_ROWS = 256

TASK_COLUMNS = [
    "id", "run_id", "step", "item_key", "item", "state", "attempt", "due_at", "started_at",
    "finished_at", "output", "error", "awaiting", "dispatch_tries", "wait_window", "queued_at",
    "owner",
]  # fmt: skip

INSERT_EVENT = """
    INSERT INTO events (
        id, trigger, workflow, received_at, payload, dedup_key, traceparent, tracestate
    )
    VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
    ON CONFLICT (trigger, dedup_key) DO NOTHING RETURNING id
"""
SELECT_EVENT = "SELECT * FROM events WHERE id = $1"
SELECT_EVENT_BY_DEDUP = "SELECT * FROM events WHERE trigger = $1 AND dedup_key = $2"
INSERT_RUN = """
    INSERT INTO runs (id, workflow, event_id, status, created_at, finished_at, spec)
    VALUES ($1, $2, $3, $4, $5, $6, $7)
"""
SELECT_RUNS = "SELECT * FROM runs WHERE id = ANY($1::text[])"
UPDATE_RUN_STATUS = "UPDATE runs SET status = $1, finished_at = $2 WHERE id = $3 AND status = $4"
INSERT_BARRIERS = """
    INSERT INTO barriers (run_id, step, expected, required, succeeded, failed, status, policy,
                          deadline_at, decided_at, reason)
    SELECT * FROM unnest($1::text[], $2::text[], $3::int4[], $4::int4[], $5::int4[],
                         $6::int4[], $7::text[], $8::text[], $9::float8[], $10::float8[],
                         $11::text[])
"""
SELECT_BARRIERS = """
    SELECT * FROM barriers
    WHERE (run_id, step) IN (SELECT * FROM unnest($1::text[], $2::text[]))
    ORDER BY run_id, step FOR UPDATE
"""
SELECT_BARRIERS_OF_RUNS = "SELECT * FROM barriers WHERE run_id = ANY($1::text[]) ORDER BY seq"
UPDATE_BARRIERS = """
    UPDATE barriers SET expected = w.expected, required = w.required, succeeded = w.succeeded,
                        failed = w.failed, status = w.status, deadline_at = w.deadline_at,
                        decided_at = w.decided_at, reason = w.reason
    FROM unnest($1::text[], $2::text[], $3::text[], $4::int4[], $5::int4[], $6::int4[],
                $7::int4[], $8::int4[], $9::int4[], $10::text[], $11::float8[], $12::float8[],
                $13::text[])
        AS w(run_id, step, was_status, was_succeeded, was_failed, expected, required,
             succeeded, failed, status, deadline_at, decided_at, reason)
    WHERE barriers.run_id = w.run_id AND barriers.step = w.step
      AND barriers.status = w.was_status AND barriers.succeeded = w.was_succeeded
      AND barriers.failed = w.was_failed
    RETURNING barriers.run_id, barriers.step
"""
INSERT_TASKS = f"""
    INSERT INTO tasks ({", ".join(TASK_COLUMNS)})
    SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[],
                         $6::text[], $7::int4[], $8::float8[], $9::float8[], $10::float8[],
                         $11::text[], $12::text[], $13::bool[], $14::int4[], $15::float8[],
                         $16::float8[], $17::text[])
"""  # noqa: S608 - the column list is a constant
SELECT_TASKS = "SELECT * FROM tasks WHERE id = ANY($1::text[]) ORDER BY id FOR UPDATE"
SELECT_TASKS_OF_STEPS = """
    SELECT * FROM tasks WHERE (run_id, step) IN (SELECT * FROM unnest($1::text[], $2::text[]))
    ORDER BY seq
"""
SELECT_UNFINISHED_OF_RUN = """
    SELECT * FROM tasks WHERE run_id = $1 AND state IN ('pending', 'dispatched') ORDER BY seq
"""
SELECT_UNFINISHED_OF_STEP = """
    SELECT * FROM tasks WHERE run_id = $1 AND step = $2 AND state IN ('pending', 'dispatched')
    ORDER BY seq
"""
UPDATE_TASKS = """
    UPDATE tasks SET state = w.state, attempt = w.attempt, due_at = w.due_at,
                     started_at = w.started_at, finished_at = w.finished_at, output = w.output,
                     error = w.error, awaiting = w.awaiting, dispatch_tries = w.dispatch_tries,
                     wait_window = w.wait_window, queued_at = w.queued_at, owner = w.owner
    FROM unnest($1::text[], $2::text[], $3::int4[], $4::text[], $5::int4[], $6::float8[],
                $7::float8[], $8::float8[], $9::text[], $10::text[], $11::bool[], $12::int4[],
                $13::float8[], $14::float8[], $15::text[])
        AS w(id, was_state, was_attempt, state, attempt, due_at, started_at, finished_at,
             output, error, awaiting, dispatch_tries, wait_window, queued_at, owner)
    WHERE tasks.id = w.id AND tasks.state = w.was_state AND tasks.attempt = w.was_attempt
    RETURNING tasks.id
"""
INSERT_TOKENS = """
    INSERT INTO callback_tokens (token_hash, task_id, attempt)
    SELECT * FROM unnest($1::text[], $2::text[], $3::int4[])
    ON CONFLICT (token_hash) DO NOTHING
"""
SELECT_RECEIPTS = """
    SELECT task_id, webhook_id, body_hash FROM callback_receipts
    WHERE (task_id, webhook_id) IN (SELECT * FROM unnest($1::text[], $2::text[]))
"""
INSERT_RECEIPTS = """
    INSERT INTO callback_receipts (task_id, webhook_id, body_hash, received_at)
    SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::float8[])
"""
INSERT_META = "INSERT INTO meta (key, value) VALUES ($1, $2) ON CONFLICT (key) DO NOTHING"
INSERT_HISTORY = """
    INSERT INTO history (at, type, run_id, task_id, step, data)
    SELECT at, type, run_id, task_id, step, data
    FROM unnest($1::float8[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[])
        WITH ORDINALITY AS entry(at, type, run_id, task_id, step, data, position)
    ORDER BY position
    RETURNING id
"""


def task_state(task: Task) -> tuple[Any, ...]:
    """The columns a task write sets, in the order of UPDATE_TASKS (and of TASK_COLUMNS)."""
    return (
        task.state.value,
        task.attempt,
        task.due_at,
        task.started_at,
        task.finished_at,
        dumps_or_none(task.output),
        text(task.error),
        task.awaiting,
        task.dispatch_tries,
        task.wait_window,
        task.queued_at,
        task.owner,
    )


def barrier_state(barrier: Barrier) -> tuple[Any, ...]:
    return (
        barrier.expected,
        barrier.required,
        barrier.succeeded,
        barrier.failed,
        barrier.status.value,
    )


SELECT_LOCKED_RUNS = "SELECT * FROM runs WHERE id = ANY($1::text[]) ORDER BY id FOR UPDATE"
# Admission into a lane takes its lock (the two-key form: a key space of its own), held to
# COMMIT: two replicas admitting into one lane count its tasks one after the other.
LANE_LOCKS = 0x6C61_6E65  # "lane"
LOCK_LANES = """
    SELECT pg_advisory_xact_lock($1, h)
    FROM (SELECT DISTINCT hashtext(k) AS h FROM unnest($2::text[]) AS k ORDER BY h) AS keys
"""
LANES_IN_FLIGHT = """
    SELECT r.workflow, t.step, count(*) FROM tasks t JOIN runs r ON r.id = t.run_id
    WHERE t.state = 'dispatched' AND t.step = ANY($2::text[]) AND r.workflow = ANY($1::text[])
    GROUP BY r.workflow, t.step
"""
LANES_STARTED = """
    SELECT r.workflow, t.step, t.started_at FROM tasks t JOIN runs r ON r.id = t.run_id
    WHERE t.started_at > $3 AND t.step = ANY($2::text[]) AND r.workflow = ANY($1::text[])
"""
UPSERT_REPLICA = """
    INSERT INTO replicas (id, started_at, lease_until) VALUES ($1, $2, $3)
    ON CONFLICT (id) DO UPDATE SET lease_until = excluded.lease_until
"""
DELETE_EXPIRED_REPLICA = "DELETE FROM replicas WHERE id = $1 AND lease_until < $2"
SELECT_OWNED_TASKS = """
    SELECT * FROM tasks WHERE state IN ('pending', 'dispatched')
      AND (owner = ANY($1::text[]) OR ($2 AND owner IS NULL))
    ORDER BY seq FOR UPDATE
"""
# History ids must become readable in the order they were drawn, or a reader paging by id
# (the event stream's Last-Event-ID, a replica relaying another's history) would step
# over an entry whose transaction committed late. So appending history takes this lock,
# held to COMMIT: the appends of concurrent transactions, and their commits, take turns.
HISTORY_LOCK = 0x6F72_6368_6869_7374  # "orch hist"
LOCK_HISTORY = "SELECT pg_advisory_xact_lock($1)"


class PostgresTx(PostgresWaitsTx):
    """The StoreTx of one transaction on one pooled connection."""

    def __init__(self, conn: Connection, channel: str = "orchestrator") -> None:
        self._conn = conn
        self._channel = channel
        self.notices: list[tuple[str, str]] = []

    async def fetch(self, sql: str, *args: Any) -> list[asyncpg.Record]:
        with translating():
            return await self._conn.fetch(sql, *args)

    async def fetchrow(self, sql: str, *args: Any) -> asyncpg.Record | None:
        with translating():
            return await self._conn.fetchrow(sql, *args)

    async def execute(self, sql: str, *args: Any) -> int:
        """Run a statement; the number of rows it touched."""
        with translating():
            status = await self._conn.execute(sql, *args)
        return int(status.rsplit(" ", 1)[-1]) if status[-1:].isdigit() else 0

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
        if await self.fetchrow(INSERT_EVENT, *params) is not None:
            return event, True
        # A new statement, so a new snapshot: it sees the row that made the insert yield.
        row = await self.fetchrow(SELECT_EVENT_BY_DEDUP, event.trigger, event.dedup_key)
        if row is None:  # pragma: no cover - the conflicting row was committed or is ours
            raise StoreConflict(f"event {event.trigger}/{event.dedup_key} vanished")
        return event_from_row(row), False

    async def get_event(self, event_id: str) -> Event | None:
        row = await self.fetchrow(SELECT_EVENT, event_id)
        return None if row is None else event_from_row(row)

    async def insert_run(self, run: Run) -> None:
        await self.execute(
            INSERT_RUN,
            run.id,
            run.workflow,
            run.event_id,
            run.status.value,
            run.created_at,
            run.finished_at,
            dumps(run.spec),
        )

    async def runs(self, run_ids: Collection[str]) -> dict[str, Run]:
        if not run_ids:
            return {}
        rows = await self.fetch(SELECT_RUNS, list(run_ids))
        return {row["id"]: run_from_row(row) for row in rows}

    async def set_run_status(
        self, run_id: str, expected: RunState, new: RunState, at: float | None
    ) -> bool:
        return await self.execute(UPDATE_RUN_STATUS, new.value, at, run_id, expected.value) == 1

    # -- barriers --------------------------------------------------------------------------

    async def insert_barriers(self, barriers: Sequence[Barrier]) -> None:
        rows = [
            (
                barrier.run_id,
                barrier.step,
                *barrier_state(barrier),
                barrier.policy.model_dump_json(),
                barrier.deadline_at,
                barrier.decided_at,
                text(barrier.reason),
            )
            for barrier in barriers
        ]
        if rows:
            await self.execute(INSERT_BARRIERS, *columns(rows))

    async def barriers(self, keys: Collection[StepKey]) -> dict[StepKey, Barrier]:
        if not keys:
            return {}
        found = map(barrier_from_row, await self.fetch(SELECT_BARRIERS, *columns(list(keys))))
        return {(barrier.run_id, barrier.step): barrier for barrier in found}

    async def barriers_of_runs(self, run_ids: Collection[str]) -> list[Barrier]:
        if not run_ids:
            return []
        return [
            barrier_from_row(row)
            for row in await self.fetch(SELECT_BARRIERS_OF_RUNS, list(run_ids))
        ]

    async def write_barriers(self, writes: Sequence[BarrierWrite]) -> set[StepKey]:
        applied: set[StepKey] = set()
        for positions in rounds([write.key for write in writes]):
            batch = sorted((writes[i] for i in positions), key=lambda write: write.key)
            rows = [
                (
                    *write.key,
                    write.expected.status.value,
                    write.expected.succeeded,
                    write.expected.failed,
                    *barrier_state(write.barrier),
                    write.barrier.deadline_at,
                    write.barrier.decided_at,
                    text(write.barrier.reason),
                )
                for write in batch
            ]
            found = await self.fetch(UPDATE_BARRIERS, *columns(rows))
            applied.update((row["run_id"], row["step"]) for row in found)
        return applied

    # -- tasks -----------------------------------------------------------------------------

    async def insert_tasks(self, tasks: Sequence[Task]) -> None:
        rows = [
            (task.id, task.run_id, task.step, task.item_key, dumps(task.item), *task_state(task))
            for task in tasks
        ]
        if len(rows) > COPY_ROWS:
            with translating():
                await self._conn.copy_records_to_table("tasks", records=rows, columns=TASK_COLUMNS)
        elif rows:
            await self.execute(INSERT_TASKS, *columns(rows))

    async def tasks(self, task_ids: Collection[str]) -> dict[str, Task]:
        if not task_ids:
            return {}
        rows = await self.fetch(SELECT_TASKS, list(task_ids))
        return {row["id"]: task_from_row(row) for row in rows}

    async def tasks_of_steps(self, keys: Collection[StepKey]) -> list[Task]:
        if not keys:
            return []
        rows = await self.fetch(SELECT_TASKS_OF_STEPS, *columns(list(set(keys))))
        return [task_from_row(row) for row in rows]

    async def unfinished_tasks(self, run_id: str, step: str | None = None) -> list[Task]:
        if step is None:
            rows = await self.fetch(SELECT_UNFINISHED_OF_RUN, run_id)
        else:
            rows = await self.fetch(SELECT_UNFINISHED_OF_STEP, run_id, step)
        return [task_from_row(row) for row in rows]

    async def write_tasks(self, writes: Sequence[TaskWrite]) -> set[str]:
        params = [task_state(write.task) for write in writes]  # a non-JSON output fails all
        applied: set[str] = set()
        for positions in rounds([write.task.id for write in writes]):
            positions.sort(key=lambda i: writes[i].task.id)
            rows = [
                (
                    writes[i].task.id,
                    writes[i].expected_state.value,
                    writes[i].expected_attempt,
                    *params[i],
                )
                for i in positions
            ]
            applied.update(row["id"] for row in await self.fetch(UPDATE_TASKS, *columns(rows)))
        return applied

    # -- callbacks -------------------------------------------------------------------------

    async def insert_callback_tokens(self, tokens: Sequence[CallbackToken]) -> None:
        first: dict[str, CallbackToken] = {}
        for token in tokens:
            first.setdefault(token.token_hash, token)
        rows = [(t.token_hash, t.task_id, t.attempt) for t in first.values()]
        if rows:
            await self.execute(INSERT_TOKENS, *columns(rows))

    async def receipts(self, keys: Collection[ReceiptKey]) -> dict[ReceiptKey, str]:
        if not keys:
            return {}
        rows = await self.fetch(SELECT_RECEIPTS, *columns(list(keys)))
        return {(row[0], row[1]): str(row[2]) for row in rows}

    async def insert_receipts(self, receipts: Sequence[Receipt]) -> None:
        rows = [(r.task_id, r.webhook_id, r.body_hash, r.at) for r in receipts]
        if rows:
            await self.execute(INSERT_RECEIPTS, *columns(rows))

    async def insert_meta(self, key: str, value: str) -> None:
        """Set `key` unless it is already set (first writer wins across replicas)."""
        await self.execute(INSERT_META, key, value)

    # -- history ---------------------------------------------------------------------------

    async def append_history(self, entries: Iterable[HistoryEntry]) -> list[HistoryEntry]:
        batch = list(entries)
        rows = [
            (entry.at, entry.type, entry.run_id, entry.task_id, entry.step, dumps(entry.data))
            for entry in batch
        ]
        if not rows:
            return []
        await self.execute(LOCK_HISTORY, HISTORY_LOCK)
        # Identity values are drawn in the order the rows are inserted, which ORDER BY fixes.
        ids = sorted(row["id"] for row in await self.fetch(INSERT_HISTORY, *columns(rows)))
        return [replace(entry, id=history_id) for history_id, entry in zip(ids, batch, strict=True)]

    # -- replicas ----------------------------------------------------------------------------

    async def lock_runs(self, run_ids: Collection[str]) -> dict[str, Run]:
        if not run_ids:
            return {}
        rows = await self.fetch(SELECT_LOCKED_RUNS, list(run_ids))
        return {row["id"]: run_from_row(row) for row in rows}

    async def lane_loads(
        self, lanes: Collection[Lane], since: Mapping[Lane, float]
    ) -> dict[Lane, LaneLoad]:
        wanted = list(dict.fromkeys(lanes))
        if not wanted:
            return {}
        await self.execute(LOCK_LANES, LANE_LOCKS, [f"{w}\x1f{s}" for w, s in wanted])
        workflows, steps = sorted({w for w, _ in wanted}), sorted({s for _, s in wanted})
        rows = await self.fetch(LANES_IN_FLIGHT, workflows, steps)
        in_flight = {(row[0], row[1]): int(row[2]) for row in rows}
        started = []
        if since:
            after = min(since.values())
            started = [
                (row[0], row[1], float(row[2]))
                for row in await self.fetch(LANES_STARTED, workflows, steps, after)
            ]
        return lane_loads_of(wanted, in_flight, started, since)

    async def save_replica(self, replica_id: str, started_at: float, lease_until: float) -> None:
        await self.execute(UPSERT_REPLICA, replica_id, started_at, lease_until)

    async def drop_replica(self, replica_id: str, expired_before: float) -> bool:
        return await self.execute(DELETE_EXPIRED_REPLICA, replica_id, expired_before) == 1

    async def owned_tasks(self, owners: Collection[str | None]) -> list[Task]:
        named = [owner for owner in owners if owner is not None]
        rows = await self.fetch(SELECT_OWNED_TASKS, named, None in owners)
        return [task_from_row(row) for row in rows]

    def notify(self, topic: str, payload: str) -> None:
        self.notices.append((topic, payload))

    async def send_notices(self) -> None:
        """The notices, in the transaction's last round trip before COMMIT."""
        with translating():
            await send(self._conn, self._channel, self.notices)
