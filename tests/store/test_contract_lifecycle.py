"""The Store contract, lifecycle: opening, migrating, ping and transactions.

The tests speak only the Store and StoreTx protocols, never SQL, so every backend runs them
unchanged through the `store` fixture; the few that must look inside a SQLite file ask for
`sqlite_file`, which skips on other backends. A MemoryStore is its own database, so on it
"a second store" and "the store reopened" are the same object (StoreFactory).
"""

from __future__ import annotations

import asyncio
import sqlite3
from contextlib import closing
from dataclasses import replace
from pathlib import Path

import pytest

from orchestrator.records import Event, HistoryEntry, Run
from orchestrator.states import RunState
from orchestrator.store import BarrierWrite, Store, StoreUnavailable
from orchestrator.store.sqlite_schema import MIGRATIONS
from tests.store.conftest import (
    T0,
    StoreFactory,
    make_barrier,
    make_event,
    make_run,
    make_task,
    schema_versions,
    seed_run,
    set_schema_version,
)


class Boom(Exception):
    """Raised inside a transaction to make it roll back."""


def write_version_1_file(path: Path) -> None:
    """A SQLite file as the first schema left it, holding one event, run and task."""
    with closing(sqlite3.connect(path)) as db, db:
        db.executescript(MIGRATIONS[0])
        db.execute("CREATE TABLE schema_version (version INTEGER NOT NULL)")
        db.execute("INSERT INTO schema_version VALUES (1)")
        db.execute("INSERT INTO events VALUES ('evt_v1', 'leads', 'outreach', 1.0, '{}', NULL)")
        db.execute(
            "INSERT INTO runs VALUES ('run_v1', 'outreach', 'evt_v1', 'running', 1.0, NULL, '{}')"
        )
        db.execute(
            "INSERT INTO tasks (id, run_id, step, item_key, item, state, attempt)"
            " VALUES ('tsk_v1', 'run_v1', 'research', 'a', 'null', 'pending', 1)"
        )


# Opening and migrating.


async def test_open_migrates_a_fresh_database(store: Store) -> None:
    """A freshly opened store holds every kind of record at once."""
    run = await seed_run(store)
    async with store.transaction() as tx:
        await tx.insert_barriers([make_barrier(run)])
        await tx.insert_tasks([make_task(run)])
        await tx.append_history([HistoryEntry("run_started", T0, run.id)])
    assert await store.get_run(run.id) == run
    assert len(await store.barriers_of_run(run.id)) == 1
    assert len(await store.tasks_of_run(run.id)) == 1
    assert [entry.type for entry in await store.history()] == ["run_started"]


async def test_fresh_file_gets_the_current_schema_version(store: Store, sqlite_file: Path) -> None:
    """open() records the number of migrations it applied as the file's schema version."""
    assert schema_versions(sqlite_file) == [len(MIGRATIONS)]


async def test_second_store_on_the_same_database_sees_committed_data(
    store: Store, stores: StoreFactory
) -> None:
    """A second store opened beside a running one migrates nothing away and sees its data."""
    run = await seed_run(store)
    second = await stores.open()
    assert await second.get_run(run.id) == run
    later = await seed_run(second, now=T0 + 1)
    assert await store.get_run(later.id) == later


async def test_reopening_keeps_data(store: Store, stores: StoreFactory) -> None:
    """Closing and opening the database again keeps every committed record."""
    run = await seed_run(store)
    async with store.transaction() as tx:
        await tx.insert_tasks([make_task(run)])
        await tx.append_history([HistoryEntry("run_started", T0, run.id)])
    await stores.close(store)
    reopened = await stores.open()
    assert await reopened.get_run(run.id) == run
    assert len(await reopened.tasks_of_run(run.id)) == 1
    assert len(await reopened.history(run_id=run.id)) == 1


async def test_reopening_does_not_rerun_migrations(
    store: Store, stores: StoreFactory, sqlite_file: Path
) -> None:
    """A second open finds the file current and leaves one schema_version row unchanged."""
    await stores.close(store)
    await stores.open()
    await stores.open()
    assert schema_versions(sqlite_file) == [len(MIGRATIONS)]


async def test_open_migrates_an_older_file_forward(stores: StoreFactory, sqlite_file: Path) -> None:
    """A file left at schema version 1 is migrated to the current version, its rows kept."""
    write_version_1_file(sqlite_file)
    store = await stores.open()
    assert schema_versions(sqlite_file) == [len(MIGRATIONS)]
    run = await store.get_run("run_v1")
    assert run is not None
    assert (run.workflow, run.event_id, run.status) == ("outreach", "evt_v1", RunState.RUNNING)
    assert [task.id for task in await store.tasks_of_run("run_v1")] == ["tsk_v1"]


async def test_newer_schema_is_refused(
    store: Store, stores: StoreFactory, sqlite_file: Path
) -> None:
    """A file migrated by a newer orchestrator is refused with a message saying to upgrade."""
    run = await seed_run(store)
    await stores.close(store)
    newer = len(MIGRATIONS) + 1
    set_schema_version(sqlite_file, newer)
    # The factory closes `refused` at teardown: a refused open() may hold a connection.
    refused = stores.new()
    with pytest.raises(RuntimeError, match=rf"schema version {newer}.*upgrade the orchestrator"):
        await refused.open()
    assert schema_versions(sqlite_file) == [newer]
    set_schema_version(sqlite_file, len(MIGRATIONS))
    assert await (await stores.open()).get_run(run.id) == run


async def test_ping_answers_when_open(store: Store) -> None:
    """ping() returns quietly on an open store."""
    await store.ping()


async def test_ping_raises_store_unavailable_when_closed(stores: StoreFactory) -> None:
    """ping() on a closed store raises StoreUnavailable, the 503 kind of error."""
    store = await stores.open()
    await stores.close(store)
    with pytest.raises(StoreUnavailable):
        await store.ping()


# Transactions.


async def write_everything_then_fail(store: Store, run: Run, event: Event, new_run: Run) -> None:
    """One transaction that writes every kind of record, then raises Boom."""
    async with store.transaction() as tx:
        await tx.insert_event(event)
        await tx.insert_run(new_run)
        await tx.insert_barriers([make_barrier(new_run)])
        await tx.insert_tasks([make_task(new_run)])
        await tx.append_history([HistoryEntry("run_started", T0, new_run.id)])
        assert await tx.set_run_status(run.id, RunState.RUNNING, RunState.CANCELLED, T0 + 1)
        raise Boom


async def test_exception_rolls_back_the_whole_transaction(store: Store) -> None:
    """An exception inside a transaction undoes every write in it, and propagates."""
    run = await seed_run(store)
    event = make_event(dedup_key="rolled-back", now=T0 + 1)
    new_run = make_run(event, now=T0 + 1)
    before = await store.history()
    with pytest.raises(Boom):
        await write_everything_then_fail(store, run, event, new_run)
    assert await store.get_event(event.id) is None
    assert await store.get_run(new_run.id) is None
    assert await store.barriers_of_run(new_run.id) == []
    assert await store.tasks_of_run(new_run.id) == []
    assert await store.history() == before
    assert await store.get_run(run.id) == run
    async with store.transaction() as tx:
        assert await tx.insert_event(event) == (event, True)


async def test_reads_outside_a_transaction_see_only_committed_writes(store: Store) -> None:
    """The store's own reads see a transaction's writes only once it commits."""
    event = make_event()
    async with store.transaction() as tx:
        await tx.insert_event(event)
        assert await store.get_event(event.id) is None
    assert await store.get_event(event.id) == event


async def test_concurrent_transactions_serialize_and_all_commit(store: Store) -> None:
    """Concurrent read-modify-write transactions on one barrier lose no update."""
    run = await seed_run(store)
    async with store.transaction() as tx:
        await tx.insert_barriers([replace(make_barrier(run), expected=10, required=10)])
    key = (run.id, "research")

    async def arrive(n: int) -> None:
        async with store.transaction() as tx:
            barrier = (await tx.barriers({key}))[key]
            counted = replace(barrier, succeeded=barrier.succeeded + 1)
            assert await tx.write_barriers([BarrierWrite(counted, barrier)]) == {key}
            await tx.append_history([HistoryEntry("arrived", T0 + n, run.id, data={"n": n})])

    await asyncio.gather(*(arrive(n) for n in range(10)))
    barriers = await store.barriers_of_run(run.id)
    assert [barrier.succeeded for barrier in barriers] == [10]
    arrived = await store.history(types=["arrived"])
    assert sorted(entry.data["n"] for entry in arrived) == list(range(10))
