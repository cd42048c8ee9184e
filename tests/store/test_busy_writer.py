"""A SQLite store behind another connection's write lock: writes wait at most the bound.

A second sqlite3 connection in BEGIN IMMEDIATE stands for another process holding the
lock (a backup, a migration, an operator's shell). The bounds here are short, and the
assertions on time have slack of a second or more: they tell "waits the bound" from
"waits the bound once per queued transaction" or "waits forever", not milliseconds.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import closing
from pathlib import Path

import pytest

from orchestrator.store import SqliteStore, StoreUnavailable

BOUND = 0.4


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[SqliteStore]:
    store = SqliteStore(tmp_path / "busy.db", busy_timeout=BOUND)
    await store.open()
    yield store
    await store.close()


@pytest.fixture
def other(store: SqliteStore) -> Iterator[sqlite3.Connection]:
    """Another connection holding the write lock (until the test commits or it closes)."""
    with closing(sqlite3.connect(store.path, isolation_level=None)) as conn:
        conn.execute("BEGIN IMMEDIATE")
        yield conn
        if conn.in_transaction:
            conn.execute("ROLLBACK")


async def write(store: SqliteStore, key: str) -> None:
    async with store.transaction() as tx:
        await tx.insert_meta(key, "set")


async def test_a_write_behind_another_lock_fails_after_the_bound(
    store: SqliteStore, other: sqlite3.Connection
) -> None:
    """A transaction that cannot get the lock raises StoreUnavailable once the bound has
    passed, naming it, and leaves nothing behind."""
    started = time.monotonic()
    with pytest.raises(StoreUnavailable, match=r"no write within 0\.4 s"):
        async with asyncio.timeout(5):
            await write(store, "lost")
    assert time.monotonic() - started >= BOUND * 0.9
    other.execute("ROLLBACK")
    await write(store, "after")
    assert "lost" not in {row[0] for row in other.execute("SELECT key FROM meta")}


async def test_transactions_queued_behind_the_lock_fail_together_not_one_bound_each(
    store: SqliteStore, other: sqlite3.Connection
) -> None:
    """Eight transactions started together all fail within about one bound, not eight."""
    started = time.monotonic()
    async with asyncio.timeout(10):
        outcomes = await asyncio.gather(
            *(write(store, f"k{n}") for n in range(8)), return_exceptions=True
        )
    assert all(isinstance(outcome, StoreUnavailable) for outcome in outcomes), outcomes
    assert time.monotonic() - started < BOUND * 4


async def test_once_the_bound_is_spent_later_writes_fail_without_waiting_again(
    store: SqliteStore, other: sqlite3.Connection
) -> None:
    """After a BEGIN waited the bound in vain, a later write tries once without waiting,
    fails, and starts no second wait in the commit thread."""
    commits = store._commits
    assert commits is not None
    with pytest.raises(StoreUnavailable):
        await write(store, "first")
    waits = commits.waiting_begins
    with pytest.raises(StoreUnavailable):
        await write(store, "second")
    assert commits.waiting_begins == waits


async def test_the_lock_released_within_the_bound_lets_the_write_through(
    store: SqliteStore, other: sqlite3.Connection
) -> None:
    """A write waiting for the lock commits when the other connection commits in time."""
    waiting = asyncio.ensure_future(write(store, "ours"))
    assert await store.history(limit=1) == []  # reads go on while the write waits
    other.execute("COMMIT")
    async with asyncio.timeout(5):
        await waiting
    assert await store.server_key()  # and the writer works on


async def test_after_the_lock_is_released_writes_go_through_again(
    store: SqliteStore, other: sqlite3.Connection
) -> None:
    """Contention is forgotten as soon as a BEGIN succeeds: the next write commits."""
    for key in ("a", "b"):
        with pytest.raises(StoreUnavailable):
            await write(store, key)
    other.execute("ROLLBACK")
    async with asyncio.timeout(5):
        await write(store, "c")
        await write(store, "d")
    keys = {row[0] for row in other.execute("SELECT key FROM meta")}
    assert {"c", "d"} <= keys
    assert not {"a", "b"} & keys


async def test_point_reads_answer_while_the_lock_is_held(
    store: SqliteStore, other: sqlite3.Connection
) -> None:
    """Token lookups and run reads use the point reader, which the write lock never blocks."""
    started = time.monotonic()
    assert await store.callback_target("no-such-hash") is None
    assert await store.get_run("run_missing") is None
    assert time.monotonic() - started < BOUND
