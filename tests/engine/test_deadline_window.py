"""Windowed deadlines: only deadlines within `deadline_window` sit on the timer heap.

Later ones stay in the store; one heap entry loads them when the earliest comes within the
window. Each test hands tasks off with their own callback timeout (window_handlers.await_for).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import pytest

from orchestrator.deadlines import WINDOW_KEY
from orchestrator.deadlines import deadline_key as timer_key
from orchestrator.engine import Engine
from orchestrator.model import WorkflowSpec
from orchestrator.records import Task
from orchestrator.states import Outcome
from orchestrator.store import Store
from tests.engine.conftest import wait_for_end

MakeEngine = Callable[..., Engine]


def waiting_workflow() -> dict[str, WorkflowSpec]:
    """One step that hands each item off with the item's own callback timeout."""
    handler = "tests.engine.window_handlers:await_for"
    step = {"handler": handler, "for_each": "event.items"}
    return {"wf": WorkflowSpec.model_validate({"steps": {"wait": step}})}


def timeouts(*seconds: float) -> dict[str, Any]:
    return {"items": [{"timeout": timeout} for timeout in seconds]}


async def handed_off(engine: Engine, subscription: Any, count: int) -> list[Task]:
    """Wait until `count` tasks await their callback; the tasks as stored, shortest timeout first."""
    tasks: list[Task] = []
    async with asyncio.timeout(2):
        async for entry in subscription:
            if entry.type == "task_awaiting_callback":
                assert entry.task_id is not None
                task = await engine.store.get_task(entry.task_id)
                assert task is not None
                assert task.due_at is not None
                tasks.append(task)
                if len(tasks) == count:
                    return sorted(tasks, key=lambda task: float(task.item["timeout"]))
    raise AssertionError("the history stream ended first")


async def call_back(engine: Engine, task_id: str) -> bool:
    """The service's callback: the task succeeded (True if that completed it)."""
    return await engine.report(task_id, 1, Outcome.SUCCEEDED, {"ok": True}, None, "callback")


async def history_of(engine: Engine, task: Task) -> list[str]:
    return [entry.type for entry in await engine.store.history(task_id=task.id, limit=1000)]


async def test_a_deadline_beyond_the_window_stays_off_the_heap(make_engine: MakeEngine) -> None:
    """A deadline later than the window has no heap entry; one window entry is due window
    seconds before it."""
    engine = make_engine(waiting_workflow(), deadline_window=60.0)
    with engine.bus.subscribe() as subscription:
        await engine.fire("wf", timeouts(600.0))
        (task,) = await handed_off(engine, subscription, 1)
    assert task.due_at is not None
    assert engine.timers.due_of(timer_key(task.id)) is None
    assert engine.timers.due_of(WINDOW_KEY) == task.due_at - 60.0


async def test_a_deadline_within_the_window_goes_straight_on_the_heap(
    make_engine: MakeEngine,
) -> None:
    """A deadline inside the window is a heap entry at the deadline itself, with no window load."""
    engine = make_engine(waiting_workflow(), deadline_window=60.0)
    with engine.bus.subscribe() as subscription:
        await engine.fire("wf", timeouts(30.0))
        (task,) = await handed_off(engine, subscription, 1)
    assert engine.timers.due_of(timer_key(task.id)) == task.due_at
    assert engine.timers.due_of(WINDOW_KEY) is None


async def test_a_deadline_loaded_by_the_window_still_times_the_task_out(
    make_engine: MakeEngine,
) -> None:
    """With a 0.1 s window, a 0.3 s callback timeout is loaded later and fires on time."""
    engine = make_engine(waiting_workflow(), deadline_window=0.1)
    with engine.bus.subscribe() as subscription:
        fired = await engine.fire("wf", timeouts(0.3))
        assert fired.run_id is not None
        (task,) = await handed_off(engine, subscription, 1)
        assert engine.timers.due_of(timer_key(task.id)) is None, "not yet within the window"
        finished = await wait_for_end(subscription, fired.run_id, within=2.0)
    assert finished.status == "failed"
    (timed_out,) = finished.of_type("task_timed_out")
    assert (timed_out.task_id, timed_out.data["source"]) == (task.id, "timer")
    assert task.due_at is not None
    assert timed_out.at >= task.due_at, "not before the deadline"


async def test_a_task_done_before_its_window_loads_never_gets_a_timer(
    make_engine: MakeEngine,
) -> None:
    """A task completed before the window reaches its deadline is never timed out or re-reported;
    a later task's timeout shows the old deadline has passed."""
    engine = make_engine(waiting_workflow(), deadline_window=0.1)
    with engine.bus.subscribe() as subscription:
        fired = await engine.fire("wf", timeouts(0.3, 0.4))
        assert fired.run_id is not None
        done, later = await handed_off(engine, subscription, 2)
        assert await call_back(engine, done.id)
        assert engine.timers.due_of(timer_key(done.id)) is None
        await wait_for_end(subscription, fired.run_id, within=2.0)
    assert "task_timed_out" in await history_of(engine, later)
    done_history = await history_of(engine, done)
    assert "task_succeeded" in done_history
    assert not {"task_timed_out", "report_ignored"} & set(done_history)


async def test_a_task_done_while_the_window_loads_gets_no_timer(
    make_engine: MakeEngine, store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A task that completes after the window read it as dispatched, but before the read
    returns, is not put on the heap from that stale read."""
    engine = make_engine(waiting_workflow(), deadline_window=0.1)
    read = store.deadlines_before
    completed: list[str] = []
    done_id = ""

    async def read_then_complete(until: float) -> list[Task]:
        tasks = await read(until)
        if any(task.id == done_id for task in tasks) and not completed:
            # The read saw the task dispatched; it completes before the read returns.
            assert await call_back(engine, done_id)
            completed.append(done_id)
        return tasks

    monkeypatch.setattr(store, "deadlines_before", read_then_complete)
    with engine.bus.subscribe() as subscription:
        fired = await engine.fire("wf", timeouts(0.3, 0.4))
        assert fired.run_id is not None
        done, later = await handed_off(engine, subscription, 2)
        done_id = done.id
        await wait_for_end(subscription, fired.run_id, within=2.0)
    assert completed == [done.id], "the window read saw the task while it was dispatched"
    assert "task_timed_out" in await history_of(engine, later)
    done_history = await history_of(engine, done)
    assert not {"task_timed_out", "report_ignored"} & set(done_history)


async def test_the_store_lists_dispatched_deadlines_for_the_window(
    make_engine: MakeEngine, store: Store
) -> None:
    """deadlines_before lists the awaiting tasks due before a time, earliest first;
    next_deadline gives the first deadline at or after a time."""
    engine = make_engine(waiting_workflow(), deadline_window=1000.0)
    with engine.bus.subscribe() as subscription:
        await engine.fire("wf", timeouts(500.0, 100.0, 300.0))
        tasks = await handed_off(engine, subscription, 3)
    dues = [task.due_at or 0.0 for task in tasks]
    assert [task.id for task in await store.deadlines_before(dues[1])] == [tasks[0].id]
    every = await store.deadlines_before(dues[2] + 1)
    assert [task.id for task in every] == [task.id for task in tasks]
    assert await store.next_deadline(dues[0] + 1) == dues[1]
    assert await store.next_deadline(dues[1]) == dues[1]
    assert await store.next_deadline(dues[2] + 1) is None


async def test_a_heartbeat_while_the_window_loads_keeps_its_extension(
    make_engine: MakeEngine, store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A heartbeat that commits while the window read is in flight is not undone by that read."""
    engine = make_engine(waiting_workflow(), deadline_window=0.1)
    read = store.deadlines_before
    extended: list[float] = []
    task_id = ""

    async def read_then_heartbeat(until: float) -> list[Task]:
        tasks = await read(until)
        if any(task.id == task_id for task in tasks) and not extended:
            _, _, due = await engine.heartbeat(task_id, 1)
            assert due is not None
            extended.append(due)
        return tasks

    monkeypatch.setattr(store, "deadlines_before", read_then_heartbeat)
    with engine.bus.subscribe() as subscription:
        fired = await engine.fire("wf", timeouts(0.3))
        assert fired.run_id is not None
        (task,) = await handed_off(engine, subscription, 1)
        task_id = task.id
        finished = await wait_for_end(subscription, fired.run_id, within=3.0)
    (timed_out,) = finished.of_type("task_timed_out")
    assert extended
    assert timed_out.at >= extended[0], "timed out at the deadline the heartbeat had replaced"
