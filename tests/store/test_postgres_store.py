"""PostgreSQL-specific: what the contract cannot say about a networked, shared database.

Errors reach callers as StoreUnavailable (503) or StoreConflict (try again) while the server
is down, the pool is exhausted, or transactions deadlock; rows read in a transaction stay
locked until it ends; two stores ("replicas") racing on one task complete it once; each
batch operation is a constant number of statements whatever its size.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import replace
from typing import Any

import asyncpg
import pytest

from orchestrator.barrier import BarrierStatus
from orchestrator.records import HistoryEntry, Task
from orchestrator.states import TaskState
from orchestrator.store import BarrierWrite, CallbackToken, StoreConflict, StoreUnavailable
from orchestrator.store.postgres import PostgresStore
from orchestrator.store.postgres_tx import COPY_ROWS, PostgresTx
from tests import pg
from tests.pg import PostgresServer
from tests.store.conftest import T0, make_barrier, make_event, make_run, make_task, seed_run, write

pytestmark = pytest.mark.usefixtures("postgres")


@pytest.fixture
async def url(postgres: PostgresServer) -> AsyncIterator[str]:
    name = await pg.fresh_schema()
    yield postgres.url(search_path=name)
    await pg.recycle_schema(name)


@pytest.fixture
async def store(url: str) -> AsyncIterator[PostgresStore]:
    store = PostgresStore(url, pool_max=4, pool_timeout=5)
    await store.open()
    yield store
    await store.close()


async def seed_tasks(store: PostgresStore, count: int, state: TaskState) -> list[Task]:
    run = await seed_run(store)
    tasks = [replace(make_task(run, key=f"k{i}"), state=state) for i in range(count)]
    async with store.transaction() as tx:
        await tx.insert_tasks(tasks)
    return tasks


# Errors.


async def test_a_stopped_server_answers_store_unavailable_until_it_is_back(
    store: PostgresStore, postgres: PostgresServer
) -> None:
    """While the server is down, ping, reads and transactions raise StoreUnavailable; once it
    is back the same store answers again (the pool reconnects)."""
    run = await seed_run(store)
    postgres.stop()
    try:
        with pytest.raises(StoreUnavailable):
            await store.ping()
        with pytest.raises(StoreUnavailable):
            await store.get_run(run.id)
        with pytest.raises(StoreUnavailable):
            async with store.transaction() as tx:
                await tx.runs({run.id})
    finally:
        postgres.start()
    await store.ping()
    assert await store.get_run(run.id) == run


async def test_an_exhausted_pool_answers_store_unavailable_after_its_timeout(url: str) -> None:
    """With every connection held by a transaction, a read waits pool_timeout and then raises
    StoreUnavailable rather than waiting for ever."""
    store = PostgresStore(url, pool_max=1, pool_timeout=0.2)
    await store.open()
    try:
        async with store.transaction():
            with pytest.raises(StoreUnavailable):
                await store.get_run("run_missing")
    finally:
        await store.close()


async def test_a_deadlock_is_a_conflict_for_one_and_commits_the_other(
    store: PostgresStore,
) -> None:
    """Two transactions that lock two tasks in opposite orders: the server breaks the deadlock,
    one raises StoreConflict (to be tried again) and the other commits."""
    first, second = await seed_tasks(store, 2, TaskState.PENDING)
    holding = [asyncio.Event(), asyncio.Event()]

    async def lock(mine: Task, theirs: Task, me: int) -> None:
        async with store.transaction() as tx:
            await tx.tasks({mine.id})
            holding[me].set()
            await holding[1 - me].wait()
            await tx.tasks({theirs.id})

    async with asyncio.timeout(30):
        outcomes = await asyncio.gather(
            lock(first, second, 0), lock(second, first, 1), return_exceptions=True
        )
    assert sorted(type(outcome).__name__ for outcome in outcomes) == ["NoneType", "StoreConflict"]


async def test_a_row_inserted_twice_is_a_conflict(store: PostgresStore) -> None:
    """Inserting a run that another transaction committed raises StoreConflict: the caller
    tries again and finds it."""
    event = make_event()
    run = make_run(event)
    async with store.transaction() as tx:
        await tx.insert_event(event)
        await tx.insert_run(run)
    with pytest.raises(StoreConflict):
        async with store.transaction() as tx:
            await tx.insert_run(run)
    assert await store.get_run(run.id) == run


async def test_a_nul_in_free_text_is_stored_as_a_replacement_character(
    store: PostgresStore,
) -> None:
    """PostgreSQL text cannot hold NUL: an error message or barrier reason carrying one is
    stored with U+FFFD in its place rather than failing the write."""
    run = await seed_run(store)
    task = replace(make_task(run), state=TaskState.FAILED, error="bad\x00byte")
    barrier = replace(make_barrier(run), status=BarrierStatus.FAILED, reason="x\x00y")
    async with store.transaction() as tx:
        await tx.insert_tasks([task])
        await tx.insert_barriers([barrier])
    assert await store.get_task(task.id) == replace(task, error="bad\ufffdbyte")
    assert await store.barriers_of_run(run.id) == [replace(barrier, reason="x\ufffdy")]


# Locks and races between replicas.


async def test_rows_read_in_a_transaction_stay_locked_until_it_ends(
    store: PostgresStore, url: str
) -> None:
    """tasks() and barriers() lock what they return: another connection cannot lock those
    rows until the transaction ends, and can at once afterwards."""
    [task] = await seed_tasks(store, 1, TaskState.PENDING)
    barrier = make_barrier(await seed_run(store, now=T0 + 1))
    async with store.transaction() as tx:
        await tx.insert_barriers([barrier])
    probes = [
        ("SELECT 1 FROM tasks WHERE id = $1 FOR UPDATE NOWAIT", task.id),
        ("SELECT 1 FROM barriers WHERE run_id = $1 FOR UPDATE NOWAIT", barrier.run_id),
    ]
    other = await asyncpg.connect(url)
    try:
        async with store.transaction() as tx:
            await tx.tasks({task.id})
            await tx.barriers({(barrier.run_id, barrier.step)})
            for sql, key in probes:
                with pytest.raises(asyncpg.LockNotAvailableError):
                    async with other.transaction():
                        await other.fetch(sql, key)
        for sql, key in probes:
            async with other.transaction():
                assert len(await other.fetch(sql, key)) == 1
    finally:
        await other.close()


async def test_two_replicas_racing_on_one_callback_complete_it_once(url: str) -> None:
    """Twenty transactions on two stores complete one dispatched task and count it at its
    barrier: exactly one completion applies and the barrier counts it once."""
    replicas = [PostgresStore(url, pool_max=5) for _ in range(2)]
    for replica in replicas:
        await replica.open()
    try:
        run = await seed_run(replicas[0])
        task = replace(make_task(run), state=TaskState.DISPATCHED)
        barrier = replace(make_barrier(run), expected=1, required=1)
        async with replicas[0].transaction() as tx:
            await tx.insert_tasks([task])
            await tx.insert_barriers([barrier])

        async def complete(store: PostgresStore, n: int) -> bool:
            async with store.transaction() as tx:
                # Each sender's view is the task as dispatched; the store decides who is first.
                done = replace(task, state=TaskState.SUCCEEDED, output={"by": n})
                if not await tx.write_tasks([write(done, TaskState.DISPATCHED)]):
                    return False
                key = (run.id, barrier.step)
                counted = (await tx.barriers({key}))[key]
                after = replace(counted, succeeded=counted.succeeded + 1)
                assert await tx.write_barriers([BarrierWrite(after, counted)]) == {key}
                return True

        async with asyncio.timeout(30):
            applied = await asyncio.gather(*(complete(replicas[n % 2], n) for n in range(20)))
        assert applied.count(True) == 1
        assert [b.succeeded for b in await replicas[1].barriers_of_run(run.id)] == [1]
    finally:
        for replica in replicas:
            await replica.close()


# Round trips.


class Counting:
    """A connection that counts the statements sent through it."""

    def __init__(self, conn: Any) -> None:
        self._conn = conn
        self.statements = 0

    def __getattr__(self, name: str) -> Any:
        method = getattr(self._conn, name)

        def counted(*args: Any, **kwargs: Any) -> Any:
            self.statements += 1
            return method(*args, **kwargs)

        return counted


def counting(tx: Any) -> Counting:
    assert isinstance(tx, PostgresTx)
    conn = Counting(tx._conn)
    tx._conn = conn  # type: ignore[assignment]
    return conn


@pytest.mark.parametrize("size", [1, 50, COPY_ROWS + 1, 2000])
async def test_each_batch_operation_is_one_statement_whatever_its_size(
    store: PostgresStore, size: int
) -> None:
    """Inserting, reading, locking and conditionally writing a batch of tasks, tokens and
    history costs one statement per operation, for 1 row as for 2,000 (history two: it
    takes its ordering lock first)."""
    run = await seed_run(store)
    tasks = [make_task(run, key=f"k{i}") for i in range(size)]
    async with store.transaction() as tx:
        conn = counting(tx)
        await tx.insert_tasks(tasks)
        await tx.tasks({task.id for task in tasks})
        await tx.tasks_of_steps([(run.id, "research")])
        dispatched = [replace(task, state=TaskState.DISPATCHED) for task in tasks]
        applied = await tx.write_tasks([write(task, TaskState.PENDING) for task in dispatched])
        tokens = [CallbackToken(f"{i:064x}", task.id, 1) for i, task in enumerate(tasks)]
        await tx.insert_callback_tokens(tokens)
        await tx.append_history([HistoryEntry("task_queued", T0, run.id, t.id) for t in tasks])
    assert len(applied) == size
    assert conn.statements == 7
