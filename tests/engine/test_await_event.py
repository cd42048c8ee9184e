"""Completion by key in the engine: an event completes every task waiting on its key, in
either order of arrival, exactly once, and a task waiting on a key times out like any."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import httpx
import pytest

from orchestrator.engine import Engine
from orchestrator.invoke import Context
from orchestrator.model import TriggerSpec, WorkflowSpec
from orchestrator.records import HistoryEntry
from orchestrator.retention import Retention, RetentionJob, Swept
from orchestrator.states import TaskState
from orchestrator.store import Store
from tests.engine import key_handlers
from tests.engine.conftest import wait_for_end

K = "tests.engine.key_handlers:"
SECRET = "whsec-for-tests-0123456789"


def pay(*, handler: str = "await_payment", **step: Any) -> WorkflowSpec:
    return WorkflowSpec.model_validate(
        {"steps": {"pay": {"handler": K + handler, "for_each": "event.intents", **step}}}
    )


def stripe(**webhook: Any) -> TriggerSpec:
    """A webhook trigger whose events complete by `data.object.id`, starting no runs."""
    table = {
        "scheme": "stripe",
        "secret": SECRET,
        "completes": "data.object.id",
        "starts_runs": False,
        **webhook,
    }
    return TriggerSpec.model_validate({"webhook": table})


def event(intent: str, type: str = "payment_intent.succeeded", **more: Any) -> dict[str, Any]:
    return {"type": type, "data": {"object": {"id": intent, **more}}}


@pytest.fixture(autouse=True)
def no_hook() -> Iterator[None]:
    key_handlers.before_return = None
    yield
    key_handlers.before_return = None


@pytest.fixture
async def engine(make_engine: Callable[..., Engine]) -> Engine:
    return make_engine(
        {
            "payments": pay(),
            "untyped": pay(handler="await_untyped"),
            "bad_key": WorkflowSpec.model_validate(
                {"steps": {"k": {"handler": K + "await_bad_key"}}}
            ),
        },
        triggers={
            "stripe": stripe(
                fails_when={"type": "payment_intent.payment_failed"},
                error_field="data.object.last_payment_error.message",
            ),
        },
    )


async def fire_and_wait(engine: Engine, workflow: str, payload: dict[str, Any], count: int) -> str:
    """Fire `workflow` and wait until `count` of its tasks await their events; the run id."""
    with engine.bus.subscribe() as subscription:
        fired = await engine.fire(workflow, payload)
        waiting = 0
        async with asyncio.timeout(5):
            async for entry in subscription:
                waiting += entry.type == "task_awaiting_event"
                if waiting == count:
                    break
    assert fired.run_id is not None
    return fired.run_id


async def finished(engine: Engine, run_id: str, fire: Callable[[], Any]) -> list[HistoryEntry]:
    with engine.bus.subscribe() as subscription:
        await fire()
        return (await wait_for_end(subscription, run_id)).history


async def test_an_event_completes_the_task_waiting_on_its_key(engine: Engine) -> None:
    """The event's payload is the output; the task's entry names the event that did it."""
    run_id = await fire_and_wait(engine, "payments", {"intents": ["pi_1"]}, 1)
    payload = event("pi_1")
    fired: list[Any] = []

    async def deliver() -> None:
        fired.append(await engine.fire("stripe", payload, dedup_key="evt_1", source="webhook"))

    history = await finished(engine, run_id, deliver)
    (task,) = await engine.store.tasks_of_run(run_id)
    assert (task.state, task.output) == (TaskState.SUCCEEDED, payload)
    (done,) = [e for e in history if e.type == "task_succeeded"]
    assert done.data["source"] == "event"
    assert (done.data["event_id"], done.data["trigger"], done.data["key"]) == (
        fired[0].event_id,
        "stripe",
        "pi_1",
    )
    assert (fired[0].run_id, fired[0].completed, fired[0].kept) == (None, 1, 0)
    assert (await engine.store.list_waits()).items == []


async def test_one_event_completes_every_task_waiting_on_its_key(engine: Engine) -> None:
    """Two tasks waiting on one key are both completed by its one event, in one go."""
    run_id = await fire_and_wait(engine, "payments", {"intents": ["pi_1", "pi_1", "pi_2"]}, 3)
    fired = await engine.fire("stripe", event("pi_1"), dedup_key="a")
    assert fired.completed == 2
    tasks = {t.item_key: t.state for t in await engine.store.tasks_of_run(run_id)}
    assert tasks == {"0": TaskState.SUCCEEDED, "1": TaskState.SUCCEEDED, "2": TaskState.DISPATCHED}


async def test_a_redelivered_event_completes_nothing_again(engine: Engine) -> None:
    """The same delivery id is the first event again: a task that began waiting on the key
    since is not completed by the redelivery."""
    await fire_and_wait(engine, "untyped", {"intents": ["pi_1"]}, 1)
    first = await engine.fire("stripe", event("pi_1"), dedup_key="evt_same")
    second_run = await fire_and_wait(engine, "untyped", {"intents": ["pi_1"]}, 1)
    again = await engine.fire("stripe", event("pi_1"), dedup_key="evt_same")
    assert (first.completed, again.duplicate, again.completed, again.event_id) == (
        1,
        True,
        0,
        first.event_id,
    )
    (task,) = await engine.store.tasks_of_run(second_run)
    assert task.state is TaskState.DISPATCHED


async def test_an_event_that_arrived_before_the_wait_completes_it_at_once(
    engine: Engine,
) -> None:
    """The event is fired while the handler still runs: it is kept, and the wait the
    handler then registers completes from it in the hand-off."""
    results: list[Any] = []

    async def first_the_event(ctx: Context, intent: str) -> None:
        results.append(await engine.fire("stripe", event(intent), dedup_key="early"))

    key_handlers.before_return = first_the_event
    with engine.bus.subscribe() as subscription:
        fired = await engine.fire("payments", {"intents": ["pi_early"]})
        assert fired.run_id is not None
        history = (await wait_for_end(subscription, fired.run_id)).history
    assert (results[0].completed, results[0].kept) == (0, 1)
    (done,) = [e for e in history if e.type == "task_succeeded"]
    assert (done.data["source"], done.data["early"]) == ("event", True)
    assert done.data["event_id"] == results[0].event_id
    assert [e.type for e in history].count("task_awaiting_event") == 1
    assert (await engine.store.list_waits()).items == []


async def test_an_event_meaning_failure_fails_the_task_with_its_message(engine: Engine) -> None:
    """An event matching fails_when fails the task, its error_field the message."""
    run_id = await fire_and_wait(engine, "payments", {"intents": ["pi_1"]}, 1)
    failed = event(
        "pi_1", "payment_intent.payment_failed", last_payment_error={"message": "card declined"}
    )
    history = await finished(engine, run_id, lambda: engine.fire("stripe", failed, dedup_key="f"))
    assert history[-1].type == "run_failed"
    (task,) = await engine.store.tasks_of_run(run_id)
    assert (task.state, task.error) == (TaskState.FAILED, "card declined")


async def test_a_payload_the_handler_does_not_accept_fails_the_task(engine: Engine) -> None:
    """AwaitEvent[Payment] checks the event's payload; one without `data` fails the task."""
    run_id = await fire_and_wait(engine, "payments", {"intents": ["7"]}, 1)
    odd = {"type": 7, "data": {"object": {"id": 7}}}  # a whole-number key: GitHub's ids are
    await finished(engine, run_id, lambda: engine.fire("stripe", odd, dedup_key="odd"))
    (task,) = await engine.store.tasks_of_run(run_id)
    assert task.state is TaskState.FAILED
    assert "does not match the declared event output" in (task.error or "")


async def test_an_event_filtered_out_completes_and_keeps_nothing(
    make_engine: Callable[..., Engine],
) -> None:
    """completes_when leaves other event types alone: not completing, not kept."""
    engine = make_engine(
        {"untyped": pay(handler="await_untyped")},
        triggers={"stripe": stripe(completes_when={"type": ["payment_intent.succeeded"]})},
    )
    run_id = await fire_and_wait(engine, "untyped", {"intents": ["pi_1"]}, 1)
    other = await engine.fire("stripe", event("pi_1", "payment_intent.created"), dedup_key="c")
    unrelated = await engine.fire("stripe", event("pi_9", "charge.refunded"), dedup_key="d")
    assert (other.completed, other.kept, unrelated.kept) == (0, 0, 0)
    (task,) = await engine.store.tasks_of_run(run_id)
    assert task.state is TaskState.DISPATCHED
    assert (await engine.store.list_kept_events(now=engine.clock())).items == []


async def test_an_unmatched_event_is_kept_for_its_window_and_not_past_it(
    make_engine: Callable[..., Engine],
) -> None:
    """keep_unmatched = 0 keeps nothing; a kept event that expired completes nothing."""
    clock = [1_000_000.0]
    keeping = make_engine(
        {"untyped": pay(handler="await_untyped")},
        triggers={"stripe": stripe(keep_unmatched="10s"), "none": stripe(keep_unmatched=0)},
        clock=lambda: clock[0],
    )
    assert (await keeping.fire("none", event("pi_0"), dedup_key="n")).kept == 0
    assert (await keeping.fire("stripe", event("pi_1"), dedup_key="k")).kept == 1
    listed = (await keeping.store.list_kept_events(now=clock[0])).items
    assert [(k.trigger, k.key, k.expires) for k in listed] == [("stripe", "pi_1", clock[0] + 10)]
    clock[0] += 11
    run_id = await fire_and_wait(keeping, "untyped", {"intents": ["pi_1"]}, 1)
    (task,) = await keeping.store.tasks_of_run(run_id)
    assert task.state is TaskState.DISPATCHED
    assert [w.key for w in (await keeping.store.list_waits()).items] == ["pi_1"]


async def test_a_task_waiting_on_a_key_times_out_and_its_wait_goes(engine: Engine) -> None:
    """With a timeout, no event means timed_out, and the wait is forgotten with it."""
    run_id = await fire_and_wait(engine, "payments", {"intents": ["pi_1"], "timeout": "50ms"}, 1)
    assert [w.task_id for w in (await engine.store.list_waits()).items]
    with engine.bus.subscribe() as subscription:
        history = (await wait_for_end(subscription, run_id)).history
    assert "task_timed_out" in [e.type for e in history]
    assert (await engine.store.list_waits()).items == []
    later = await engine.fire("stripe", event("pi_1"), dedup_key="late")
    assert (later.completed, later.kept) == (0, 1)


async def test_a_key_too_long_fails_the_attempt_and_one_in_an_event_is_no_key(
    engine: Engine,
) -> None:
    """await_event refuses a 257-character key; an event's 257-character key keeps nothing."""
    with engine.bus.subscribe() as subscription:
        fired = await engine.fire("bad_key")
        assert fired.run_id is not None
        finished_run = await wait_for_end(subscription, fired.run_id)
    (failed,) = finished_run.of_type("task_failed")
    assert "a key has 1 to 256 characters" in failed.data["error"]
    long = await engine.fire("stripe", event("k" * 257), dedup_key="long")
    assert (long.completed, long.kept) == (0, 0)


@pytest.fixture
async def sqlite_engine(sqlite_store: Store) -> AsyncIterator[Engine]:
    async with httpx.AsyncClient() as http:
        engine = Engine(
            sqlite_store, {"untyped": pay(handler="await_untyped")}, {"stripe": stripe()}, http=http
        )
        yield engine
        await engine.close()


async def test_completion_by_key_works_on_sqlite_too(sqlite_engine: Engine) -> None:
    """The same path on the SQLite store: early arrival, then a wait completed by an event."""
    early = await sqlite_engine.fire("stripe", event("pi_a"), dedup_key="1")
    run_id = await fire_and_wait(sqlite_engine, "untyped", {"intents": ["pi_a", "pi_b"]}, 2)
    ended = await finished(
        sqlite_engine, run_id, lambda: sqlite_engine.fire("stripe", event("pi_b"), dedup_key="2")
    )
    assert early.kept == 1
    assert ended[-1].type == "run_succeeded"
    history = await sqlite_engine.store.history(run_id=run_id)
    sources = sorted(
        (e.data["key"], e.data.get("early", False)) for e in history if e.type == "task_succeeded"
    )
    assert sources == [("pi_a", True), ("pi_b", False)]


async def test_the_retention_sweep_takes_waits_that_wait_no_more_and_expired_kept_events(
    make_engine: Callable[..., Engine],
) -> None:
    """A cancelled run's wait and a kept event past its window go at the next sweep."""
    clock = [2_000_000.0]
    engine = make_engine(
        {"untyped": pay(handler="await_untyped")},
        triggers={"stripe": stripe(keep_unmatched="10s")},
        clock=lambda: clock[0],
    )
    run_id = await fire_and_wait(engine, "untyped", {"intents": ["pi_1"]}, 1)
    await engine.fire("stripe", event("pi_other"), dedup_key="k")
    assert await engine.cancel_run(run_id)
    policy = Retention(history_age=86400.0, runs_age=7 * 86400.0)
    assert await RetentionJob(engine, policy).sweep() == Swept(waits=1)
    clock[0] += 11
    assert await RetentionJob(engine, policy).sweep() == Swept(kept_events=1)
    assert (await engine.store.list_kept_events(now=0.0)).items == []
