"""The Store contract for completion by key: waits on (trigger, key), events kept for waits
registered later, their listings and their retention, on every backend."""

from __future__ import annotations

import asyncio
import itertools
from dataclasses import replace
from typing import Any

import pytest

from orchestrator.records import Event, Run, Task
from orchestrator.states import TaskState
from orchestrator.store import KeptEvent, Store, Wait
from tests.store.conftest import T0, make_event, make_task, seed_run, write


async def dispatched_task(store: Store, run: Run, key: str = "a") -> Task:
    """A task of `run`, stored and moved to dispatched on attempt 1."""
    task = make_task(run, key=key)
    async with store.transaction() as tx:
        await tx.insert_tasks([task])
        moved = task.replace(state=TaskState.DISPATCHED, awaiting=True)
        assert await tx.write_tasks([write(moved, TaskState.PENDING)]) == {task.id}
    return moved


def wait_on(task: Task, key: str = "pi_1", trigger: str = "stripe", at: float = T0) -> Wait:
    return Wait(trigger, key, task.id, task.attempt, at, at + 3600)


DELIVERIES = itertools.count()


async def stored_event(store: Store, trigger: str = "stripe", **payload: Any) -> Event:
    event = make_event(trigger=trigger, dedup_key=f"delivery-{next(DELIVERIES)}", **payload)
    async with store.transaction() as tx:
        assert (await tx.insert_event(event))[1]
    return event


def kept(event: Event, key: str = "pi_1", at: float = T0, expires: float = T0 + 3600) -> KeptEvent:
    return KeptEvent(event.trigger, key, event.id, at, expires, "succeeded")


async def test_a_wait_is_found_with_its_task_while_the_task_waits(store: Store) -> None:
    """waiting_on answers the waits on the keys asked for, each with its dispatched task."""
    run = await seed_run(store)
    first, second = await dispatched_task(store, run, "a"), await dispatched_task(store, run, "b")
    async with store.transaction() as tx:
        await tx.insert_waits([wait_on(first, at=T0 + 1), wait_on(second, "pi_2", at=T0)])
    async with store.transaction() as tx:
        found = await tx.waiting_on([("stripe", "pi_1"), ("stripe", "pi_9"), ("github", "pi_2")])
        both = await tx.waiting_on([("stripe", "pi_1"), ("stripe", "pi_2")])
    assert [(wait.key, task.id, task.state) for wait, task in found] == [
        ("pi_1", first.id, TaskState.DISPATCHED)
    ]
    assert found[0][0] == wait_on(first, at=T0 + 1)
    assert [task.id for _, task in both] == [second.id, first.id], "oldest wait first"


async def test_a_wait_of_a_finished_or_retried_task_is_not_found(store: Store) -> None:
    """Only a task still dispatched on the wait's own attempt is waiting."""
    run = await seed_run(store)
    done, retried = await dispatched_task(store, run, "a"), await dispatched_task(store, run, "b")
    async with store.transaction() as tx:
        await tx.insert_waits([wait_on(done), wait_on(retried)])
        finished = done.replace(state=TaskState.SUCCEEDED)
        assert await tx.write_tasks([write(finished, TaskState.DISPATCHED)])
        again = retried.replace(attempt=2)
        assert await tx.write_tasks([write(again, TaskState.DISPATCHED)])
    async with store.transaction() as tx:
        assert await tx.waiting_on([("stripe", "pi_1")]) == []


async def test_a_wait_registered_again_replaces_the_first_and_deleting_forgets_it(
    store: Store,
) -> None:
    """The same attempt registering again replaces its wait; delete_waits removes it."""
    run = await seed_run(store)
    task = await dispatched_task(store, run)
    async with store.transaction() as tx:
        await tx.insert_waits([wait_on(task, "old")])
    async with store.transaction() as tx:
        await tx.insert_waits([wait_on(task, "new")])
    async with store.transaction() as tx:
        assert await tx.waiting_on([("stripe", "old")]) == []
        assert [w.key for w, _ in await tx.waiting_on([("stripe", "new")])] == ["new"]
        await tx.delete_waits([task.id, "tsk_unknown"])
        assert await tx.waiting_on([("stripe", "new")]) == []
    async with store.transaction() as tx:
        assert await tx.waiting_on([("stripe", "new")]) == []


async def test_waits_of_a_transaction_that_raised_are_gone(store: Store) -> None:
    """A wait is stored with its transaction or not at all."""
    run = await seed_run(store)
    task = await dispatched_task(store, run)

    async def register_then_fail() -> None:
        async with store.transaction() as tx:
            await tx.insert_waits([wait_on(task)])
            raise RuntimeError("rolled back")

    with pytest.raises(RuntimeError):
        await register_then_fail()
    async with store.transaction() as tx:
        assert await tx.waiting_on([("stripe", "pi_1")]) == []


async def test_kept_events_come_back_with_their_payloads_until_they_expire(store: Store) -> None:
    """kept_for answers the unexpired events kept under the keys asked for, oldest first."""
    early = await stored_event(store, id="pi_1", n=1)
    later = await stored_event(store, id="pi_1", n=2, x=0)
    other = await stored_event(store, "github", id="pi_1")
    async with store.transaction() as tx:
        await tx.keep_events(
            [
                kept(later, at=T0 + 5),
                kept(early, at=T0 + 1),
                kept(other),
                kept(early, "gone", expires=T0 + 10),
            ],
            {},
        )
    async with store.transaction() as tx:
        found = await tx.kept_for([("stripe", "pi_1"), ("stripe", "gone")], now=T0 + 10)
    assert [(k.event_id, k.payload) for k in found] == [
        (early.id, early.payload),
        (later.id, later.payload),
    ]
    assert found[0] == replace(kept(early, at=T0 + 1), payload=early.payload)


async def test_keeping_an_event_twice_keeps_the_first(store: Store) -> None:
    """An event already kept under a key stays as it was kept."""
    event = await stored_event(store, id="pi_1")
    async with store.transaction() as tx:
        await tx.keep_events([kept(event)], {})
    async with store.transaction() as tx:
        await tx.keep_events([replace(kept(event), outcome="failed", error="no")], {})
        (found,) = await tx.kept_for([("stripe", "pi_1")], now=T0)
    assert (found.outcome, found.error) == ("succeeded", None)


async def test_kept_events_are_bounded_per_trigger_the_oldest_going_first(store: Store) -> None:
    """With a bound of 2, a trigger keeps its two newest events; others keep theirs."""
    events = [await stored_event(store, id=f"pi_{n}", n=n) for n in range(4)]
    github = await stored_event(store, "github", id="x")
    async with store.transaction() as tx:
        await tx.keep_events([kept(github, "x")], {})
        for n, event in enumerate(events):
            await tx.keep_events([kept(event, f"pi_{n}", at=T0 + n)], {"stripe": 2})
    async with store.transaction() as tx:
        keys = [("stripe", f"pi_{n}") for n in range(4)]
        assert [k.key for k in await tx.kept_for(keys, now=T0)] == ["pi_2", "pi_3"]
        assert [k.key for k in await tx.kept_for([("github", "x")], now=T0)] == ["x"]
        await tx.keep_events([], {"stripe": 0})
        assert await tx.kept_for(keys, now=T0) == []


async def test_waits_are_listed_by_task_with_run_and_step_filtered_and_paged(
    store: Store,
) -> None:
    """list_waits shows waiting tasks only, by task id, per trigger, a page at a time."""
    run = await seed_run(store)
    tasks = [await dispatched_task(store, run, key) for key in "abc"]
    async with store.transaction() as tx:
        await tx.insert_waits(
            [wait_on(tasks[0]), wait_on(tasks[1], "k2"), wait_on(tasks[2], "g", "github")]
        )
        finished = tasks[1].replace(state=TaskState.FAILED)
        assert await tx.write_tasks([write(finished, TaskState.DISPATCHED)])
    everything = await store.list_waits()
    assert [w.task_id for w in everything.items] == [tasks[0].id, tasks[2].id]
    assert (everything.items[0].run_id, everything.items[0].step) == (run.id, tasks[0].step)
    assert everything.next_cursor is None
    first = await store.list_waits(limit=1)
    assert ([w.task_id for w in first.items], first.next_cursor) == ([tasks[0].id], tasks[0].id)
    rest = await store.list_waits(cursor=first.next_cursor, limit=1)
    assert ([w.task_id for w in rest.items], rest.next_cursor) == ([tasks[2].id], None)
    github = await store.list_waits(trigger="github")
    assert [w.key for w in github.items] == ["g"]


async def test_kept_events_are_listed_unexpired_filtered_and_paged(store: Store) -> None:
    """list_kept_events shows what has not expired, by event then key, a page at a time."""
    one = await stored_event(store, id="1")
    two = await stored_event(store, "github", id="2", n=2)
    async with store.transaction() as tx:
        await tx.keep_events(
            [kept(one, "b"), kept(one, "a:x"), kept(two, "c"), kept(one, "old", expires=T0)], {}
        )
    everything = await store.list_kept_events(now=T0)
    assert [(k.event_id, k.key) for k in everything.items] == [
        (one.id, "a:x"),
        (one.id, "b"),
        (two.id, "c"),
    ]
    assert everything.items[0].payload is None
    first = await store.list_kept_events(now=T0, limit=1)
    assert first.next_cursor == f"{one.id}:a:x"
    rest = await store.list_kept_events(now=T0, cursor=first.next_cursor, limit=5)
    assert [k.key for k in rest.items] == ["b", "c"]
    assert rest.next_cursor is None
    github = await store.list_kept_events(now=T0, trigger="github")
    assert [k.key for k in github.items] == ["c"]


async def test_pruning_removes_waits_that_wait_no_more_and_expired_kept_events(
    store: Store,
) -> None:
    """prune_waits takes waits of finished, retried or vanished tasks; prune_kept_events
    takes kept events expired before the time given; each at most `limit` a call."""
    run = await seed_run(store)
    live, done = await dispatched_task(store, run, "a"), await dispatched_task(store, run, "b")
    ghost = Wait("stripe", "pi_1", "tsk_vanished", 1, T0)
    event = await stored_event(store, id="pi_1")
    async with store.transaction() as tx:
        await tx.insert_waits([wait_on(live), wait_on(done), ghost])
        assert await tx.write_tasks(
            [write(done.replace(state=TaskState.SUCCEEDED), TaskState.DISPATCHED)]
        )
        await tx.keep_events(
            [kept(event, "x", expires=T0 + 1), kept(event, "y", expires=T0 + 2), kept(event, "z")],
            {},
        )
    assert await store.prune_waits(limit=1) == 1
    assert await store.prune_waits(limit=10) == 1
    assert await store.prune_waits(limit=10) == 0
    assert [w.task_id for w in (await store.list_waits()).items] == [live.id]
    assert await store.prune_kept_events(T0 + 5, limit=1) == 1
    assert await store.prune_kept_events(T0 + 5, limit=10) == 1
    assert await store.prune_kept_events(T0 + 5, limit=10) == 0
    assert [k.key for k in (await store.list_kept_events(now=0.0)).items] == ["z"]


async def test_a_wait_registered_meanwhile_sees_the_event_kept_before_it(store: Store) -> None:
    """Locking a key makes a second transaction on it wait for the first to commit, so a
    wait registered while an event is being kept always finds that event."""
    event = await stored_event(store, id="pi_1")
    key = ("stripe", "pi_1")
    asking = asyncio.Event()

    async def register() -> list[KeptEvent]:
        asking.set()
        async with store.transaction() as tx:
            await tx.lock_wait_keys([key])
            return await tx.kept_for([key], now=T0)

    async with store.transaction() as tx:
        await tx.lock_wait_keys([key, key])
        registering = asyncio.ensure_future(register())
        await asking.wait()
        await tx.keep_events([kept(event)], {})
    async with asyncio.timeout(10):
        found = await registering
    assert [k.event_id for k in found] == [event.id]
