"""Callbacks that arrive together are decided together, each exactly as if it came alone."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Callable

from orchestrator.engine import Engine
from orchestrator.states import Outcome
from tests.engine import handlers
from tests.engine.conftest import awaiting_callbacks, workflow

MakeEngine = Callable[..., Engine]


async def test_a_duplicate_in_a_batch_is_recorded_once_beside_fresh_callbacks(
    make_engine: MakeEngine,
) -> None:
    """A resent callback answered from its receipt, in one batch with two fresh ones: one
    duplicate verdict and one rejection entry for it; the fresh ones are accepted."""
    engine = make_engine({"wf": workflow(wait={"handler": "hand_off", "for_each": "event.items"})})
    run_id = await awaiting_callbacks(engine, "wf", 3)
    tasks = {}
    for key in ("0", "1", "2"):
        task = await engine.store.get_task(handlers.STATE.handed_off[key].task_id)
        assert task is not None
        tasks[key] = task
    body = hashlib.sha256(b"same body").hexdigest()
    first = await engine.callback(tasks["0"], 1, "w-0", body, Outcome.SUCCEEDED, {"n": 0}, None)
    assert first[0].value == "accepted"
    verdicts = await asyncio.gather(
        engine.callback(tasks["0"], 1, "w-0", body, Outcome.SUCCEEDED, {"n": 0}, None),
        engine.callback(tasks["1"], 1, "w-1", body, Outcome.SUCCEEDED, {"n": 1}, None),
        engine.callback(tasks["2"], 1, "w-2", body, Outcome.SUCCEEDED, {"n": 2}, None),
    )
    assert [verdict.value for verdict, _ in verdicts] == ["duplicate", "accepted", "accepted"]
    history = await engine.store.history(run_id=run_id, limit=1000)
    rejected = [entry for entry in history if entry.type == "callback_rejected"]
    assert [(entry.task_id, entry.data["verdict"]) for entry in rejected] == [
        (tasks["0"].id, "duplicate")
    ]
    assert sum(entry.type == "task_succeeded" for entry in history) == 3


async def test_callbacks_for_one_task_in_one_moment_count_once(make_engine: MakeEngine) -> None:
    """Two different callbacks for the same task sent at once: one accepted, one conflict."""
    engine = make_engine({"wf": workflow(wait={"handler": "hand_off", "for_each": "event.items"})})
    run_id = await awaiting_callbacks(engine, "wf", 1)
    task = await engine.store.get_task(handlers.STATE.handed_off["0"].task_id)
    assert task is not None
    verdicts = await asyncio.gather(
        engine.callback(task, 1, "w-a", "a", Outcome.SUCCEEDED, {"from": "a"}, None),
        engine.callback(task, 1, "w-b", "b", Outcome.SUCCEEDED, {"from": "b"}, None),
    )
    assert sorted(verdict.value for verdict, _ in verdicts) == ["accepted", "conflict"]
    history = await engine.store.history(run_id=run_id, limit=1000)
    assert sum(entry.type == "task_succeeded" for entry in history) == 1
