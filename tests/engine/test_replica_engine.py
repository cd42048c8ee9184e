"""The engine as one replica of several: who owns a task, whose tasks a joining replica
takes over, and a deadline that a heartbeat on another replica moved.

The in-memory store stands in for a shared one here (its replica operations follow the
contract suite; it carries no notices): the real thing, three processes on PostgreSQL
with one killed, is tests/e2e/test_replicas_e2e.py.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from orchestrator.engine import Engine
from orchestrator.outbox import Outbox
from orchestrator.records import Task
from orchestrator.states import Outcome, TaskState
from orchestrator.store import MemoryStore, Notice, Store
from tests.engine import handlers
from tests.engine.conftest import workflow

MakeEngine = Callable[..., Engine]
SPEC = {"wf": workflow(crm={"handler": "hand_off", "for_each": "event.items", "exclusive": "crm"})}


@pytest.fixture
async def store() -> AsyncIterator[Store]:
    shared = MemoryStore()
    shared.shared = True  # as PostgreSQL is: several engines on it
    await shared.open()
    yield shared
    await shared.close()


@pytest.fixture(autouse=True)
def _clean_handlers() -> None:
    handlers.reset()


async def one_awaiting(engine: Engine, items: int = 2) -> str:
    """Fire wf over `items` items; once the first awaits its callback, the run id (the
    others wait for the exclusive resource)."""
    with engine.bus.subscribe() as subscription:
        fired = await engine.fire("wf", {"items": list(range(items))})
        async with asyncio.timeout(5):
            async for entry in subscription:
                if entry.type == "task_awaiting_callback":
                    break
    assert fired.run_id is not None
    return fired.run_id


async def tasks_of(store: Store, run_id: str) -> list[Task]:
    return await store.tasks_of_run(run_id)


async def test_the_tasks_a_replica_makes_ready_are_its_own(
    make_engine: MakeEngine, store: Store
) -> None:
    engine = make_engine(SPEC, replica="rep-a")
    await engine.recover()
    run_id = await one_awaiting(engine)
    assert {task.owner for task in await tasks_of(store, run_id)} == {"rep-a"}


async def test_a_joining_replica_takes_over_a_peer_whose_lease_ran_out(
    make_engine: MakeEngine, store: Store
) -> None:
    """The awaiting task keeps waiting (now holding the resource on the new owner), the
    pending one waits its turn there; the history says who took over what."""
    first = make_engine(SPEC, replica="rep-a")
    await first.recover()
    run_id = await one_awaiting(first)
    await first.timers.close()  # it dies: no renewal, no leaving
    async with store.transaction() as tx:
        await tx.save_replica("rep-a", 0.0, 1.0)  # its lease ran out long ago
    second = make_engine(SPEC, replica="rep-b")
    assert await second.recover() == 2
    admission = second.dispatcher._admission
    assert admission.in_flight(("wf", "crm")) == 1, "the awaiting task holds crm on rep-b"
    assert admission.waiting() == 1
    assert {task.owner for task in await tasks_of(store, run_id)} == {"rep-b"}
    lost = await store.history(types=["replica_lost"])
    assert [(e.data["replica"], e.data["by"], e.data["tasks"]) for e in lost] == [
        ("rep-a", "rep-b", 2)
    ]
    assert "rep-a" not in await store.replicas()


async def test_a_joining_replica_leaves_a_live_peers_tasks_alone(
    make_engine: MakeEngine, store: Store
) -> None:
    first = make_engine(SPEC, replica="rep-a")
    await first.recover()
    run_id = await one_awaiting(first)
    second = make_engine(SPEC, replica="rep-b")
    assert await second.recover() == 0
    assert {task.owner for task in await tasks_of(store, run_id)} == {"rep-a"}
    assert second.membership is not None
    assert set(second.membership.peers) == {"rep-a"}


async def test_a_restarted_replica_takes_its_own_tasks_back_at_once(
    make_engine: MakeEngine, store: Store
) -> None:
    """Same replica id after a crash: no lease to wait out, no peer taking over."""
    first = make_engine(SPEC, replica="rep-a")
    await first.recover()
    await one_awaiting(first)
    await first.timers.close()
    again = make_engine(SPEC, replica="rep-a")
    assert await again.recover() == 2
    assert await store.history(types=["replica_lost"]) == []


async def test_a_timer_for_a_deadline_a_heartbeat_moved_changes_nothing(
    make_engine: MakeEngine, store: Store
) -> None:
    """Another replica's heartbeat moved the deadline; this replica's timer, armed for the
    old one, fires: the report is ignored, the task keeps waiting, and this replica times it
    at the new deadline from then on."""
    handlers.STATE.await_timeouts = {1: "30s"}
    engine = make_engine(SPEC, replica="rep-a")
    await engine.recover()
    run_id = await one_awaiting(engine, items=1)
    [task] = await tasks_of(store, run_id)
    assert task.due_at is not None
    verdict, _, deadline = await engine.heartbeat(task.id, task.attempt)
    assert verdict.value == "accepted"
    assert deadline is not None
    assert deadline >= task.due_at
    engine.timers.cancel(("deadline", task.id))  # as if the heartbeat reached another replica
    changed = await engine.report(task.id, task.attempt, Outcome.TIMED_OUT, source="timer")
    assert changed is False
    [after] = await tasks_of(store, run_id)
    assert (after.state, after.due_at) == (TaskState.DISPATCHED, deadline)
    ignored = await store.history(run_id=run_id, types=["report_ignored"])
    assert [e.data["reason"] for e in ignored] == ["the deadline moved"]
    assert engine.timers.due_of(("deadline", after.id)) == deadline, "timed at the new one"


def test_released_tasks_of_other_replicas_are_told_to_their_owners() -> None:
    outbox = Outbox()
    mine, theirs, stopped, unowned = (
        Task(name, "run", "s", "", None, owner=owner)
        for name, owner in (("t1", "me"), ("t2", "peer"), ("t3", "peer"), ("t4", None))
    )
    for task, interrupt in ((mine, True), (theirs, False), (stopped, True), (unowned, True)):
        outbox.release(task, interrupt)
    told: dict[str, Any] = outbox.foreign("me")
    assert told == {"peer": (["t2", "t3"], ["t3"])}


async def test_an_exclusive_resource_is_held_across_replicas(
    make_engine: MakeEngine, store: Store
) -> None:
    """rep-a's task holds crm (awaiting its callback); rep-b's run, admitted by rep-b's own
    view, waits in the database's view until rep-a's task ends and a notice says so."""
    first = make_engine(SPEC, replica="rep-a")
    second = make_engine(SPEC, replica="rep-b")
    await first.recover()
    await second.recover()
    first_run = await one_awaiting(first, items=1)
    parked = asyncio.Event()
    park = second.dispatcher._park

    def parking(deferred: list[Any], wake_at: float | None) -> None:
        park(deferred, wake_at)
        if deferred:
            parked.set()

    second.dispatcher._park = parking  # type: ignore[method-assign]
    with second.bus.subscribe() as subscription:
        second_run = (await second.fire("wf", {"items": [7]})).run_id
        assert second_run is not None
        async with asyncio.timeout(5):
            await parked.wait()  # its dispatch found crm busy: nothing committed, parked
        [waiting] = await tasks_of(store, second_run)
        assert waiting.state is TaskState.PENDING, "crm is busy on rep-a"
        [holding] = await tasks_of(store, first_run)
        assert await first.report(holding.id, holding.attempt, Outcome.SUCCEEDED, output={})
        second._noticed(Notice("history", "1"))  # what PostgreSQL would carry from rep-a
        async with asyncio.timeout(5):
            async for entry in subscription:
                if entry.type == "task_awaiting_callback" and entry.run_id == second_run:
                    break


async def test_a_replica_loads_only_its_own_tasks_deadlines(
    make_engine: MakeEngine, store: Store
) -> None:
    """rep-a's task times out on rep-a's heap; rep-b, loading its deadline window, leaves it
    alone (it would only write a second, ignored report)."""
    handlers.STATE.await_timeouts = {1: "30s"}
    first = make_engine(SPEC, replica="rep-a")
    second = make_engine(SPEC, replica="rep-b")
    await first.recover()
    await second.recover()
    run_id = await one_awaiting(first, items=1)
    [task] = await tasks_of(store, run_id)
    await first.deadlines._load_window()
    await second.deadlines._load_window()
    assert first.timers.due_of(("deadline", task.id)) == task.due_at
    assert second.timers.due_of(("deadline", task.id)) is None
