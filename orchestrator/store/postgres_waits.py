"""PostgreSQL: tasks waiting on an event's key, and events kept for waits registered later.

Mixins of PostgresTx (the transaction's operations, one statement per batch) and
PostgresStore (listings and retention), apart so that the rest of the store changes
without touching them.

Replicas race here: one may register a wait while another keeps an event for the same
key, and under READ COMMITTED neither would see the other's uncommitted row, so the event
would be kept for nobody and the wait would miss it. Both transactions therefore take a
transaction-scoped advisory lock per (trigger, key) first (`lock_wait_keys`), in a fixed
order, so the second waits for the first to commit and then sees its row.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from typing import TYPE_CHECKING, Any

import asyncpg

from orchestrator.records import Task
from orchestrator.store.base import KeptEvent, Page, Wait, WaitKey, kept_cursor, page_of
from orchestrator.store.postgres_driver import columns, text
from orchestrator.store.rows import kept_from_row, task_from_row, wait_from_row

if TYPE_CHECKING:
    from orchestrator.store.postgres_tx import PostgresTx

# The first of pg_advisory_xact_lock's two keys for waits ("wait" as four bytes): a key
# space of its own, apart from the one-bigint locks (migrations) by PostgreSQL's own rule.
WAIT_LOCK_CLASS = 0x77616974

LOCK_KEYS = """
    SELECT count(pg_advisory_xact_lock($3::int4, hash)) FROM (
        SELECT DISTINCT hashtext(t || chr(31) || k) AS hash
        FROM unnest($1::text[], $2::text[]) AS keys(t, k) ORDER BY hash) AS ordered
"""
SELECT_WAITING = """
    SELECT tasks.*, waits.trigger AS wait_trigger, waits.key AS wait_key,
           waits.task_id AS wait_task_id, waits.attempt AS wait_attempt,
           waits.registered_at AS wait_registered_at, waits.deadline AS wait_deadline
    FROM waits JOIN tasks ON tasks.id = waits.task_id AND tasks.attempt = waits.attempt
    WHERE (waits.trigger, waits.key) IN (SELECT * FROM unnest($1::text[], $2::text[]))
      AND tasks.state = 'dispatched'
    ORDER BY waits.registered_at, waits.task_id
    FOR UPDATE OF waits, tasks
"""
UPSERT_WAITS = """
    INSERT INTO waits (task_id, attempt, trigger, key, registered_at, deadline)
    SELECT * FROM unnest($1::text[], $2::int4[], $3::text[], $4::text[], $5::float8[],
                         $6::float8[])
    ON CONFLICT (task_id, attempt) DO UPDATE SET trigger = excluded.trigger, key = excluded.key,
        registered_at = excluded.registered_at, deadline = excluded.deadline
"""
DELETE_WAITS = "DELETE FROM waits WHERE task_id = ANY($1::text[])"
INSERT_KEPT = """
    INSERT INTO kept_events (trigger, key, event_id, received_at, expires, outcome, error)
    SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::float8[], $5::float8[],
                         $6::text[], $7::text[])
    ON CONFLICT DO NOTHING
"""
# Per trigger named, the (most + 1)-th newest row and every older one go.
TRIM_KEPT = """
    DELETE FROM kept_events AS kept USING unnest($1::text[], $2::int4[]) AS bound(t, most)
    WHERE kept.trigger = bound.t AND (kept.received_at, kept.event_id) <= (
        SELECT received_at, event_id FROM kept_events WHERE trigger = bound.t
        ORDER BY received_at DESC, event_id DESC LIMIT 1 OFFSET bound.most)
"""
SELECT_KEPT_FOR = """
    SELECT kept_events.*, events.payload FROM kept_events
    JOIN events ON events.id = kept_events.event_id
    WHERE (kept_events.trigger, kept_events.key) IN
          (SELECT * FROM unnest($1::text[], $2::text[]))
      AND kept_events.expires > $3
    ORDER BY kept_events.received_at, kept_events.event_id
"""
SELECT_WAITS = """
    SELECT waits.*, tasks.run_id, tasks.step FROM waits
    JOIN tasks ON tasks.id = waits.task_id AND tasks.attempt = waits.attempt
    WHERE tasks.state = 'dispatched' AND ($1::text IS NULL OR waits.trigger = $1)
      AND waits.task_id > $2
    ORDER BY waits.task_id LIMIT $3
"""
SELECT_KEPT = """
    SELECT * FROM kept_events
    WHERE expires > $1 AND ($2::text IS NULL OR trigger = $2) AND (event_id, key) > ($3, $4)
    ORDER BY event_id, key LIMIT $5
"""
# By row address, SKIP LOCKED: replicas sweeping at once share the rows (as rejections).
PRUNE_WAITS = """
    DELETE FROM waits WHERE ctid = ANY(ARRAY(
        SELECT waits.ctid FROM waits LEFT JOIN tasks ON tasks.id = waits.task_id
        WHERE tasks.id IS NULL OR tasks.state <> 'dispatched' OR tasks.attempt <> waits.attempt
        LIMIT $1 FOR UPDATE OF waits SKIP LOCKED))
"""
PRUNE_KEPT = """
    DELETE FROM kept_events WHERE ctid = ANY(ARRAY(
        SELECT ctid FROM kept_events WHERE expires < $1 ORDER BY expires
        LIMIT $2 FOR UPDATE SKIP LOCKED))
"""


class PostgresWaitsTx:
    """The StoreTx operations on waits and kept events (a mixin of PostgresTx)."""

    async def fetch(self, sql: str, *args: Any) -> list[asyncpg.Record]:
        raise NotImplementedError

    async def execute(self, sql: str, *args: Any) -> int:
        raise NotImplementedError

    async def lock_wait_keys(self, keys: Collection[WaitKey]) -> None:
        if keys:
            await self.fetch(LOCK_KEYS, *columns(sorted(set(keys))), WAIT_LOCK_CLASS)

    async def waiting_on(self, keys: Collection[WaitKey]) -> list[tuple[Wait, Task]]:
        if not keys:
            return []
        rows = await self.fetch(SELECT_WAITING, *columns(list(set(keys))))
        return [(wait_from_row(row, "wait_"), task_from_row(row)) for row in rows]

    async def insert_waits(self, waits: Sequence[Wait]) -> None:
        latest = {(w.task_id, w.attempt): w for w in waits}  # one row per key per statement
        rows = [
            (w.task_id, w.attempt, w.trigger, w.key, w.registered_at, w.deadline)
            for w in latest.values()
        ]
        if rows:
            await self.execute(UPSERT_WAITS, *columns(rows))

    async def delete_waits(self, task_ids: Collection[str]) -> None:
        if task_ids:
            await self.execute(DELETE_WAITS, list(task_ids))

    async def keep_events(self, kept: Sequence[KeptEvent], most: Mapping[str, int]) -> None:
        rows = [
            (k.trigger, k.key, k.event_id, k.received_at, k.expires, k.outcome, text(k.error))
            for k in kept
        ]
        if rows:
            await self.execute(INSERT_KEPT, *columns(rows))
        if most:
            await self.execute(TRIM_KEPT, list(most), list(most.values()))

    async def kept_for(self, keys: Collection[WaitKey], now: float) -> list[KeptEvent]:
        if not keys:
            return []
        rows = await self.fetch(SELECT_KEPT_FOR, *columns(list(set(keys))), now)
        return [kept_from_row(row, with_payload=True) for row in rows]


class PostgresWaitsStore:
    """Listings and retention of waits and kept events (a mixin of PostgresStore)."""

    def transaction(self) -> AbstractAsyncContextManager[PostgresTx]:
        raise NotImplementedError

    async def _fetch(self, sql: str, *args: Any) -> list[asyncpg.Record]:
        raise NotImplementedError

    async def list_waits(
        self, *, trigger: str | None = None, cursor: str | None = None, limit: int = 100
    ) -> Page[Wait]:
        limit = max(1, limit)
        rows = await self._fetch(SELECT_WAITS, trigger, cursor or "", limit + 1)
        return page_of(
            rows, limit, lambda row: wait_from_row(row, with_task=True), lambda wait: wait.task_id
        )

    async def list_kept_events(
        self,
        *,
        now: float,
        trigger: str | None = None,
        cursor: str | None = None,
        limit: int = 100,
    ) -> Page[KeptEvent]:
        event_id, _, key = (cursor or "").partition(":")
        limit = max(1, limit)
        rows = await self._fetch(SELECT_KEPT, now, trigger, event_id, key, limit + 1)
        return page_of(rows, limit, kept_from_row, kept_cursor)

    async def prune_waits(self, limit: int) -> int:
        async with self.transaction() as tx:
            return await tx.execute(PRUNE_WAITS, limit)

    async def prune_kept_events(self, before: float, limit: int) -> int:
        async with self.transaction() as tx:
            return await tx.execute(PRUNE_KEPT, before, limit)
