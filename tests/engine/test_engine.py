"""The engine over the in-memory store: fan-out, joins, retries, deadlines, limits, restart."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest

from orchestrator.engine import Engine, RunStateError, UnknownTarget
from orchestrator.model import TriggerSpec
from orchestrator.records import HistoryEntry
from orchestrator.states import Outcome, RunState, TaskState
from orchestrator.store import Store
from tests.engine import handlers
from tests.engine.conftest import run_to_end, wait_for_end, workflow

MakeEngine = Callable[..., Engine]


def order_of(history: list[HistoryEntry], type: str, step: str) -> list[int]:
    return [entry.id or 0 for entry in history if entry.type == type and entry.step == step]


async def test_fan_out_starts_every_item_at_once(make_engine: MakeEngine) -> None:
    """Twenty items run concurrently: each finishes only after all twenty have started."""
    handlers.STATE.expected = 20
    engine = make_engine({"wf": workflow(fan={"handler": "gathered", "for_each": "event.items"})})
    finished = await run_to_end(engine, "wf", {"items": list(range(20))})
    assert finished.status == "succeeded"
    assert len(finished.of_type("task_succeeded")) == 20
    dispatch_batches = {entry.at for entry in finished.of_type("task_dispatched")}
    assert len(dispatch_batches) == 1, "all twenty were dispatched in one transaction"


async def test_dependent_step_starts_only_after_its_barrier_opens(make_engine: MakeEngine) -> None:
    """A step that needs a fan-out is dispatched after every item succeeded and the barrier opened."""
    engine = make_engine(
        {
            "wf": workflow(
                fan={"handler": "echo", "for_each": "event.items"},
                after={"handler": "join", "needs": ["fan"]},
            )
        }
    )
    finished = await run_to_end(engine, "wf", {"items": ["a", "b", "c"]})
    history = finished.history
    opened = order_of(history, "barrier_opened", "fan")
    assert len(opened) == 1
    assert max(order_of(history, "task_succeeded", "fan")) < opened[0]
    assert opened[0] < min(order_of(history, "task_dispatched", "after"))
    tasks = await engine.store.tasks_of_run(finished.run_id)
    join_output = next(task.output for task in tasks if task.step == "after")
    assert join_output == {
        "fan": {"outputs": {"0": "a", "1": "b", "2": "c"}, "failed": {}, "missing": []}
    }


async def test_join_sees_failed_items_under_quorum_and_collect(make_engine: MakeEngine) -> None:
    """With quorum 2 of 4 and collect, the join gets successes and the failed items with errors."""
    engine = make_engine(
        {
            "wf": workflow(
                fan={
                    "handler": "fail_odd",
                    "for_each": "event.items",
                    "quorum": 2,
                    "on_failure": "collect",
                },
                after={"handler": "join", "needs": ["fan"]},
            )
        }
    )
    finished = await run_to_end(engine, "wf", {"items": [1, 2, 3, 4]})
    assert finished.status == "succeeded"
    tasks = await engine.store.tasks_of_run(finished.run_id)
    seen = next(task.output for task in tasks if task.step == "after")["fan"]
    assert seen["outputs"] == {"1": 2, "3": 4}
    assert set(seen["failed"]) <= {"0", "2"}
    assert all("odd item" in error for error in seen["failed"].values())


async def test_for_each_reads_a_list_from_an_upstream_output(make_engine: MakeEngine) -> None:
    """for_each = 'first.numbers' fans out over the list in the first step's output."""
    engine = make_engine(
        {
            "wf": workflow(
                first={"handler": "single"},
                each={"handler": "echo", "needs": ["first"], "for_each": "first.numbers"},
            )
        }
    )
    finished = await run_to_end(engine, "wf")
    tasks = await engine.store.tasks_of_run(finished.run_id)
    assert sorted(task.output for task in tasks if task.step == "each") == [1, 2, 3]


async def test_for_each_over_a_fanned_out_step_uses_its_outputs(make_engine: MakeEngine) -> None:
    """for_each naming a fanned-out step fans out again over that step's outputs, in order."""
    engine = make_engine(
        {
            "wf": workflow(
                first={"handler": "echo", "for_each": "event.items"},
                again={"handler": "echo", "needs": ["first"], "for_each": "first"},
            )
        }
    )
    finished = await run_to_end(engine, "wf", {"items": ["x", "y"]})
    tasks = await engine.store.tasks_of_run(finished.run_id)
    again = {task.item_key: task.output for task in tasks if task.step == "again"}
    assert again == {"0": "x", "1": "y"}


async def test_empty_fan_out_opens_at_once_and_the_run_goes_on(make_engine: MakeEngine) -> None:
    """A for_each over an empty list opens its barrier immediately; dependents still run."""
    engine = make_engine(
        {
            "wf": workflow(
                fan={"handler": "echo", "for_each": "event.items"},
                after={"handler": "join", "needs": ["fan"]},
            )
        }
    )
    finished = await run_to_end(engine, "wf", {"items": []})
    assert finished.status == "succeeded"
    assert len(finished.of_type("task_succeeded")) == 1


async def test_for_each_that_is_not_a_list_fails_the_run_with_the_reason(
    make_engine: MakeEngine,
) -> None:
    """A fan-out source that is not a list fails the run and history says why."""
    engine = make_engine({"wf": workflow(fan={"handler": "echo", "for_each": "event.items"})})
    finished = await run_to_end(engine, "wf", {"items": "nope"})
    assert finished.status == "failed"
    (invalid,) = finished.of_type("step_input_invalid")
    assert "must be a list" in invalid.data["error"]


async def test_failed_attempt_is_retried_with_the_next_attempt_number(
    make_engine: MakeEngine,
) -> None:
    """A failure with retries left returns the task to pending; attempt 2 then succeeds."""
    engine = make_engine(
        {
            "wf": workflow(
                flaky={
                    "handler": "fail_first_attempt",
                    "for_each": "event.items",
                    "retries": 1,
                    "backoff": "10ms",
                }
            )
        }
    )
    finished = await run_to_end(engine, "wf", {"items": [7]})
    assert finished.status == "succeeded"
    assert [entry.data["attempt"] for entry in finished.of_type("task_attempt_failed")] == [1]
    assert [entry.data["attempt"] for entry in finished.of_type("task_retry_scheduled")] == [2]
    (task,) = await engine.store.tasks_of_run(finished.run_id)
    assert (task.state, task.attempt, task.output) == (
        TaskState.SUCCEEDED,
        2,
        {"item": 7, "attempt": 2},
    )


async def test_exhausted_retries_fail_fast_and_cancel_the_siblings(make_engine: MakeEngine) -> None:
    """The last failed attempt fails the barrier at once; hanging siblings are cancelled."""
    engine = make_engine(
        {
            "wf": workflow(
                bad={
                    "handler": "always_fail",
                    "for_each": "event.one",
                    "retries": 1,
                    "backoff": "1ms",
                },
                slow={"handler": "hang", "for_each": "event.three"},
                both={"handler": "join", "needs": ["bad", "slow"]},
            )
        }
    )
    finished = await run_to_end(engine, "wf", {"one": [1], "three": [1, 2, 3]})
    assert finished.status == "failed"
    tasks = await engine.store.tasks_of_run(finished.run_id)
    states: dict[str, set[TaskState]] = {task.step: set() for task in tasks}
    for task in tasks:
        states[task.step].add(task.state)
    assert states == {"bad": {TaskState.FAILED}, "slow": {TaskState.CANCELLED}}
    assert engine.launcher.running == 0, "the cancelled handlers were stopped"


async def test_attempt_past_its_timeout_is_timed_out_by_the_timer(make_engine: MakeEngine) -> None:
    """A handler that never returns is timed out by the timer heap and fails the run."""
    engine = make_engine(
        {"wf": workflow(stuck={"handler": "hang", "for_each": "event.items", "timeout": "50ms"})}
    )
    finished = await run_to_end(engine, "wf", {"items": [1]})
    assert finished.status == "failed"
    (timed_out,) = finished.of_type("task_timed_out")
    assert timed_out.data["source"] == "timer"


async def test_step_deadline_proceeds_with_what_has_arrived(make_engine: MakeEngine) -> None:
    """on_deadline = proceed opens the barrier at the deadline; the join lists the missing items."""
    engine = make_engine(
        {
            "wf": workflow(
                fan={
                    "handler": "quick_or_hang",
                    "for_each": "event.items",
                    "deadline": "500ms",
                    "on_deadline": "proceed",
                },
                after={"handler": "join", "needs": ["fan"]},
            )
        }
    )
    finished = await run_to_end(engine, "wf", {"items": [0, 1, 2]})
    assert finished.status == "succeeded"
    tasks = await engine.store.tasks_of_run(finished.run_id)
    seen = next(task.output for task in tasks if task.step == "after")["fan"]
    assert seen == {"outputs": {"0": 0}, "failed": {}, "missing": ["1", "2"]}


async def test_step_deadline_fails_the_run_by_default(make_engine: MakeEngine) -> None:
    """on_deadline = fail (the default) fails the barrier and the run at the deadline."""
    engine = make_engine(
        {"wf": workflow(fan={"handler": "hang", "for_each": "event.items", "deadline": "50ms"})}
    )
    finished = await run_to_end(engine, "wf", {"items": [1, 2]})
    assert finished.status == "failed"
    assert len(finished.of_type("barrier_failed")) == 1


def _max_in_flight(history: list[HistoryEntry], steps: set[str]) -> int:
    in_flight, peak = 0, 0
    for entry in history:
        if entry.step not in steps:
            continue
        if entry.type == "task_dispatched":
            in_flight += 1
            peak = max(peak, in_flight)
        elif entry.type in ("task_succeeded", "task_failed", "task_timed_out", "task_cancelled"):
            in_flight -= 1
    return peak


async def test_concurrency_limit_runs_a_step_in_waves(make_engine: MakeEngine) -> None:
    """concurrency = 2 keeps exactly two of six in flight: the handlers finish only in pairs."""
    handlers.STATE.pairs = asyncio.Barrier(2)
    engine = make_engine(
        {"wf": workflow(pairs={"handler": "in_pairs", "for_each": "event.items", "concurrency": 2})}
    )
    finished = await run_to_end(engine, "wf", {"items": list(range(6))})
    assert finished.status == "succeeded"
    assert _max_in_flight(finished.history, {"pairs"}) == 2


async def test_exclusive_steps_never_overlap(make_engine: MakeEngine) -> None:
    """Two independent steps naming one resource never have tasks in flight at the same time."""
    engine = make_engine(
        {
            "wf": workflow(
                a={"handler": "echo", "for_each": "event.items", "exclusive": "crm"},
                b={"handler": "echo", "for_each": "event.items", "exclusive": "crm"},
            )
        }
    )
    finished = await run_to_end(engine, "wf", {"items": [1, 2, 3]})
    assert finished.status == "succeeded"
    assert _max_in_flight(finished.history, {"a", "b"}) == 1


async def test_rate_limit_spreads_starts_over_the_window(make_engine: MakeEngine) -> None:
    """rate = 2 per 200 ms starts two at once and the next two no sooner than 200 ms later."""
    engine = make_engine(
        {"wf": workflow(limited={"handler": "echo", "for_each": "event.items", "rate": "2/200ms"})}
    )
    finished = await run_to_end(engine, "wf", {"items": [1, 2, 3, 4]})
    starts = sorted(entry.at for entry in finished.of_type("task_dispatched"))
    assert starts[1] - starts[0] < 0.2
    assert starts[2] - starts[0] >= 0.2 - 1e-3


async def test_sync_handlers_run_in_a_worker_thread(make_engine: MakeEngine) -> None:
    """A plain def handler runs off the event loop's thread."""
    engine = make_engine({"wf": workflow(sync={"handler": "in_thread"})})
    finished = await run_to_end(engine, "wf")
    assert finished.status == "succeeded"
    assert handlers.STATE.threads
    assert handlers.STATE.threads[0].startswith("handler")


async def test_output_that_fails_its_model_fails_the_task_with_the_message(
    make_engine: MakeEngine,
) -> None:
    """A return value that does not validate against the declared model fails the task."""
    engine = make_engine({"wf": workflow(shaped={"handler": "bad_output"})})
    finished = await run_to_end(engine, "wf")
    assert finished.status == "failed"
    (failed,) = finished.of_type("task_failed")
    assert "Shaped" in failed.data["error"]
    assert "count" in failed.data["error"]


async def test_output_model_is_stored_as_json(make_engine: MakeEngine) -> None:
    """A pydantic model returned by a handler is stored as its JSON form."""
    engine = make_engine({"wf": workflow(shaped={"handler": "good_output"})})
    finished = await run_to_end(engine, "wf")
    (task,) = await engine.store.tasks_of_run(finished.run_id)
    assert task.output == {"name": "x", "count": 2}


async def test_output_that_is_not_json_fails_the_task(make_engine: MakeEngine) -> None:
    """An output with no JSON form fails the task instead of crashing the engine."""
    engine = make_engine({"wf": workflow(odd={"handler": "not_json"})})
    finished = await run_to_end(engine, "wf")
    (failed,) = finished.of_type("task_failed")
    assert "not JSON serializable" in failed.data["error"]


async def test_duplicate_and_stale_reports_change_nothing(make_engine: MakeEngine) -> None:
    """A report for a finished task, or for another attempt, is ignored and recorded."""
    engine = make_engine({"wf": workflow(one={"handler": "echo", "for_each": "event.items"})})
    finished = await run_to_end(engine, "wf", {"items": ["a"]})
    (task,) = await engine.store.tasks_of_run(finished.run_id)
    assert not await engine.report(task.id, 1, Outcome.FAILED, error="late")
    assert not await engine.report(task.id, 7, Outcome.SUCCEEDED)
    (after,) = await engine.store.tasks_of_run(finished.run_id)
    assert after == task
    ignored = await engine.store.history(run_id=finished.run_id, types=["report_ignored"])
    assert [entry.data["reason"] for entry in ignored] == ["task already succeeded"] * 2


async def test_concurrent_duplicate_reports_complete_a_task_once(make_engine: MakeEngine) -> None:
    """Ten simultaneous reports for one dispatched attempt: one applies, the barrier counts one."""
    engine = make_engine({"wf": workflow(wait={"handler": "hang", "for_each": "event.items"})})
    with engine.bus.subscribe() as subscription:
        fired = await engine.fire("wf", {"items": [1]})
        assert fired.run_id is not None
        async with asyncio.timeout(5):
            async for entry in subscription:
                if entry.type == "task_dispatched":
                    task_id = entry.task_id
                    break
        assert task_id is not None
        results = await asyncio.gather(
            *(engine.report(task_id, 1, Outcome.SUCCEEDED, output=n) for n in range(10))
        )
        finished = await wait_for_end(subscription, fired.run_id)
    assert results.count(True) == 1
    (barrier,) = await engine.store.barriers_of_run(fired.run_id)
    assert (barrier.succeeded, barrier.failed) == (1, 0)
    assert finished.status == "succeeded"


async def test_cancel_run_cancels_its_unfinished_tasks(make_engine: MakeEngine) -> None:
    """Cancelling a run cancels pending work; a second cancel changes nothing."""
    engine = make_engine({"wf": workflow(wait={"handler": "hang", "for_each": "event.items"})})
    with engine.bus.subscribe() as subscription:
        fired = await engine.fire("wf", {"items": [1, 2]})
        assert fired.run_id is not None
        assert await engine.cancel_run(fired.run_id)
        finished = await wait_for_end(subscription, fired.run_id)
    assert finished.status == "cancelled"
    assert not await engine.cancel_run(fired.run_id)
    tasks = await engine.store.tasks_of_run(fired.run_id)
    assert {task.state for task in tasks} == {TaskState.CANCELLED}


async def test_firing_with_the_same_dedup_key_starts_one_run(make_engine: MakeEngine) -> None:
    """A repeated dedup key answers the first event's id and starts nothing new."""
    engine = make_engine(
        {"wf": workflow(one={"handler": "single"})},
        triggers={"t": TriggerSpec(workflow="wf", payload={"source": "trigger"})},
    )
    first = await engine.fire("t", {"extra": 1}, dedup_key="delivery-1")
    second = await engine.fire("t", {"extra": 2}, dedup_key="delivery-1")
    assert (second.event_id, second.run_id, second.duplicate) == (first.event_id, None, True)
    page = await engine.store.list_runs()
    assert [run.id for run in page.items] == [first.run_id]
    event = await engine.store.get_event(first.event_id)
    assert event is not None
    assert event.payload == {"source": "trigger", "extra": 1}


async def test_unknown_name_is_refused_with_the_known_ones(make_engine: MakeEngine) -> None:
    """Firing an unknown name raises and lists what could be fired."""
    engine = make_engine({"wf": workflow(one={"handler": "single"})})
    with pytest.raises(UnknownTarget, match="wf"):
        await engine.fire("nope")


async def test_restart_requeues_interrupted_attempts_and_finishes_the_run(
    store: Store, make_engine: MakeEngine
) -> None:
    """Tasks dispatched when an engine stops are dispatched again by the next one, same attempt."""
    spec = {"wf": workflow(wait={"handler": "hang", "for_each": "event.items"})}
    first = make_engine(spec)
    with first.bus.subscribe() as subscription:
        fired = await first.fire("wf", {"items": [1, 2, 3]})
        dispatched = 0
        async with asyncio.timeout(5):
            async for entry in subscription:
                dispatched += entry.type == "task_dispatched"
                if dispatched == 3:
                    break
    await first.close()
    assert fired.run_id is not None

    handlers.STATE.hang_forever = False
    second = make_engine(spec)
    with second.bus.subscribe() as subscription:
        assert await second.recover() == 3
        finished = await wait_for_end(subscription, fired.run_id)
    assert finished.status == "succeeded"
    assert len(finished.of_type("task_requeued")) == 3
    tasks = await store.tasks_of_run(fired.run_id)
    assert {(task.state, task.attempt) for task in tasks} == {(TaskState.SUCCEEDED, 1)}
    run = await store.get_run(fired.run_id)
    assert run is not None
    assert run.status is RunState.SUCCEEDED


async def test_the_same_dedup_key_on_two_workflows_is_two_events(make_engine: MakeEngine) -> None:
    """Workflows fired by hand deduplicate per workflow, not across all of them."""
    engine = make_engine(
        {"a": workflow(one={"handler": "single"}), "b": workflow(one={"handler": "single"})}
    )
    first = await engine.fire("a", dedup_key="k1")
    second = await engine.fire("b", dedup_key="k1")
    assert not second.duplicate
    assert first.event_id != second.event_id


async def test_restart_keeps_exclusive_limits_for_tasks_awaiting_callbacks(
    store: Store, make_engine: MakeEngine
) -> None:
    """After a restart, a task still awaiting its callback holds its exclusive resource first."""
    spec = {
        "wf": workflow(crm={"handler": "hand_off", "for_each": "event.items", "exclusive": "crm"})
    }
    first = make_engine(spec)
    with first.bus.subscribe() as subscription:
        await first.fire("wf", {"items": [0, 1]})
        async with asyncio.timeout(5):
            async for entry in subscription:
                if entry.type == "task_awaiting_callback":
                    break
    await first.close()
    second = make_engine(spec)
    assert await second.recover() == 2
    admission = second.dispatcher._admission
    assert admission.in_flight(("wf", "crm")) == 1, "only the awaiting task holds crm"
    assert admission.waiting() == 1, "the pending one waits for it"


async def test_operator_retry_reruns_only_what_did_not_succeed(make_engine: MakeEngine) -> None:
    """Retry of a failed run re-runs failed and cancelled tasks at attempt 2, keeps successes."""
    engine = make_engine(
        {
            "wf": workflow(
                fan={
                    "handler": "odd_fails_until_fixed",
                    "for_each": "event.items",
                    "on_failure": "collect",
                },
                after={"handler": "join", "needs": ["fan"]},
            )
        }
    )
    failed = await run_to_end(engine, "wf", {"items": [0, 1, 2, 3]})
    assert failed.status == "failed"
    before = {task.item_key: task for task in await engine.store.tasks_of_run(failed.run_id)}
    handlers.STATE.fixed = True
    with engine.bus.subscribe() as subscription:
        assert await engine.retry_run(failed.run_id) == 2
        finished = await wait_for_end(subscription, failed.run_id)
    assert finished.status == "succeeded"
    assert [e.data["attempt"] for e in finished.of_type("task_retried")] == [2, 2]
    after = {
        task.item_key: task
        for task in await engine.store.tasks_of_run(failed.run_id)
        if task.step == "fan"
    }
    assert {key: task.attempt for key, task in after.items()} == {"0": 1, "1": 2, "2": 1, "3": 2}
    assert after["0"].finished_at == before["0"].finished_at, "successes were kept, not re-run"
    barrier = next(b for b in await engine.store.barriers_of_run(failed.run_id) if b.step == "fan")
    assert (barrier.succeeded, barrier.failed, barrier.status.value) == (4, 0, "open")


async def test_retry_is_refused_for_a_run_that_is_not_failed(make_engine: MakeEngine) -> None:
    """Only a failed or cancelled run can be retried; an unknown one is named."""
    engine = make_engine({"wf": workflow(one={"handler": "single"})})
    done = await run_to_end(engine, "wf")
    with pytest.raises(RunStateError, match="succeeded"):
        await engine.retry_run(done.run_id)
    with pytest.raises(LookupError, match="run_nope"):
        await engine.retry_run("run_nope")


async def test_replay_starts_a_new_run_of_a_stored_event(make_engine: MakeEngine) -> None:
    """Replaying an event starts a fresh run with the same payload; an active run blocks it."""
    engine = make_engine({"wf": workflow(wait={"handler": "hang", "for_each": "event.items"})})
    fired = await engine.fire("wf", {"items": [1]})
    with pytest.raises(RunStateError, match="still running"):
        await engine.replay(fired.event_id)
    forced = await engine.replay(fired.event_id, force=True)
    assert forced.run_id not in (None, fired.run_id)
    assert [run.id for run in await engine.store.runs_of_event(fired.event_id)] == [
        fired.run_id,
        forced.run_id,
    ]


async def test_a_completion_carries_its_barrier_counts_in_one_history_row(
    make_engine: MakeEngine,
) -> None:
    """Each task's finished entry holds the barrier's counts after it (k of n as it grew);
    no separate barrier_advanced row is written per completion."""
    engine = make_engine({"wf": workflow(fan={"handler": "echo", "for_each": "event.items"})})
    finished = await run_to_end(engine, "wf", {"items": [1, 2, 3]})
    assert finished.status == "succeeded"
    counts = [entry.data["barrier"] for entry in finished.of_type("task_succeeded")]
    assert sorted(count["succeeded"] for count in counts) == [1, 2, 3]
    assert {(count["expected"], count["required"], count["failed"]) for count in counts} == {
        (3, 3, 0)
    }
    assert not finished.of_type("barrier_advanced")
