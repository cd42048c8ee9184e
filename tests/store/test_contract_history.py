"""The Store contract, reading back: history, list_runs paging and unfinished work.

The tests speak only the Store and StoreTx protocols, never SQL, so every backend runs them
unchanged through the `store` fixture.
"""

from __future__ import annotations

import itertools
from dataclasses import replace
from typing import Any

import pytest

from orchestrator.barrier import BarrierStatus
from orchestrator.records import HistoryEntry, Run
from orchestrator.states import RunState, TaskState
from orchestrator.store import Store
from tests.store.conftest import T0, make_barrier, make_task, seed_run

MAX_PAGES = 20  # a cursor that never advances fails the test instead of hanging it


async def all_runs(
    store: Store, limit: int, cursor: str | None = None, **filters: Any
) -> list[list[Run]]:
    """Every page of list_runs from `cursor`, following next_cursor until it is None."""
    pages = []
    for _ in range(MAX_PAGES):
        page = await store.list_runs(cursor=cursor, limit=limit, **filters)
        pages.append(page.items)
        if page.next_cursor is None:
            return pages
        cursor = page.next_cursor
    raise AssertionError(f"list_runs still had a next page after {MAX_PAGES} pages")


async def all_history(store: Store, limit: int) -> list[list[HistoryEntry]]:
    """Every page of history, each starting after the last id of the one before."""
    pages: list[list[HistoryEntry]] = []
    after = 0
    for _ in range(MAX_PAGES):
        page = await store.history(after=after, limit=limit)
        if not page:
            return pages
        pages.append(page)
        after = page[-1].id or 0
    raise AssertionError(f"history still had entries after {MAX_PAGES} pages")


# History.


async def test_append_history_assigns_increasing_ids(store: Store) -> None:
    """append_history returns the entries with strictly increasing ids, across transactions."""
    run = await seed_run(store)
    entries = [HistoryEntry(f"e{i}", T0 + i, run.id, data={"i": i}) for i in range(3)]
    async with store.transaction() as tx:
        first = await tx.append_history(entries)
    async with store.transaction() as tx:
        second = await tx.append_history([HistoryEntry("e3", T0 + 3, run.id)])
    ids = [entry.id for entry in [*first, *second]]
    assert None not in ids
    numbers = [i or 0 for i in ids]
    assert all(a < b for a, b in itertools.pairwise(numbers))
    assert [replace(entry, id=None) for entry in first] == entries


async def test_history_round_trips_every_field(store: Store) -> None:
    """A history entry reads back equal, ids and nested data included."""
    run = await seed_run(store)
    task = make_task(run)
    entry = HistoryEntry(
        "task_succeeded", T0 + 1.5, run.id, task.id, "research", {"output": {"a": [1, None]}}
    )
    async with store.transaction() as tx:
        await tx.insert_tasks([task])
        stored = await tx.append_history([entry, HistoryEntry("bare", T0 + 2)])
    assert await store.history() == stored
    assert stored[1] == HistoryEntry("bare", T0 + 2, id=stored[1].id)


async def test_history_filters_by_run_type_and_after(store: Store) -> None:
    """history() returns entries after `after`, of one run and of the given types, oldest first."""
    run, other = await seed_run(store), await seed_run(store, now=T0 + 1)
    async with store.transaction() as tx:
        stored = await tx.append_history(
            [
                HistoryEntry("run_started", T0, run.id),
                HistoryEntry("run_started", T0, other.id),
                HistoryEntry("task_succeeded", T0 + 1, run.id),
                HistoryEntry("task_succeeded", T0 + 1, other.id),
                HistoryEntry("run_succeeded", T0 + 2, run.id),
            ]
        )
    ids = [entry.id or 0 for entry in stored]
    assert await store.history(run_id=run.id) == [stored[0], stored[2], stored[4]]
    assert await store.history(types=["task_succeeded"]) == [stored[2], stored[3]]
    assert await store.history(run_id=other.id, types=["run_started"]) == [stored[1]]
    both = [stored[0], stored[1], stored[4]]
    assert await store.history(types=["run_started", "run_succeeded"]) == both
    assert await store.history(after=ids[2]) == stored[3:]
    assert await store.history(after=ids[1], run_id=run.id) == [stored[2], stored[4]]
    assert await store.history(after=ids[-1]) == []


async def test_history_pages_in_id_order(store: Store) -> None:
    """Paging history with `after` = last id and a limit visits every entry once, in order."""
    async with store.transaction() as tx:
        stored = await tx.append_history(HistoryEntry(f"e{i}", T0 + i) for i in range(7))
    pages = await all_history(store, limit=3)
    assert [len(page) for page in pages] == [3, 3, 1]
    assert [entry for page in pages for entry in page] == stored


# Listing runs.


async def seed_runs(store: Store, count: int, start: float = T0, **kwargs: Any) -> list[Run]:
    """`count` runs created one second apart from `start`, oldest first."""
    return [await seed_run(store, now=start + i, **kwargs) for i in range(count)]


async def test_list_runs_is_newest_first(store: Store) -> None:
    """list_runs returns runs newest first."""
    runs = await seed_runs(store, 5)
    page = await store.list_runs()
    assert page.items == runs[::-1]
    assert page.next_cursor is None


async def test_list_runs_filters_by_workflow_and_status(store: Store) -> None:
    """list_runs keeps only runs of the given workflow and status, newest first."""
    outreach = await seed_run(store, now=T0)
    done = await seed_run(store, status=RunState.SUCCEEDED, now=T0 + 1)
    billing = await seed_run(store, workflow="billing", now=T0 + 2)
    failed_billing = await seed_run(store, workflow="billing", status=RunState.FAILED, now=T0 + 3)
    assert (await store.list_runs(workflow="outreach")).items == [done, outreach]
    assert (await store.list_runs(status=RunState.RUNNING)).items == [billing, outreach]
    only = await store.list_runs(workflow="billing", status=RunState.FAILED)
    assert only.items == [failed_billing]
    assert (await store.list_runs(workflow="nothing")).items == []


@pytest.mark.parametrize(("count", "sizes"), [(25, [10, 10, 5]), (20, [10, 10]), (0, [0])])
async def test_list_runs_cursor_visits_every_run_once(
    store: Store, count: int, sizes: list[int]
) -> None:
    """Following next_cursor returns every run exactly once and ends with None, no empty page."""
    runs = await seed_runs(store, count)
    pages = await all_runs(store, limit=10)
    assert [len(page) for page in pages] == sizes
    assert [run for page in pages for run in page] == runs[::-1]


async def test_list_runs_cursor_pages_a_filtered_listing(store: Store) -> None:
    """The cursor keeps the filter: pages of one workflow hold only that workflow's runs."""
    outreach = await seed_runs(store, 7, workflow="outreach")
    await seed_runs(store, 7, start=T0 + 100, workflow="billing")
    pages = await all_runs(store, limit=3, workflow="outreach")
    assert [len(page) for page in pages] == [3, 3, 1]
    assert [run for page in pages for run in page] == outreach[::-1]


async def test_list_runs_cursor_is_stable_under_new_runs(store: Store) -> None:
    """Runs created after the first page is read cause no duplicate and no gap later on."""
    runs = await seed_runs(store, 25)
    first = await store.list_runs(limit=10)
    newer = await seed_runs(store, 5, start=T0 + 1000)
    assert first.next_cursor is not None
    later = await all_runs(store, limit=10, cursor=first.next_cursor)
    seen = [*first.items, *(run for page in later for run in page)]
    assert seen == runs[::-1]
    assert (await store.list_runs(limit=5)).items == newer[::-1]


# Recovery.


async def test_unfinished_returns_open_work_of_running_runs_only(store: Store) -> None:
    """unfinished() holds pending and dispatched tasks and waiting barriers of running runs."""
    running = await seed_run(store)
    finished = await seed_run(store, status=RunState.SUCCEEDED, now=T0 + 1)
    failed = await seed_run(store, status=RunState.FAILED, now=T0 + 2)
    pending = make_task(running, key="pending")
    dispatched = replace(make_task(running, key="dispatched"), state=TaskState.DISPATCHED)
    done = [
        replace(make_task(running, key=state.value), state=state)
        for state in (
            TaskState.SUCCEEDED,
            TaskState.FAILED,
            TaskState.TIMED_OUT,
            TaskState.CANCELLED,
        )
    ]
    waiting = make_barrier(running, "research")
    async with store.transaction() as tx:
        await tx.insert_tasks([pending, dispatched, *done])
        await tx.insert_tasks([make_task(finished, key="p"), make_task(failed, key="p")])
        await tx.insert_barriers(
            [
                waiting,
                replace(make_barrier(running, "draft"), status=BarrierStatus.OPEN),
                replace(make_barrier(running, "send"), status=BarrierStatus.FAILED),
            ]
        )
        await tx.insert_barriers([make_barrier(finished), make_barrier(failed)])
    unfinished = await store.unfinished()
    assert {task.id: task for task in unfinished.tasks} == {
        pending.id: pending,
        dispatched.id: dispatched,
    }
    assert unfinished.barriers == [waiting]


async def test_unfinished_is_empty_on_a_fresh_store(store: Store) -> None:
    """A fresh store has nothing to recover."""
    unfinished = await store.unfinished()
    assert (unfinished.tasks, unfinished.barriers) == ([], [])
