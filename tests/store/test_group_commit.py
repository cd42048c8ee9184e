"""Group commit on a real SQLite file: grouping, durability before resuming, failure isolation.

Several tests need logical transactions that share one group. `together` arranges it
without any timing: the first transaction stays open (its body waits on an event) until
every other one has queued on the writer, so all of them join the group it opened.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from contextlib import closing
from pathlib import Path

import pytest

from orchestrator.records import Task
from orchestrator.store import SqliteStore, StoreUnavailable
from orchestrator.store.group_commit import GroupCommit
from orchestrator.store.sqlite_tx import SqliteTx

Body = Callable[[SqliteTx], Awaitable[None]]


class Boom(Exception):
    """A failure inside a transaction body that has nothing to do with the store."""


@pytest.fixture
async def sqlite_store(tmp_path: Path) -> AsyncIterator[SqliteStore]:
    store = SqliteStore(tmp_path / "group.db")
    await store.open()
    yield store
    await store.close()


@pytest.fixture
def wal_connection(tmp_path: Path) -> Iterator[sqlite3.Connection]:
    """A raw connection set up the way SqliteStore sets up its writer, with one table."""
    conn = sqlite3.connect(tmp_path / "raw.db", isolation_level=None, check_same_thread=False)
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("CREATE TABLE t (n INTEGER NOT NULL)")
    yield conn
    conn.close()


def committed_meta(path: str) -> dict[str, str]:
    """The meta table as another connection sees it: only what is committed."""
    with closing(sqlite3.connect(path)) as db:
        return dict(db.execute("SELECT key, value FROM meta").fetchall())


def setter(key: str) -> Body:
    async def body(tx: SqliteTx) -> None:
        await tx.insert_meta(key, "set")

    return body


def failing(key: str, error: BaseException) -> Body:
    async def body(tx: SqliteTx) -> None:
        await tx.insert_meta(key, "set")
        raise error

    return body


async def commit(store: SqliteStore, body: Body) -> None:
    """Run `body` in one logical transaction."""
    async with store.transaction() as tx:
        await body(tx)


async def together(store: SqliteStore, bodies: Sequence[Body]) -> list[BaseException | None]:
    """Run each body in its own logical transaction, all in one group; what each raised."""
    opened = asyncio.Event()
    all_queued = asyncio.Event()
    queued = 0

    async def first() -> None:
        async with store.transaction() as tx:
            await bodies[0](tx)
            opened.set()
            await all_queued.wait()

    async def member(body: Body) -> None:
        nonlocal queued
        queued += 1
        if queued == len(bodies) - 1:
            all_queued.set()
        # Nothing awaits between the count and the queue: counted means queued on the writer.
        await commit(store, body)

    holder = asyncio.ensure_future(first())
    async with asyncio.timeout(2):
        await opened.wait()
        return await asyncio.gather(
            holder, *(member(body) for body in bodies[1:]), return_exceptions=True
        )


async def test_concurrent_transactions_all_commit_in_fewer_groups(
    sqlite_store: SqliteStore,
) -> None:
    """Fifty logical transactions started at once all commit, in fewer SQLite commits."""
    transactions_before, groups_before = sqlite_store.commit_stats

    async with asyncio.timeout(5):
        await asyncio.gather(*(commit(sqlite_store, setter(f"key-{n}")) for n in range(50)))
    transactions, groups = sqlite_store.commit_stats
    assert transactions - transactions_before == 50
    assert 1 <= groups - groups_before < 50
    assert committed_meta(sqlite_store.path) == {f"key-{n}": "set" for n in range(50)}


async def test_each_caller_resumes_only_after_its_commit(sqlite_store: SqliteStore) -> None:
    """When a transaction's block exits, another connection already sees its write."""
    unseen: list[str] = []

    async def write_then_look(n: int) -> None:
        async with sqlite_store.transaction() as tx:
            await tx.insert_meta(f"durable-{n}", "yes")
        if f"durable-{n}" not in committed_meta(sqlite_store.path):
            unseen.append(f"durable-{n}")

    async with asyncio.timeout(5):
        await asyncio.gather(*(write_then_look(n) for n in range(10)))
    assert unseen == []


async def test_a_failing_body_is_rolled_back_alone(sqlite_store: SqliteStore) -> None:
    """A body that raises loses its own write and gets its error; its group commits the rest."""
    boom = Boom("handler bug")
    _, groups_before = sqlite_store.commit_stats
    outcomes = await together(
        sqlite_store, [setter("first"), setter("before"), failing("failed", boom), setter("after")]
    )
    assert outcomes == [None, None, boom, None]
    assert sqlite_store.commit_stats[1] - groups_before == 1, "all four shared one group"
    assert committed_meta(sqlite_store.path) == {"first": "set", "before": "set", "after": "set"}


async def test_a_failed_commit_fails_every_member(sqlite_store: SqliteStore) -> None:
    """When SQLite refuses the COMMIT, every member of the group gets StoreUnavailable."""

    async def poison(tx: SqliteTx) -> None:
        # A deferred foreign key is only checked at COMMIT, which then fails for the group.
        # No StoreTx operation defers them: the test reaches for the transaction's connection.
        tx._conn.execute("PRAGMA defer_foreign_keys = ON")
        await tx.insert_tasks([Task("tsk_orphan", "run_missing", "step", "0", None)])

    _, groups_before = sqlite_store.commit_stats
    outcomes = await together(sqlite_store, [setter("first"), poison, setter("last")])
    assert sqlite_store.commit_stats[1] - groups_before == 1, "all three shared one group"
    assert all(isinstance(outcome, StoreUnavailable) for outcome in outcomes), outcomes
    assert "FOREIGN KEY" in str(outcomes[0])
    assert committed_meta(sqlite_store.path) == {}
    await commit(sqlite_store, setter("later"))  # the writer is usable again
    assert committed_meta(sqlite_store.path) == {"later": "set"}


async def test_an_operational_error_in_a_body_surfaces_as_store_unavailable(
    sqlite_store: SqliteStore,
) -> None:
    """sqlite3.OperationalError raised in a body reaches the caller as StoreUnavailable."""
    cause = sqlite3.OperationalError("disk I/O error")
    with pytest.raises(StoreUnavailable, match="disk I/O error") as raised:
        await commit(sqlite_store, failing("lost", cause))
    assert raised.value.__cause__ is cause
    await commit(sqlite_store, setter("next"))  # resumes after any commit of the failed one
    assert committed_meta(sqlite_store.path) == {"next": "set"}


async def test_a_transaction_waits_for_another_connections_write_lock(
    sqlite_store: SqliteStore,
) -> None:
    """Behind another connection's BEGIN IMMEDIATE a transaction waits, with the loop free,
    and commits once that connection commits."""
    with closing(sqlite3.connect(sqlite_store.path, isolation_level=None)) as other:
        other.execute("BEGIN IMMEDIATE")
        other.execute("INSERT INTO meta (key, value) VALUES ('other', 'set')")
        waiting = asyncio.ensure_future(commit(sqlite_store, setter("ours")))
        # A read through the store's reader thread completes while the write waits.
        assert await sqlite_store.history(limit=1) == []
        assert not waiting.done()
        other.execute("COMMIT")
        async with asyncio.timeout(2):
            await waiting
    assert committed_meta(sqlite_store.path) == {"other": "set", "ours": "set"}


async def test_max_group_caps_the_members_of_one_commit(
    wal_connection: sqlite3.Connection,
) -> None:
    """With max_group=2, five transactions queued at once take at least three commits."""
    commits = GroupCommit(wal_connection, max_group=2)

    async def insert(n: int) -> None:
        async with commits.transaction() as conn:
            conn.execute("INSERT INTO t (n) VALUES (?)", (n,))

    try:
        async with asyncio.timeout(2):
            await asyncio.gather(*(insert(n) for n in range(5)))
    finally:
        await commits.close()
    assert commits.transactions == 5
    assert commits.groups >= 3
    rows = wal_connection.execute("SELECT n FROM t ORDER BY n").fetchall()
    assert [n for (n,) in rows] == list(range(5))


class _FailingEnd(sqlite3.Connection):
    """A connection whose COMMIT and ROLLBACK fail once `failing` is set (a dying disk)."""

    failing = False

    def execute(self, sql: str, *args: object) -> sqlite3.Cursor:
        if self.failing and sql in ("COMMIT", "ROLLBACK"):
            raise sqlite3.OperationalError("disk I/O error")
        return super().execute(sql, *args)  # type: ignore[arg-type]


async def test_members_are_told_when_commit_and_rollback_both_fail(tmp_path: Path) -> None:
    """A failed COMMIT whose ROLLBACK fails too still answers every member StoreUnavailable
    rather than leaving them waiting forever."""
    conn = sqlite3.connect(
        tmp_path / "dying.db", isolation_level=None, check_same_thread=False, factory=_FailingEnd
    )
    with closing(conn):
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute("CREATE TABLE t (n INTEGER)")
        commits = GroupCommit(conn)
        conn.failing = True
        with pytest.raises(StoreUnavailable, match="disk I/O error"):
            async with asyncio.timeout(5), commits.transaction() as db:
                db.execute("INSERT INTO t VALUES (1)")
        conn.failing = False
        await commits.close()
