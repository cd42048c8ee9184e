"""SQLite: tasks waiting on an event's key, and events kept for waits registered later.

Mixins of SqliteTx (the transaction's operations, each one statement per batch) and
SqliteStore (listings and retention). SQLite has one writer, so a transaction that
registers a wait and one that keeps an event for the same key never overlap: locking the
keys is nothing to do.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from typing import Any

from orchestrator.records import Task
from orchestrator.store.base import KeptEvent, Page, Wait, WaitKey, kept_cursor, page_of
from orchestrator.store.rows import kept_from_row, task_from_row, wait_from_row

SELECT_WAITING = """
    SELECT tasks.*, waits.trigger AS wait_trigger, waits.key AS wait_key,
           waits.task_id AS wait_task_id, waits.attempt AS wait_attempt,
           waits.registered_at AS wait_registered_at, waits.deadline AS wait_deadline
    FROM waits JOIN tasks ON tasks.id = waits.task_id AND tasks.attempt = waits.attempt
    WHERE (waits.trigger, waits.key) IN (SELECT value ->> 0, value ->> 1 FROM json_each(?))
      AND tasks.state = 'dispatched'
    ORDER BY waits.registered_at, waits.task_id
"""
UPSERT_WAIT = """
    INSERT INTO waits (task_id, attempt, trigger, key, registered_at, deadline)
    VALUES (?, ?, ?, ?, ?, ?)
    ON CONFLICT (task_id, attempt) DO UPDATE SET trigger = excluded.trigger, key = excluded.key,
        registered_at = excluded.registered_at, deadline = excluded.deadline
"""
DELETE_WAITS = "DELETE FROM waits WHERE task_id IN (SELECT value FROM json_each(?))"
INSERT_KEPT = """
    INSERT INTO kept_events (trigger, key, event_id, received_at, expires, outcome, error)
    VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING
"""
# The (most + 1)-th newest of a trigger and every older one go; an index walk of `most`.
TRIM_KEPT = """
    DELETE FROM kept_events WHERE trigger = ? AND (received_at, event_id) <= (
        SELECT received_at, event_id FROM kept_events WHERE trigger = ?
        ORDER BY received_at DESC, event_id DESC LIMIT 1 OFFSET ?)
"""
SELECT_KEPT_FOR = """
    SELECT kept_events.*, events.payload FROM kept_events
    JOIN events ON events.id = kept_events.event_id
    WHERE (kept_events.trigger, kept_events.key) IN
          (SELECT value ->> 0, value ->> 1 FROM json_each(?))
      AND kept_events.expires > ?
    ORDER BY kept_events.received_at, kept_events.event_id
"""
SELECT_WAITS = """
    SELECT waits.*, tasks.run_id, tasks.step FROM waits
    JOIN tasks ON tasks.id = waits.task_id AND tasks.attempt = waits.attempt
    WHERE tasks.state = 'dispatched' AND (?1 IS NULL OR waits.trigger = ?1)
      AND waits.task_id > ?2
    ORDER BY waits.task_id LIMIT ?3
"""
SELECT_KEPT = """
    SELECT * FROM kept_events
    WHERE expires > ?1 AND (?2 IS NULL OR trigger = ?2) AND (event_id, key) > (?3, ?4)
    ORDER BY event_id, key LIMIT ?5
"""
PRUNE_WAITS = """
    DELETE FROM waits WHERE rowid IN (
        SELECT waits.rowid FROM waits LEFT JOIN tasks ON tasks.id = waits.task_id
        WHERE tasks.id IS NULL OR tasks.state != 'dispatched' OR tasks.attempt != waits.attempt
        LIMIT ?)
"""
PRUNE_KEPT = """
    DELETE FROM kept_events WHERE rowid IN (
        SELECT rowid FROM kept_events WHERE expires < ? ORDER BY expires LIMIT ?)
"""


def _pairs(keys: Iterable[WaitKey]) -> str:
    return json.dumps([list(key) for key in keys], separators=(",", ":"))


class SqliteWaitsTx:
    """The StoreTx operations on waits and kept events (a mixin of SqliteTx)."""

    _conn: sqlite3.Connection

    async def lock_wait_keys(self, keys: Collection[WaitKey]) -> None:
        """The writer is this transaction's alone: nothing more to lock."""

    async def waiting_on(self, keys: Collection[WaitKey]) -> list[tuple[Wait, Task]]:
        if not keys:
            return []
        rows = self._conn.execute(SELECT_WAITING, (_pairs(keys),)).fetchall()
        return [(wait_from_row(row, "wait_"), task_from_row(row)) for row in rows]

    async def insert_waits(self, waits: Sequence[Wait]) -> None:
        rows = [
            (w.task_id, w.attempt, w.trigger, w.key, w.registered_at, w.deadline) for w in waits
        ]
        if rows:
            self._conn.executemany(UPSERT_WAIT, rows)

    async def delete_waits(self, task_ids: Collection[str]) -> None:
        if task_ids:
            self._conn.execute(DELETE_WAITS, (json.dumps(list(task_ids)),))

    async def keep_events(self, kept: Sequence[KeptEvent], most: Mapping[str, int]) -> None:
        rows = [
            (k.trigger, k.key, k.event_id, k.received_at, k.expires, k.outcome, k.error)
            for k in kept
        ]
        if rows:
            self._conn.executemany(INSERT_KEPT, rows)
        if most:
            trims = [(trigger, trigger, limit) for trigger, limit in most.items()]
            self._conn.executemany(TRIM_KEPT, trims)

    async def kept_for(self, keys: Collection[WaitKey], now: float) -> list[KeptEvent]:
        if not keys:
            return []
        rows = self._conn.execute(SELECT_KEPT_FOR, (_pairs(keys), now)).fetchall()
        return [kept_from_row(row, with_payload=True) for row in rows]


class SqliteWaitsStore:
    """Listings and retention of waits and kept events (a mixin of SqliteStore)."""

    async def _rows(self, sql: str, params: Sequence[Any]) -> Iterable[sqlite3.Row]:
        raise NotImplementedError

    async def _sweep(self, work: Callable[[sqlite3.Connection], int]) -> int:
        raise NotImplementedError

    async def list_waits(
        self, *, trigger: str | None = None, cursor: str | None = None, limit: int = 100
    ) -> Page[Wait]:
        limit = max(1, limit)
        rows = list(await self._rows(SELECT_WAITS, (trigger, cursor or "", limit + 1)))
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
        rows = list(await self._rows(SELECT_KEPT, (now, trigger, event_id, key, limit + 1)))
        return page_of(rows, limit, kept_from_row, kept_cursor)

    async def prune_waits(self, limit: int) -> int:
        return await self._sweep(lambda db: db.execute(PRUNE_WAITS, (limit,)).rowcount)

    async def prune_kept_events(self, before: float, limit: int) -> int:
        return await self._sweep(lambda db: db.execute(PRUNE_KEPT, (before, limit)).rowcount)
