"""The Store contract for rows of no run and for readiness: rejection counts, their pruning
with history entries that belong to no run, and the bounded write probe.

The tests speak only the Store and StoreTx protocols, except where a backend's write lock
must be held by someone else: `hold_the_write_lock` does that each backend's own way.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, closing
from pathlib import Path

import pytest

from orchestrator.records import HistoryEntry
from orchestrator.states import RunState
from orchestrator.store import MemoryStore, RejectionCount, Store, StoreUnavailable
from orchestrator.store.postgres import PostgresStore
from orchestrator.store.postgres_tx import PostgresTx
from tests.store.conftest import T0, StoreFactory, seed_run

MINUTE = 60


def count(
    minute: int, reason: str = "unknown_token", n: int = 1, route: str = "/callbacks/{token}"
) -> RejectionCount:
    at = float(minute)
    return RejectionCount(minute, route, reason, n, at, at + 1, {"status": 404, "target": reason})


@asynccontextmanager
async def hold_the_write_lock(stores: StoreFactory, store: Store) -> AsyncIterator[None]:
    """Another writer holds the store's write lock until the block ends: a second SQLite
    connection in BEGIN IMMEDIATE, an open transaction of the memory store, or on
    PostgreSQL a transaction holding the lock on the table the probe writes."""
    if isinstance(store, MemoryStore | PostgresStore):
        entered, leave = asyncio.Event(), asyncio.Event()

        async def holder() -> None:
            async with store.transaction() as tx:
                if isinstance(tx, PostgresTx):
                    await tx.execute("LOCK TABLE meta IN EXCLUSIVE MODE")
                entered.set()
                await leave.wait()

        task = asyncio.ensure_future(holder())
        await entered.wait()
        try:
            yield
        finally:
            leave.set()
            await task
        return
    with closing(sqlite3.connect(Path(stores.database), isolation_level=None)) as other:
        other.execute("BEGIN IMMEDIATE")
        try:
            yield
        finally:
            other.execute("ROLLBACK")


async def test_rejection_counts_add_up_per_key_and_keep_the_first_sample(store: Store) -> None:
    """Counts of one (minute, route, reason) sum across calls; the first sample stays."""
    minute = int(T0 // MINUTE) * MINUTE
    first = count(minute, n=3)
    await store.add_rejections([first, count(minute, "bad_signature")])
    later = RejectionCount(minute, first.route, first.reason, 2, minute + 7, minute + 50, {"o": 1})
    await store.add_rejections([later])
    stored = {c.key: c for c in await store.rejections()}
    summed = stored[first.key]
    assert (summed.count, summed.sample) == (5, first.sample)
    assert (summed.first_at, summed.last_at) == (first.first_at, later.last_at)
    assert stored[(minute, first.route, "bad_signature")].count == 1


async def test_rejections_read_from_a_minute_on_oldest_first_and_limited(store: Store) -> None:
    """`since` drops earlier minutes, rows come by minute, route and reason, `limit` caps them."""
    base = int(T0 // MINUTE) * MINUTE
    await store.add_rejections(
        [
            count(base + 2 * MINUTE, "b"),
            count(base, "z"),
            count(base + MINUTE, "a"),
            count(base, "a"),
        ]
    )
    every = [(c.minute - base, c.reason) for c in await store.rejections()]
    assert every == [(0, "a"), (0, "z"), (60, "a"), (120, "b")]
    later = [(c.minute - base, c.reason) for c in await store.rejections(since=base + 1)]
    assert later == [(60, "a"), (120, "b")]
    assert len(await store.rejections(limit=3)) == 3


async def test_no_counts_is_no_write(store: Store) -> None:
    """Adding nothing stores nothing and raises nothing."""
    await store.add_rejections([])
    assert await store.rejections() == []


async def test_prune_unattached_takes_old_rows_of_no_run_and_leaves_the_rest(
    store: Store,
) -> None:
    """Old history entries without a run and old counts go, in batches; a run's entries and
    recent rows stay."""
    run = await seed_run(store, status=RunState.SUCCEEDED)
    async with store.transaction() as tx:
        await tx.append_history(
            [
                *(HistoryEntry("hook_rejected", T0 + i, data={"i": i}) for i in range(3)),
                HistoryEntry("run_started", T0, run.id),
                HistoryEntry("hook_rejected", T0 + 1000, data={"recent": True}),
            ]
        )
    minute = int(T0 // MINUTE) * MINUTE
    await store.add_rejections([count(minute), count(minute + 1200)])

    assert await store.prune_unattached(T0 + 900, limit=2) == 2 + 1
    assert await store.prune_unattached(T0 + 900, limit=2) == 1
    assert await store.prune_unattached(T0 + 900, limit=2) == 0
    left = await store.history(limit=100)
    assert [(e.type, e.run_id) for e in left] == [
        ("run_started", run.id),
        ("hook_rejected", None),
    ]
    assert [c.minute for c in await store.rejections()] == [minute + 1200]


async def test_a_write_probe_commits_on_an_idle_store(store: Store) -> None:
    """With nobody else writing, the probe returns, and writes never show in history or counts."""
    await store.probe_write(1.0)
    await store.probe_write(1.0)
    assert await store.history() == []
    assert await store.rejections() == []


async def test_a_write_probe_fails_within_its_bound_while_another_writer_holds_the_lock(
    stores: StoreFactory, store: Store
) -> None:
    """While someone else holds the write lock the probe raises StoreUnavailable (within its
    bound, well before the test's own timeout), and succeeds once the lock is free."""
    async with hold_the_write_lock(stores, store):
        with pytest.raises(StoreUnavailable):
            async with asyncio.timeout(5):
                await store.probe_write(0.2)
    async with asyncio.timeout(5):
        await store.probe_write(1.0)


async def test_a_write_probe_on_a_closed_store_fails(stores: StoreFactory) -> None:
    """A store that is not open cannot write: the probe says so rather than hanging."""
    store = await stores.open()
    await stores.close(store)
    with pytest.raises(StoreUnavailable):
        await store.probe_write(0.5)
