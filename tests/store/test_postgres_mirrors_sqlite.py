"""PostgreSQL-specific: where the contract suite leaves a read or a sweep unpinned, the
PostgreSQL store answers exactly as the SQLite store does, given the same rows.

Both stores get one scenario (runs running and finished at several ages, a replayed event,
an orphan event, tasks with and without payloads, task and run history, cron fires with keys
of every shape), then every read is asked of both, and the retention sweeps run on both in
small batches, the stores compared after each batch.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from orchestrator.ids import new_id
from orchestrator.records import Event, HistoryEntry, Run
from orchestrator.states import RunState, TaskState
from orchestrator.store import SqliteStore, Store
from orchestrator.store.postgres import PostgresStore
from tests import pg
from tests.pg import PostgresServer
from tests.store.conftest import T0, make_barrier, make_task

pytestmark = pytest.mark.usefixtures("postgres")

# (created, finished or None, final status) of each run; one event is replayed by two runs.
RUNS = [
    (T0, T0 + 10, RunState.SUCCEEDED),
    (T0 + 1, T0 + 20, RunState.FAILED),
    (T0 + 2, None, RunState.RUNNING),
    (T0 + 3, T0 + 1000, RunState.SUCCEEDED),
    (T0 + 4, T0 + 15, RunState.CANCELLED),
    (T0 + 5, T0 + 30, RunState.SUCCEEDED),  # a replay of the first run's event
]
CRON_KEYS = [
    "2026-11-23T06:42:00Z",
    "2026-11-23T06:43:00Z",
    "2026-11-23T06:42:00.500Z",
    "2026-11-24T00:00:00+01:00",
    "2026-11-2xT00:00:00Z",
    "delivery-7",
    "9999-12-31TZ",
    "2026-01-01T00:00:00Z\n",
    "2025-12-31t23:59:59z",
]


@pytest.fixture
async def stores(tmp_path: Path, postgres: PostgresServer) -> AsyncIterator[list[Store]]:
    """A SQLite store and a PostgreSQL store, each on an empty database, holding the
    scenario."""
    schema = await pg.fresh_schema()
    both: list[Store] = [
        SqliteStore(tmp_path / "mirror.db"),
        PostgresStore(postgres.url(search_path=schema), pool_max=2),
    ]
    try:
        for store in both:
            await store.open()
        records = scenario()
        for store in both:
            await seed(store, records)
        yield both
    finally:
        for store in both:
            await store.close()
        await pg.recycle_schema(schema)


def scenario() -> dict[str, Any]:
    """The records both stores hold, made once so that both hold the same ids."""
    events = [
        Event(new_id("evt", created), "leads", "outreach", created, {"n": i})
        for i, (created, _, _) in enumerate(RUNS[:-1])
    ]
    events.append(Event(new_id("evt", T0 - 5), "leads", "outreach", T0 - 5, {"orphan": True}))
    events += [
        Event(new_id("evt", T0 + 50 + i), "morning", "outreach", T0 + 50 + i, {}, key)
        for i, key in enumerate(CRON_KEYS)
    ]
    runs = []
    for i, (created, _, _) in enumerate(RUNS):
        event = events[0] if i == len(RUNS) - 1 else events[i]
        workflow = "billing" if i % 2 else "outreach"
        runs.append(Run(new_id("run", created), workflow, event.id, RunState.RUNNING, created, {}))
    tasks, history = [], []
    for run in runs:
        for key, output in [("a", {"ok": 1}), ("b", None), ("c", [1, 2])]:
            task = make_task(run, key=key, item=None if key == "b" else {"lead": key})
            task = replace(task, state=TaskState.SUCCEEDED, output=output)
            if key == "b":
                task = replace(task, item=None)
            tasks.append(task)
            history.append(HistoryEntry("task_succeeded", run.created_at + 1, run.id, task.id, "s"))
        history.append(HistoryEntry("run_started", run.created_at, run.id))
        history.append(HistoryEntry("run_succeeded", run.created_at + 2, run.id))
    history.append(HistoryEntry("bare", T0 + 7))
    return {"events": events, "runs": runs, "tasks": tasks, "history": history}


async def seed(store: Store, records: dict[str, Any]) -> None:
    async with store.transaction() as tx:
        for event in records["events"]:
            await tx.insert_event(event)
        for run in records["runs"]:
            await tx.insert_run(run)
        await tx.insert_barriers([make_barrier(run) for run in records["runs"]])
        await tx.insert_tasks(records["tasks"])
        await tx.append_history(records["history"])
        for run, (_, finished, status) in zip(records["runs"], RUNS, strict=True):
            if status is not RunState.RUNNING:
                assert await tx.set_run_status(run.id, RunState.RUNNING, status, finished)


async def state(store: Store) -> dict[str, Any]:
    """Everything a sweep may change, as the store's reads show it."""
    runs = (await store.list_runs(limit=100)).items
    return {
        "runs": runs,
        "tasks": [await store.tasks_of_run(run.id) for run in runs],
        "barriers": [await store.barriers_of_run(run.id) for run in runs],
        "events": [await store.get_event(run.event_id) for run in runs],
        "history": await store.history(limit=1000),
        "unfinished": await store.unfinished(),
    }


async def test_list_runs_answers_alike_for_every_filter(stores: list[Store]) -> None:
    """list_runs with each window, filter, cursor and limit answers the same page on both."""
    queries: list[dict[str, Any]] = [
        {},
        {"limit": 2},
        {"limit": 0},
        {"since": T0 + 1},
        {"until": T0 + 3},
        {"since": T0 + 1, "until": T0 + 4, "limit": 1},
        {"workflow": "billing"},
        {"status": RunState.SUCCEEDED},
        {"status": RunState.RUNNING, "workflow": "outreach"},
        {"since": T0 + 100},
    ]
    for query in queries:
        sqlite, postgres = [await store.list_runs(**query) for store in stores]
        assert sqlite == postgres, query
        if sqlite.next_cursor is not None:
            pages = [await s.list_runs(**query, cursor=sqlite.next_cursor) for s in stores]
            assert pages[0] == pages[1], query


async def test_history_answers_alike_for_every_filter(stores: list[Store]) -> None:
    """history with each of after, run, task, types, since and limit answers the same."""
    runs = (await stores[0].list_runs()).items
    task = (await stores[0].tasks_of_run(runs[0].id))[1]
    queries: list[dict[str, Any]] = [
        {},
        {"limit": 3},
        {"after": 5, "limit": 4},
        {"run_id": runs[1].id},
        {"task_id": task.id},
        {"types": ["run_started", "bare"]},
        {"types": []},
        {"since": T0 + 3},
        {"since": T0 + 3, "types": ["task_succeeded"], "after": 2, "limit": 5},
    ]
    for query in queries:
        sqlite, postgres = [await store.history(**query) for store in stores]
        assert sqlite == postgres, query


async def test_lookups_answer_alike(stores: list[Store]) -> None:
    """last_cron_fire picks the same key among keys of every shape; the event, run and
    deadline reads answer the same."""
    for trigger in ["morning", "leads", "missing"]:
        assert len({await store.last_cron_fire(trigger) for store in stores}) == 1, trigger
    assert await stores[1].last_cron_fire("morning") == "9999-12-31TZ"
    runs = (await stores[0].list_runs()).items
    for run in runs:
        answers = [(await s.runs_of_event(run.event_id), await s.get_run(run.id)) for s in stores]
        assert answers[0] == answers[1]
    for store in stores:
        assert await store.deadlines_before(T0 + 10**6) == []
        assert await store.next_deadline(T0) is None


@pytest.mark.parametrize(
    "before", [T0 + 12, T0 + 25, T0 + 10**6], ids=["few", "some", "all-finished"]
)
async def test_retention_sweeps_in_batches_leave_the_same_rows(
    stores: list[Store], before: float
) -> None:
    """Pruning task history, then payloads, then runs, two rows at a time until a batch
    finds nothing, counts the same on both, batch by batch, and leaves both stores holding
    the same rows (which rows a batch takes is neither store's promise: only the sum is)."""
    sweeps = ["prune_task_history", "prune_payloads", "prune_runs"]
    pruned = 0
    for sweep in sweeps:
        for _ in range(50):  # bounded: a sweep that never finishes fails the test
            counts = [await getattr(store, sweep)(before, 2) for store in stores]
            assert counts[0] == counts[1], sweep
            pruned += counts[0]
            if counts[0] == 0:
                break
        else:
            raise AssertionError(f"{sweep} still found rows after 50 batches")
        assert await state(stores[0]) == await state(stores[1]), sweep
    assert pruned > 0, "the scenario holds something to prune at every age"
    if before > T0 + 1000:
        assert [run.status for run in (await stores[1].list_runs()).items] == [RunState.RUNNING]
