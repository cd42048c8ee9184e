"""Tiered retention against the real store: details of old runs go first, summaries later."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import pytest

from orchestrator.engine import Engine
from orchestrator.retention import SWEEP_KEY, Retention, RetentionJob, Swept
from orchestrator.store import Store
from tests.engine.conftest import run_to_end, workflow
from tests.engine.test_scheduler import Clock

DAY = 86400.0
T0 = datetime(2026, 1, 5, 9, 0, tzinfo=UTC)
POLICY = Retention(history_age=30 * DAY, runs_age=365 * DAY, batch=2)


@pytest.fixture
def make(make_engine: Callable[..., Engine]) -> Callable[[Clock], Engine]:
    spec = {"wf": workflow(fan={"handler": "echo", "for_each": "event.items"})}
    return lambda clock: make_engine(spec, clock=clock)


async def test_old_runs_lose_details_then_everything(
    store: Store, make: Callable[[Clock], Engine]
) -> None:
    """After 30 days task history and payloads go, the summary stays; after 365 days the run goes."""
    clock = Clock(T0)
    engine = make(clock)
    old = await run_to_end(engine, "wf", {"items": ["a", "b", "c"], "secret": "payload"})
    clock.set(T0 + timedelta(days=20))
    recent = await run_to_end(engine, "wf", {"items": ["d"]})

    clock.set(T0 + timedelta(days=31))
    swept = await RetentionJob(engine, POLICY).sweep()
    assert swept.history > 0
    assert swept.payloads > 0
    assert swept.runs == 0
    kept = await store.history(run_id=old.run_id, limit=1000)
    assert kept, "the run-level history (the summary) is kept"
    assert all(entry.task_id is None for entry in kept)
    run = await store.get_run(old.run_id)
    assert run is not None
    assert run.status.value == "succeeded"
    tasks = await store.tasks_of_run(old.run_id)
    assert {(task.item, task.output) for task in tasks} == {(None, None)}
    event = await store.get_event(run.event_id)
    assert event is not None
    assert event.payload == {}
    recent_tasks = await store.tasks_of_run(recent.run_id)
    assert [task.output for task in recent_tasks] == ["d"], "younger runs keep everything"

    clock.set(T0 + timedelta(days=366))
    swept = await RetentionJob(engine, POLICY).sweep()
    assert swept.runs == 1
    assert await store.get_run(old.run_id) is None
    assert await store.get_event(run.event_id) is None
    assert await store.history(run_id=old.run_id) == []
    assert await store.get_run(recent.run_id) is not None


async def test_running_runs_are_never_pruned(
    store: Store, make_engine: Callable[..., Engine]
) -> None:
    """However old, a run that is still running keeps all of its details."""
    clock = Clock(T0)
    engine = make_engine(
        {"wf": workflow(wait={"handler": "hang", "for_each": "event.items"})}, clock=clock
    )
    with engine.bus.subscribe() as subscription:
        fired = await engine.fire("wf", {"items": [1]})
        async with asyncio.timeout(5):
            async for entry in subscription:
                if entry.type == "task_dispatched":
                    break
    clock.set(T0 + timedelta(days=400))
    assert await RetentionJob(engine, POLICY).sweep() == Swept()
    assert fired.run_id is not None
    assert len(await store.history(run_id=fired.run_id, limit=1000)) > 3


async def test_the_sweep_is_one_entry_on_the_timer_heap(make: Callable[[Clock], Engine]) -> None:
    """Arming puts the next sweep on the one heap, `every` seconds ahead."""
    clock = Clock(T0)
    engine = make(clock)
    RetentionJob(engine, POLICY).arm()
    due = engine.timers.due_of(SWEEP_KEY)
    assert due is not None
    assert abs(due - (T0.timestamp() + POLICY.every)) < 5
