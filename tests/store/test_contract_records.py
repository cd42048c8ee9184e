"""The Store contract, records: events, runs, barriers and tasks.

The tests speak only the Store and StoreTx protocols, never SQL, so every backend runs them
unchanged through the `store` fixture.
"""

from __future__ import annotations

from dataclasses import MISSING, fields, replace
from typing import Any

import pytest

from orchestrator.barrier import BarrierStatus
from orchestrator.ids import new_id
from orchestrator.model import JoinPolicy
from orchestrator.records import Task
from orchestrator.states import RunState, TaskState
from orchestrator.store import BarrierWrite, Store
from tests.store.conftest import (
    T0,
    make_barrier,
    make_event,
    make_run,
    make_task,
    seed_run,
    write,
)

# Events.


async def test_event_round_trips(store: Store) -> None:
    """An inserted event reads back equal, nested payload included."""
    event = make_event(dedup_key="d-1", lead={"name": "Ada", "tags": ["x", None]}, n=3)
    async with store.transaction() as tx:
        assert await tx.insert_event(event) == (event, True)
        assert await tx.get_event(event.id) == event
    assert await store.get_event(event.id) == event
    assert await store.get_event(new_id("evt")) is None


TRACEPARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


async def test_event_keeps_its_trace_context(store: Store) -> None:
    """An event's traceparent and tracestate read back as stored, and None where it had none."""
    traced = replace(
        make_event(dedup_key="t-1"), traceparent=TRACEPARENT, tracestate="congo=t61rcWkgMzE,ro=1"
    )
    plain = make_event(dedup_key="t-2")
    async with store.transaction() as tx:
        await tx.insert_event(traced)
        await tx.insert_event(plain)
        assert await tx.get_event(traced.id) == traced
    assert await store.get_event(traced.id) == traced
    stored_plain = await store.get_event(plain.id)
    assert stored_plain is not None
    assert (stored_plain.traceparent, stored_plain.tracestate) == (None, None)


async def test_redelivery_keeps_the_first_events_trace(store: Store) -> None:
    """A redelivery with another trace context returns the first event with its own trace."""
    first = replace(make_event(dedup_key="d-9"), traceparent=TRACEPARENT)
    again = replace(
        make_event(dedup_key="d-9", now=T0 + 1),
        traceparent="00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-00",
    )
    async with store.transaction() as tx:
        await tx.insert_event(first)
    async with store.transaction() as tx:
        assert await tx.insert_event(again) == (first, False)


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
        assert await tx.runs({run.id}) == {run.id: run}
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
        await tx.insert_barriers([barrier])
        assert await tx.barriers({(run.id, "research")}) == {(run.id, "research"): barrier}
    assert await store.barriers_of_run(run.id) == [barrier]


async def test_barriers_of_run_returns_only_that_runs_barriers(store: Store) -> None:
    """barriers_of_runs and barriers_of_run return every barrier of the run, none of another's."""
    run, other = await seed_run(store), await seed_run(store, now=T0 + 1)
    research, draft = make_barrier(run, "research"), make_barrier(run, "draft")
    async with store.transaction() as tx:
        await tx.insert_barriers([research])
        await tx.insert_barriers([draft, make_barrier(other, "research")])
        assert {b.step: b for b in await tx.barriers_of_runs([run.id])} == {
            "research": research,
            "draft": draft,
        }
        assert await tx.barriers({(run.id, "missing")}) == {}
    assert {b.step: b for b in await store.barriers_of_run(run.id)} == {
        "research": research,
        "draft": draft,
    }


async def test_write_barriers_writes_when_status_and_counts_are_expected(store: Store) -> None:
    """write_barriers from the stored status and counts writes counts, status, times and reason."""
    run = await seed_run(store)
    barrier = make_barrier(run)
    async with store.transaction() as tx:
        await tx.insert_barriers([barrier])
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
        assert await tx.write_barriers([BarrierWrite(opened, barrier)]) == {(run.id, "research")}
    assert await store.barriers_of_run(run.id) == [opened]


async def test_write_barriers_with_stale_status_changes_nothing(store: Store) -> None:
    """write_barriers applies nothing and writes nothing once the barrier left `expected`."""
    run = await seed_run(store)
    barrier = make_barrier(run)
    opened = replace(barrier, succeeded=4, status=BarrierStatus.OPEN, decided_at=T0 + 1)
    async with store.transaction() as tx:
        await tx.insert_barriers([barrier])
        assert await tx.write_barriers([BarrierWrite(opened, barrier)]) == {(run.id, "research")}
        failed = replace(barrier, failed=1, status=BarrierStatus.FAILED, reason="late")
        assert await tx.write_barriers([BarrierWrite(failed, barrier)]) == set()
        missing = replace(barrier, step="missing")
        assert await tx.write_barriers([BarrierWrite(missing, missing)]) == set()
    assert await store.barriers_of_run(run.id) == [opened]


# Tasks.


async def test_insert_tasks_stores_many_at_once(store: Store) -> None:
    """insert_tasks stores a whole fan-out in one call, each task readable by id."""
    run = await seed_run(store)
    tasks = [make_task(run, key=f"lead-{i}") for i in range(50)]
    async with store.transaction() as tx:
        await tx.insert_tasks(tasks)
        assert await tx.tasks({tasks[7].id}) == {tasks[7].id: tasks[7]}
        assert await tx.tasks({new_id("tsk")}) == {}
    assert {task.id: task for task in await store.tasks_of_run(run.id)} == {
        task.id: task for task in tasks
    }


async def test_tasks_of_steps_filters_by_run_and_step(store: Store) -> None:
    """tasks_of_steps returns the tasks of the steps asked for, never another run's; Store's
    tasks_of_run returns every task of the run."""
    run, other = await seed_run(store), await seed_run(store, now=T0 + 1)
    research = [make_task(run, "research", key) for key in "abc"]
    draft = [make_task(run, "draft", key) for key in "ab"]
    async with store.transaction() as tx:
        await tx.insert_tasks([*research, *draft, make_task(other, "research", "a")])
        every = {task.id for task in [*research, *draft]}
        both = [(run.id, "research"), (run.id, "draft")]
        assert {task.id for task in await tx.tasks_of_steps(both)} == every
        assert {task.id for task in await tx.tasks_of_steps([(run.id, "draft")])} == {
            task.id for task in draft
        }
        assert await tx.tasks_of_steps([(run.id, "missing")]) == []
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
        wait_window=45.0,
        queued_at=T0 + 0.5,
        owner="rep_a",
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
    """A task's output written by write_tasks, any JSON value, reads back equal."""
    run = await seed_run(store)
    task = replace(make_task(run), state=TaskState.DISPATCHED)
    done = replace(task, state=TaskState.SUCCEEDED, finished_at=T0 + 1, output=output)
    async with store.transaction() as tx:
        await tx.insert_tasks([task])
        assert await tx.write_tasks([write(done, TaskState.DISPATCHED)]) == {task.id}
    async with store.transaction() as tx:
        stored = (await tx.tasks({task.id}))[task.id]
    assert stored == done
    assert type(stored.output) is type(output)


async def test_write_tasks_applies_from_expected_state_and_attempt(store: Store) -> None:
    """write_tasks writes the task when state and attempt both match the stored ones."""
    run = await seed_run(store)
    task = make_task(run)
    dispatched = replace(task, state=TaskState.DISPATCHED, started_at=T0 + 1, due_at=T0 + 61)
    async with store.transaction() as tx:
        await tx.insert_tasks([task])
        assert await tx.write_tasks([write(dispatched, TaskState.PENDING)]) == {task.id}
        assert await tx.tasks({task.id}) == {task.id: dispatched}
    assert await store.tasks_of_run(run.id) == [dispatched]


async def test_write_tasks_from_wrong_state_changes_nothing(store: Store) -> None:
    """A second report for a finished task does not apply and leaves the first result."""
    run = await seed_run(store)
    task = replace(make_task(run), state=TaskState.DISPATCHED)
    succeeded = replace(task, state=TaskState.SUCCEEDED, output={"n": 1}, finished_at=T0 + 1)
    failed = replace(task, state=TaskState.FAILED, error="boom", finished_at=T0 + 2)
    async with store.transaction() as tx:
        await tx.insert_tasks([task])
        assert await tx.write_tasks([write(succeeded, TaskState.DISPATCHED)]) == {task.id}
        assert await tx.write_tasks([write(failed, TaskState.DISPATCHED)]) == set()
        unknown = replace(failed, id=new_id("tsk"))
        assert await tx.write_tasks([write(unknown, TaskState.DISPATCHED)]) == set()
    assert await store.tasks_of_run(run.id) == [succeeded]


async def test_write_tasks_with_stale_attempt_changes_nothing(store: Store) -> None:
    """A late report for attempt 1 of a task now dispatched at attempt 2 does not apply."""
    run = await seed_run(store)
    retried = replace(make_task(run), state=TaskState.DISPATCHED, attempt=2, started_at=T0 + 9)
    late = replace(retried, state=TaskState.SUCCEEDED, attempt=1, output={"stale": True})
    async with store.transaction() as tx:
        await tx.insert_tasks([retried])
        assert await tx.write_tasks([write(late, TaskState.DISPATCHED, attempt=1)]) == set()
    assert await store.tasks_of_run(run.id) == [retried]


async def test_write_tasks_changes_the_state_never_the_item_or_identity(store: Store) -> None:
    """A write changes what a move may change; the task's item, run, step and item key stay
    as they were inserted."""
    run, other = await seed_run(store), await seed_run(store, now=T0 + 1)
    task = make_task(run)
    done = replace(task, state=TaskState.SUCCEEDED, output={"ok": True}, finished_at=T0 + 3)
    moved = replace(done, run_id=other.id, step="draft", item_key="z", item={"other": 1})
    async with store.transaction() as tx:
        await tx.insert_tasks([task])
        assert await tx.write_tasks([write(moved, TaskState.PENDING)]) == {task.id}
        assert await tx.tasks({task.id}) == {task.id: done}
    assert await store.tasks_of_run(run.id) == [done]
