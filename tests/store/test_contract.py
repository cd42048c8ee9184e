"""The Store contract: one test body, run against every backend through the `store` fixture.

The tests speak only the Store and StoreTx protocols, never SQL, so every backend runs them
unchanged; the few that must look inside a SQLite file ask for `sqlite_file`, which skips
on other backends.
"""

from __future__ import annotations

import asyncio
import itertools
import sqlite3
from contextlib import closing
from dataclasses import MISSING, fields, replace
from pathlib import Path
from typing import Any

import pytest

from orchestrator.barrier import Barrier, BarrierStatus
from orchestrator.ids import new_id
from orchestrator.model import JoinPolicy
from orchestrator.records import Event, HistoryEntry, Run, Task
from orchestrator.states import RunState, TaskState
from orchestrator.store import Store, StoreUnavailable
from orchestrator.store.sqlite import MIGRATIONS
from tests.store.conftest import StoreFactory

T0 = 1_700_000_000.0


class Boom(Exception):
    """Raised inside a transaction to make it roll back."""


def make_event(
    *, trigger: str = "leads", dedup_key: str | None = None, now: float = T0, **payload: Any
) -> Event:
    return Event(new_id("evt", now), trigger, "outreach", now, dict(payload), dedup_key)


def make_run(event: Event, *, workflow: str = "outreach", now: float = T0) -> Run:
    spec = {"name": workflow, "steps": {"research": {"handler": "handlers.demo:research"}}}
    return Run(new_id("run", now), workflow, event.id, RunState.RUNNING, now, spec)


def make_task(run: Run, step: str = "research", key: str = "a", item: Any = None) -> Task:
    return Task(
        new_id("tsk", run.created_at), run.id, step, key, {"lead": key} if item is None else item
    )


def make_barrier(run: Run, step: str = "research", policy: JoinPolicy | None = None) -> Barrier:
    return Barrier(run.id, step, expected=4, required=4, policy=policy or JoinPolicy())


async def seed_run(
    store: Store,
    *,
    workflow: str = "outreach",
    status: RunState = RunState.RUNNING,
    now: float = T0,
) -> Run:
    """A committed event and run; a finished `status` is reached through set_run_status."""
    event = make_event(now=now)
    run = make_run(event, workflow=workflow, now=now)
    async with store.transaction() as tx:
        await tx.insert_event(event)
        await tx.insert_run(run)
        if status is RunState.RUNNING:
            return run
        assert await tx.set_run_status(run.id, RunState.RUNNING, status, now + 1)
    return run.replace(status=status, finished_at=now + 1)


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


def schema_versions(path: Path) -> list[int]:
    with closing(sqlite3.connect(path)) as db:
        return [row[0] for row in db.execute("SELECT version FROM schema_version")]


def set_schema_version(path: Path, version: int) -> None:
    with closing(sqlite3.connect(path)) as db, db:
        db.execute("UPDATE schema_version SET version = ?", (version,))


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
        await tx.insert_barrier(make_barrier(run))
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


# Events.


async def test_event_round_trips(store: Store) -> None:
    """An inserted event reads back equal, nested payload included."""
    event = make_event(dedup_key="d-1", lead={"name": "Ada", "tags": ["x", None]}, n=3)
    async with store.transaction() as tx:
        assert await tx.insert_event(event) == (event, True)
        assert await tx.get_event(event.id) == event
    assert await store.get_event(event.id) == event
    assert await store.get_event(new_id("evt")) is None


async def test_same_dedup_key_returns_the_first_event(store: Store) -> None:
    """A redelivery with the same (trigger, dedup_key) returns the stored event and False."""
    first = make_event(dedup_key="delivery-1", attempt=1)
    again = make_event(dedup_key="delivery-1", now=T0 + 1, attempt=2)
    async with store.transaction() as tx:
        await tx.insert_event(first)
    async with store.transaction() as tx:
        assert await tx.insert_event(again) == (first, False)
        assert await tx.insert_event(again) == (first, False)
    assert await store.get_event(again.id) is None


async def test_same_dedup_key_within_one_transaction(store: Store) -> None:
    """Dedup also holds against an event inserted earlier in the same transaction."""
    first = make_event(dedup_key="delivery-1")
    async with store.transaction() as tx:
        await tx.insert_event(first)
        assert await tx.insert_event(make_event(dedup_key="delivery-1")) == (first, False)


async def test_same_dedup_key_on_another_trigger_is_a_new_event(store: Store) -> None:
    """The dedup key is scoped to its trigger: another trigger's equal key is a new event."""
    leads = make_event(trigger="leads", dedup_key="42")
    stripe = make_event(trigger="stripe", dedup_key="42")
    async with store.transaction() as tx:
        assert await tx.insert_event(leads) == (leads, True)
        assert await tx.insert_event(stripe) == (stripe, True)
    assert await store.get_event(stripe.id) == stripe


async def test_events_without_dedup_key_never_collide(store: Store) -> None:
    """Events with no dedup key are all stored, however many share a trigger."""
    events = [make_event(now=T0 + i) for i in range(3)]
    async with store.transaction() as tx:
        for event in events:
            assert await tx.insert_event(event) == (event, True)
    for event in events:
        assert await store.get_event(event.id) == event


# Runs.


async def test_run_round_trips(store: Store) -> None:
    """An inserted run reads back equal through the transaction and the store."""
    event = make_event()
    run = make_run(event)
    async with store.transaction() as tx:
        await tx.insert_event(event)
        await tx.insert_run(run)
        assert await tx.get_run(run.id) == run
    assert await store.get_run(run.id) == run
    assert await store.get_run(new_id("run")) is None


async def test_set_run_status_moves_from_the_expected_state(store: Store) -> None:
    """set_run_status from the stored state applies the new state and finished time."""
    run = await seed_run(store)
    async with store.transaction() as tx:
        assert await tx.set_run_status(run.id, RunState.RUNNING, RunState.FAILED, T0 + 5)
    assert await store.get_run(run.id) == run.replace(status=RunState.FAILED, finished_at=T0 + 5)
    async with store.transaction() as tx:
        assert await tx.set_run_status(run.id, RunState.FAILED, RunState.RUNNING, None)
    assert await store.get_run(run.id) == run


async def test_set_run_status_from_the_wrong_state_changes_nothing(store: Store) -> None:
    """set_run_status answers False and writes nothing when the run is not in `expected`."""
    run = await seed_run(store, status=RunState.SUCCEEDED)
    async with store.transaction() as tx:
        assert not await tx.set_run_status(run.id, RunState.RUNNING, RunState.FAILED, T0 + 9)
        assert not await tx.set_run_status(new_id("run"), RunState.RUNNING, RunState.FAILED, 1.0)
    stored = await store.get_run(run.id)
    assert stored is not None
    assert (stored.status, stored.finished_at) == (RunState.SUCCEEDED, T0 + 1)


# Barriers.


@pytest.mark.parametrize(
    "policy",
    [
        JoinPolicy(),
        JoinPolicy(mode="any", on_failure="collect"),
        JoinPolicy(mode="quorum", quorum_count=3, on_deadline="proceed"),
        JoinPolicy(mode="quorum", quorum_percent=66.5, on_failure="collect", on_deadline="proceed"),
    ],
    ids=["all", "any", "quorum-count", "quorum-percent"],
)
async def test_barrier_round_trips_with_its_policy(store: Store, policy: JoinPolicy) -> None:
    """A barrier, its join policy included, reads back equal."""
    run = await seed_run(store)
    barrier = replace(make_barrier(run, policy=policy), deadline_at=T0 + 60)
    async with store.transaction() as tx:
        await tx.insert_barrier(barrier)
        assert await tx.get_barrier(run.id, "research") == barrier
    assert await store.barriers_of_run(run.id) == [barrier]


async def test_barriers_of_run_returns_only_that_runs_barriers(store: Store) -> None:
    """barriers_of_run returns every barrier of the run and none of another run's."""
    run, other = await seed_run(store), await seed_run(store, now=T0 + 1)
    research, draft = make_barrier(run, "research"), make_barrier(run, "draft")
    async with store.transaction() as tx:
        await tx.insert_barrier(research)
        await tx.insert_barrier(draft)
        await tx.insert_barrier(make_barrier(other, "research"))
        assert {b.step: b for b in await tx.barriers_of_run(run.id)} == {
            "research": research,
            "draft": draft,
        }
        assert await tx.get_barrier(run.id, "missing") is None
    assert {b.step: b for b in await store.barriers_of_run(run.id)} == {
        "research": research,
        "draft": draft,
    }


async def test_save_barrier_writes_when_status_is_expected(store: Store) -> None:
    """save_barrier from the stored status writes counts, status, times and reason."""
    run = await seed_run(store)
    barrier = make_barrier(run)
    async with store.transaction() as tx:
        await tx.insert_barrier(barrier)
    opened = replace(
        barrier,
        expected=5,
        required=3,
        succeeded=3,
        failed=1,
        status=BarrierStatus.OPEN,
        deadline_at=T0 + 60,
        decided_at=T0 + 7,
        reason="quorum reached",
    )
    async with store.transaction() as tx:
        assert await tx.save_barrier(opened, BarrierStatus.WAITING)
    assert await store.barriers_of_run(run.id) == [opened]


async def test_save_barrier_with_stale_status_changes_nothing(store: Store) -> None:
    """save_barrier answers False and writes nothing once the barrier left `expected`."""
    run = await seed_run(store)
    barrier = make_barrier(run)
    opened = replace(barrier, succeeded=4, status=BarrierStatus.OPEN, decided_at=T0 + 1)
    async with store.transaction() as tx:
        await tx.insert_barrier(barrier)
        assert await tx.save_barrier(opened, BarrierStatus.WAITING)
        failed = replace(barrier, failed=1, status=BarrierStatus.FAILED, reason="late")
        assert not await tx.save_barrier(failed, BarrierStatus.WAITING)
        assert not await tx.save_barrier(replace(barrier, step="missing"), BarrierStatus.WAITING)
    assert await store.barriers_of_run(run.id) == [opened]


# Tasks.


async def test_insert_tasks_stores_many_at_once(store: Store) -> None:
    """insert_tasks stores a whole fan-out in one call, each task readable by id."""
    run = await seed_run(store)
    tasks = [make_task(run, key=f"lead-{i}") for i in range(50)]
    async with store.transaction() as tx:
        await tx.insert_tasks(tasks)
        assert await tx.get_task(tasks[7].id) == tasks[7]
        assert await tx.get_task(new_id("tsk")) is None
    assert {task.id: task for task in await store.tasks_of_run(run.id)} == {
        task.id: task for task in tasks
    }


async def test_tasks_of_run_filters_by_run_and_step(store: Store) -> None:
    """tasks_of_run returns the run's tasks, or one step's, and never another run's."""
    run, other = await seed_run(store), await seed_run(store, now=T0 + 1)
    research = [make_task(run, "research", key) for key in "abc"]
    draft = [make_task(run, "draft", key) for key in "ab"]
    async with store.transaction() as tx:
        await tx.insert_tasks([*research, *draft, make_task(other, "research", "a")])
        every = {task.id for task in [*research, *draft]}
        assert {task.id for task in await tx.tasks_of_run(run.id)} == every
        assert {task.id for task in await tx.tasks_of_run(run.id, "draft")} == {
            task.id for task in draft
        }
        assert await tx.tasks_of_run(run.id, "missing") == []
    assert {task.id for task in await store.tasks_of_run(run.id)} == every


async def test_task_fields_round_trip(store: Store) -> None:
    """Every field of a task, each set away from its default, reads back equal."""
    run = await seed_run(store)
    task = replace(
        make_task(run),
        state=TaskState.FAILED,
        attempt=3,
        due_at=T0 + 30,
        started_at=T0 + 1,
        finished_at=T0 + 2,
        output={"partial": True},
        error="HTTP 502 from crm",
        awaiting=True,
        dispatch_tries=2,
    )
    # A field added to Task must be added here too, so that the store is seen to keep it.
    defaults = {f.name: f.default for f in fields(Task) if f.default is not MISSING}
    assert [name for name, value in defaults.items() if getattr(task, name) == value] == []
    async with store.transaction() as tx:
        await tx.insert_tasks([task])
    assert await store.tasks_of_run(run.id) == [task]


JSON_VALUES = [
    {"lead": {"name": "Zoë", "scores": [1, 2.5, None], "meta": {"ok": True, "none": None}}},
    [{"a": []}, [None, "x"], {}],
    "plain text",
    0,
    False,
    None,
]
JSON_IDS = ["nested-dict", "nested-list", "str", "zero", "false", "none"]


@pytest.mark.parametrize("item", JSON_VALUES, ids=JSON_IDS)
async def test_task_item_round_trips(store: Store, item: Any) -> None:
    """A task's item, any JSON value, reads back equal and of the same type."""
    run = await seed_run(store)
    task = Task(new_id("tsk", T0), run.id, "research", "k", item)
    async with store.transaction() as tx:
        await tx.insert_tasks([task])
    stored = await store.tasks_of_run(run.id)
    assert [t.item for t in stored] == [item]
    assert type(stored[0].item) is type(item)


@pytest.mark.parametrize("output", JSON_VALUES, ids=JSON_IDS)
async def test_task_output_round_trips(store: Store, output: Any) -> None:
    """A task's output written by transition_task, any JSON value, reads back equal."""
    run = await seed_run(store)
    task = replace(make_task(run), state=TaskState.DISPATCHED)
    done = replace(task, state=TaskState.SUCCEEDED, finished_at=T0 + 1, output=output)
    async with store.transaction() as tx:
        await tx.insert_tasks([task])
        assert await tx.transition_task(done, TaskState.DISPATCHED, 1)
    async with store.transaction() as tx:
        stored = await tx.get_task(task.id)
    assert stored == done
    assert type(stored.output) is type(output)


async def test_transition_task_applies_from_expected_state_and_attempt(store: Store) -> None:
    """transition_task writes the task when state and attempt both match the stored ones."""
    run = await seed_run(store)
    task = make_task(run)
    dispatched = replace(task, state=TaskState.DISPATCHED, started_at=T0 + 1, due_at=T0 + 61)
    async with store.transaction() as tx:
        await tx.insert_tasks([task])
        assert await tx.transition_task(dispatched, TaskState.PENDING, 1)
        assert await tx.get_task(task.id) == dispatched
    assert await store.tasks_of_run(run.id) == [dispatched]


async def test_transition_task_from_wrong_state_changes_nothing(store: Store) -> None:
    """A second report for a finished task answers False and leaves the first result."""
    run = await seed_run(store)
    task = replace(make_task(run), state=TaskState.DISPATCHED)
    succeeded = replace(task, state=TaskState.SUCCEEDED, output={"n": 1}, finished_at=T0 + 1)
    failed = replace(task, state=TaskState.FAILED, error="boom", finished_at=T0 + 2)
    async with store.transaction() as tx:
        await tx.insert_tasks([task])
        assert await tx.transition_task(succeeded, TaskState.DISPATCHED, 1)
        assert not await tx.transition_task(failed, TaskState.DISPATCHED, 1)
        assert not await tx.transition_task(
            replace(failed, id=new_id("tsk")), TaskState.DISPATCHED, 1
        )
    assert await store.tasks_of_run(run.id) == [succeeded]


async def test_transition_task_with_stale_attempt_changes_nothing(store: Store) -> None:
    """A late report for attempt 1 of a task now dispatched at attempt 2 answers False."""
    run = await seed_run(store)
    retried = replace(make_task(run), state=TaskState.DISPATCHED, attempt=2, started_at=T0 + 9)
    late = replace(retried, state=TaskState.SUCCEEDED, attempt=1, output={"stale": True})
    async with store.transaction() as tx:
        await tx.insert_tasks([retried])
        assert not await tx.transition_task(late, TaskState.DISPATCHED, 1)
    assert await store.tasks_of_run(run.id) == [retried]


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
    """history() returns entries after `after`, of one run and one type, oldest first."""
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
    assert await store.history(type="task_succeeded") == [stored[2], stored[3]]
    assert await store.history(run_id=other.id, type="run_started") == [stored[1]]
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


# Transactions.


async def write_everything_then_fail(store: Store, run: Run, event: Event, new_run: Run) -> None:
    """One transaction that writes every kind of record, then raises Boom."""
    async with store.transaction() as tx:
        await tx.insert_event(event)
        await tx.insert_run(new_run)
        await tx.insert_barrier(make_barrier(new_run))
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
        await tx.insert_barrier(replace(make_barrier(run), expected=10, required=10))

    async def arrive(n: int) -> None:
        async with store.transaction() as tx:
            barrier = await tx.get_barrier(run.id, "research")
            assert barrier is not None
            counted = replace(barrier, succeeded=barrier.succeeded + 1)
            assert await tx.save_barrier(counted, BarrierStatus.WAITING)
            await tx.append_history([HistoryEntry("arrived", T0 + n, run.id, data={"n": n})])

    await asyncio.gather(*(arrive(n) for n in range(10)))
    barriers = await store.barriers_of_run(run.id)
    assert [barrier.succeeded for barrier in barriers] == [10]
    arrived = await store.history(type="arrived")
    assert sorted(entry.data["n"] for entry in arrived) == list(range(10))


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
        await tx.insert_barrier(waiting)
        await tx.insert_barrier(replace(make_barrier(running, "draft"), status=BarrierStatus.OPEN))
        await tx.insert_barrier(replace(make_barrier(running, "send"), status=BarrierStatus.FAILED))
        await tx.insert_barrier(make_barrier(finished))
        await tx.insert_barrier(make_barrier(failed))
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
