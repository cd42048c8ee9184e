"""Random interleavings of callbacks, duplicates and timeouts against the real engine and store."""

from __future__ import annotations

import asyncio
from collections import Counter
from pathlib import Path

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from orchestrator.engine import Engine
from orchestrator.states import Outcome
from orchestrator.store import SqliteStore
from tests.engine import handlers
from tests.engine.conftest import wait_for_end, workflow

TERMINAL = ("task_succeeded", "task_failed", "task_timed_out", "task_cancelled")

operations = st.lists(
    st.tuples(
        st.sampled_from(["succeeded", "failed", "timeout"]),
        st.integers(0, 5),  # which task
        st.integers(0, 2),  # which delivery (webhook-id and output)
    ),
    max_size=25,
)


async def scenario(
    database: Path, tasks: int, policy: dict[str, object], ops: list[tuple[str, int, int]]
) -> None:
    handlers.reset()
    store = SqliteStore(database)
    await store.open()
    spec = workflow(
        wait={"handler": "hand_off", "for_each": "event.items", **policy},
        after={"handler": "join", "needs": ["wait"]},
    )
    async with httpx.AsyncClient() as http:
        engine = Engine(store, {"wf": spec}, http=http)
        try:
            await run_scenario(engine, tasks, ops)
        finally:
            await engine.close()
            await store.close()


async def run_scenario(engine: Engine, tasks: int, ops: list[tuple[str, int, int]]) -> None:
    with engine.bus.subscribe() as subscription:
        fired = await engine.fire("wf", {"items": list(range(tasks))})
        waiting = 0
        async with asyncio.timeout(10):
            async for entry in subscription:
                waiting += entry.type == "task_awaiting_callback"
                if waiting == tasks:
                    break
    assert fired.run_id is not None
    ids = [handlers.STATE.handed_off[str(i)].task_id for i in range(tasks)]

    async def apply(kind: str, index: int, delivery: int) -> None:
        task_id = ids[index % tasks]
        if kind == "timeout":
            await engine.report(task_id, 1, Outcome.TIMED_OUT, source="timer")
            return
        output = {"name": f"d{delivery}", "count": delivery}
        task = await engine.store.get_task(task_id)
        assert task is not None
        await engine.callback(
            task, 1, f"w{delivery}", f"{kind}/{delivery}", Outcome(kind), output, kind
        )

    # Everything at once, then every task succeeds late: each must still settle exactly once.
    with engine.bus.subscribe() as subscription:
        await asyncio.gather(*(apply(*op) for op in ops))
        await asyncio.gather(*(apply("succeeded", index, 9) for index in range(tasks)))
        await wait_for_end(subscription, fired.run_id, within=10)

    history = await engine.store.history(run_id=fired.run_id, limit=10_000)
    settled = Counter(e.task_id for e in history if e.type in TERMINAL and e.step == "wait")
    assert set(settled) == set(ids)
    assert set(settled.values()) == {1}, "every task finished exactly once"
    decided = [
        e for e in history if e.type in ("barrier_opened", "barrier_failed") and e.step == "wait"
    ]
    assert len(decided) == 1, "the barrier decided exactly once"
    ended = [e for e in history if e.type.startswith("run_") and e.type != "run_started"]
    assert len(ended) == 1, "the run ended exactly once"
    (barrier, *_) = await engine.store.barriers_of_run(fired.run_id)
    succeeded = sum(1 for e in history if e.type == "task_succeeded" and e.step == "wait")
    assert barrier.succeeded == succeeded
    if decided[0].type == "barrier_opened":
        assert ended[0].type == "run_succeeded"


@pytest.mark.parametrize(
    "policy",
    [{}, {"on_failure": "collect"}, {"quorum": 2, "on_failure": "collect"}, {"join": "any"}],
    ids=["all-fail-fast", "all-collect", "quorum", "any"],
)
@settings(
    max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(tasks=st.integers(1, 4), ops=operations)
def test_any_interleaving_completes_each_task_once_and_decides_once(
    tmp_path_factory: pytest.TempPathFactory,
    policy: dict[str, object],
    tasks: int,
    ops: list[tuple[str, int, int]],
) -> None:
    """Callbacks, duplicates, conflicting results and timeouts in any order: one settle per task,
    one barrier decision, one run end."""
    database = tmp_path_factory.mktemp("prop") / "prop.db"
    asyncio.run(scenario(database, tasks, policy, ops))
