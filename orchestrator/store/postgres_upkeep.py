"""The PostgreSQL store's upkeep: retention sweeps, rejection counts, the readiness probe.

A mixin of PostgresStore (postgres.py), apart because it is upkeep rather than the engine's
traffic: each sweep is a bounded batch in its own transaction, so replicas sweeping at
once share the work (SKIP LOCKED) and callbacks queue between batches, not behind a sweep.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from contextlib import AbstractAsyncContextManager
from typing import Any

import asyncpg

from orchestrator.store.base import RejectionCount, StoreUnavailable
from orchestrator.store.postgres_tx import PostgresTx
from orchestrator.store.rows import dumps

PRUNE_TASK_HISTORY = """
    DELETE FROM history WHERE id IN (
        SELECT history.id FROM runs JOIN history ON history.run_id = runs.id
        WHERE runs.status <> 'running' AND runs.finished_at < $1 AND history.task_id IS NOT NULL
        LIMIT $2)
"""
PRUNE_TASK_PAYLOADS = """
    UPDATE tasks SET item = 'null', output = NULL WHERE id IN (
        SELECT tasks.id FROM runs JOIN tasks ON tasks.run_id = runs.id
        WHERE runs.status <> 'running' AND runs.finished_at < $1
          AND (tasks.output IS NOT NULL OR tasks.item <> 'null')
        LIMIT $2)
"""
PRUNE_EVENT_PAYLOADS = """
    UPDATE events SET payload = '{}' WHERE id IN (
        SELECT events.id FROM events
        WHERE events.payload <> '{}' AND events.received_at < $1
          AND NOT EXISTS (SELECT 1 FROM runs WHERE runs.event_id = events.id
                          AND (runs.status = 'running' OR runs.finished_at >= $1))
        LIMIT $2)
"""
# SKIP LOCKED: replicas sweeping at once share the expired runs instead of queueing.
SELECT_EXPIRED_RUNS = """
    SELECT id FROM runs WHERE status <> 'running' AND finished_at < $1
    LIMIT $2 FOR UPDATE SKIP LOCKED
"""
DELETE_RUN_PARTS = [
    "DELETE FROM callback_receipts WHERE task_id IN"
    " (SELECT id FROM tasks WHERE run_id = ANY($1::text[]))",
    "DELETE FROM callback_tokens WHERE task_id IN"
    " (SELECT id FROM tasks WHERE run_id = ANY($1::text[]))",
    "DELETE FROM history WHERE run_id = ANY($1::text[])",
    "DELETE FROM tasks WHERE run_id = ANY($1::text[])",
    "DELETE FROM barriers WHERE run_id = ANY($1::text[])",
    "DELETE FROM runs WHERE id = ANY($1::text[])",
]
DELETE_ORPHAN_EVENTS = """
    DELETE FROM events WHERE received_at < $1
      AND NOT EXISTS (SELECT 1 FROM runs WHERE runs.event_id = events.id)
"""
PRUNE_UNATTACHED_HISTORY = """
    DELETE FROM history WHERE id IN (
        SELECT id FROM history WHERE run_id IS NULL AND at < $1 ORDER BY at LIMIT $2)
"""
# By row address: the rows the bounded subquery found, and only those, never a walk.
PRUNE_REJECTIONS = """
    DELETE FROM rejections WHERE ctid = ANY(ARRAY(
        SELECT ctid FROM rejections WHERE minute < $1 ORDER BY minute
        LIMIT $2 FOR UPDATE SKIP LOCKED))
"""
UPSERT_REJECTIONS = """
    INSERT INTO rejections (minute, route, reason, count, first_at, last_at, sample)
    SELECT * FROM unnest($1::bigint[], $2::text[], $3::text[], $4::bigint[],
                         $5::double precision[], $6::double precision[], $7::text[])
    ON CONFLICT (minute, route, reason) DO UPDATE SET
        count = rejections.count + excluded.count,
        first_at = least(rejections.first_at, excluded.first_at),
        last_at = greatest(rejections.last_at, excluded.last_at)
"""
SELECT_REJECTIONS = """
    SELECT * FROM rejections WHERE minute >= $1 ORDER BY minute, route, reason LIMIT $2
"""
UPSERT_PROBE = """
    INSERT INTO meta (key, value) VALUES ('ready_probe', $1)
    ON CONFLICT (key) DO UPDATE SET value = excluded.value
"""


class Upkeep:
    """Retention, rejection counts and the write probe, on the store's pool."""

    def transaction(self) -> AbstractAsyncContextManager[PostgresTx]:
        raise NotImplementedError

    async def _fetch(self, sql: str, *args: Any) -> list[asyncpg.Record]:
        raise NotImplementedError

    async def _sweep(self, statements: Sequence[tuple[str, Sequence[Any]]]) -> int:
        async with self.transaction() as tx:
            return sum([await tx.execute(sql, *args) for sql, args in statements])

    async def prune_task_history(self, before: float, limit: int) -> int:
        return await self._sweep([(PRUNE_TASK_HISTORY, (before, limit))])

    async def prune_payloads(self, before: float, limit: int) -> int:
        return await self._sweep(
            [(PRUNE_TASK_PAYLOADS, (before, limit)), (PRUNE_EVENT_PAYLOADS, (before, limit))]
        )

    async def prune_runs(self, before: float, limit: int) -> int:
        async with self.transaction() as tx:
            run_ids = [row["id"] for row in await tx.fetch(SELECT_EXPIRED_RUNS, before, limit)]
            if run_ids:
                for statement in DELETE_RUN_PARTS:
                    await tx.execute(statement, run_ids)
            # Delivery ids go with their last run, and never before the runs' own age.
            await tx.execute(DELETE_ORPHAN_EVENTS, before)
        return len(run_ids)

    async def prune_unattached(self, before: float, limit: int) -> int:
        return await self._sweep(
            [(PRUNE_UNATTACHED_HISTORY, (before, limit)), (PRUNE_REJECTIONS, (int(before), limit))]
        )

    async def add_rejections(self, counts: Sequence[RejectionCount]) -> None:
        if not counts:
            return
        columns = (
            [c.minute for c in counts], [c.route for c in counts], [c.reason for c in counts],
            [c.count for c in counts], [c.first_at for c in counts], [c.last_at for c in counts],
            [dumps(c.sample) for c in counts],
        )  # fmt: skip
        async with self.transaction() as tx:
            await tx.execute(UPSERT_REJECTIONS, *columns)

    async def rejections(self, *, since: float = 0.0, limit: int = 1000) -> list[RejectionCount]:
        rows = await self._fetch(SELECT_REJECTIONS, int(since), max(1, limit))
        return [RejectionCount.from_row(row) for row in rows]

    async def probe_write(self, within: float) -> None:
        """A tiny write that must commit within `within` seconds: what readiness asks."""
        try:
            async with asyncio.timeout(within):
                async with self.transaction() as tx:
                    await tx.execute(UPSERT_PROBE, repr(time.time()))
        except TimeoutError:
            raise StoreUnavailable(f"no write committed within {within:g} s") from None
