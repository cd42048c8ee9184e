"""The running-handler cap: at most `max_running_handlers` handler coroutines at once."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest

from orchestrator.engine import Engine
from orchestrator.model import WorkflowSpec
from orchestrator.states import TaskState
from tests.engine import window_handlers
from tests.engine.conftest import wait_for_end

MakeEngine = Callable[..., Engine]


@pytest.fixture(autouse=True)
def _fresh_gate() -> Iterator[None]:
    window_handlers.reset()
    yield
    window_handlers.GATE.release.set()  # nothing stays parked if a test failed half-way


async def test_handlers_beyond_the_cap_wait_and_all_finish(make_engine: MakeEngine) -> None:
    """With max_running_handlers=2, a fan-out of six runs two handlers at a time (the rest stay
    pending) and succeeds once they are released."""
    step = {"handler": "tests.engine.window_handlers:gated", "for_each": "event.items"}
    spec = WorkflowSpec.model_validate({"steps": {"fan": step}})
    engine = make_engine({"wf": spec}, max_running_handlers=2)
    gate = window_handlers.GATE
    with engine.bus.subscribe() as subscription:
        fired = await engine.fire("wf", {"items": list(range(6))})
        assert fired.run_id is not None
        await gate.inside_at_least(2)
        # A read through the store's reader thread: a third handler would have started by now.
        states = [task.state for task in await engine.store.tasks_of_run(fired.run_id)]
        assert sorted(states) == sorted([TaskState.DISPATCHED] * 2 + [TaskState.PENDING] * 4)
        assert (gate.inside, engine.launcher.running) == (2, 2)
        gate.release.set()
        finished = await wait_for_end(subscription, fired.run_id, within=2.0)
    assert finished.status == "succeeded"
    assert len(finished.of_type("task_succeeded")) == 6
    assert gate.peak == 2
