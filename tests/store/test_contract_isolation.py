"""The Store contract, isolation: what a transaction writes is seen only once it commits,
and stored values are JSON, shared with no caller.

These are the promises that make MemoryStore an honest fake: an engine test that passes on
it must not depend on a writer and a reader sharing a dict, or on a half-written batch.
Every backend runs them through the `store` fixture.
"""

from __future__ import annotations

from copy import deepcopy
from dataclasses import replace
from typing import Any, TypeVar

import pytest

from orchestrator.records import HistoryEntry, Run, Task
from orchestrator.states import TaskState
from orchestrator.store import BarrierWrite, CallbackToken, Receipt, Store
from tests.store.conftest import T0, make_barrier, make_event, make_run, make_task, seed_run, write

T = TypeVar("T")


class Boom(Exception):
    """Raised inside a transaction to make it roll back."""


async def write_one_of_each(store: Store, run: Run, task: Task) -> None:
    """One transaction that writes a task, barrier, token, receipt and history entry of `run`,
    asserting that the store's own reads see none of them before it commits."""
    async with store.transaction() as tx:
        await tx.insert_tasks([task])
        await tx.insert_barriers([make_barrier(run)])
        await tx.insert_callback_tokens([CallbackToken("c" * 64, task.id, 1)])
        await tx.insert_receipts([Receipt(task.id, "msg_1", "hash", T0)])
        await tx.append_history([HistoryEntry("run_started", T0, run.id)])
        assert await store.get_task(task.id) is None
        assert await store.tasks_of_run(run.id) == []
        assert await store.barriers_of_run(run.id) == []
        assert await store.callback_target("c" * 64) is None
        assert await store.history(run_id=run.id) == []
        assert (await store.unfinished()).tasks == []


async def test_writes_are_invisible_outside_until_commit(store: Store) -> None:
    """The store's reads see none of an open transaction's writes, and all of them once it
    commits."""
    run = await seed_run(store)
    task = make_task(run)
    await write_one_of_each(store, run, task)
    assert await store.get_task(task.id) == task
    assert await store.barriers_of_run(run.id) == [make_barrier(run)]
    assert await store.callback_target("c" * 64) == (task, 1)
    assert [entry.type for entry in await store.history(run_id=run.id)] == ["run_started"]
    async with store.transaction() as tx:
        assert await tx.receipts({(task.id, "msg_1")}) == {(task.id, "msg_1"): "hash"}


async def write_of_each_kind_then_fail(store: Store, run: Run, kept: Task, task: Task) -> None:
    """One transaction that inserts `task` with a token, receipt and history entry, cancels
    the committed `kept` and counts a failure at its barrier, then raises Boom."""
    async with store.transaction() as tx:
        await tx.insert_tasks([task])
        await tx.insert_callback_tokens([CallbackToken("c" * 64, task.id, 1)])
        await tx.insert_receipts([Receipt(task.id, "msg_1", "hash", T0)])
        await tx.append_history([HistoryEntry("run_started", T0, run.id)])
        cancelled = write(replace(kept, state=TaskState.CANCELLED), TaskState.PENDING)
        assert await tx.write_tasks([cancelled]) == {kept.id}
        draft = make_barrier(run, "draft")
        assert await tx.write_barriers([BarrierWrite(replace(draft, failed=1), draft)])
        raise Boom


async def test_an_exception_leaves_no_write_of_any_kind(store: Store) -> None:
    """A transaction that raises leaves no task, barrier, token, receipt, history or write of
    a committed row, to the store's reads and to the next transaction."""
    run = await seed_run(store)
    kept = make_task(run, "draft")
    async with store.transaction() as tx:
        await tx.insert_tasks([kept])
        await tx.insert_barriers([make_barrier(run, "draft")])
    task = make_task(run)
    with pytest.raises(Boom):
        await write_of_each_kind_then_fail(store, run, kept, task)
    assert await store.tasks_of_run(run.id) == [kept]
    assert await store.barriers_of_run(run.id) == [make_barrier(run, "draft")]
    assert await store.callback_target("c" * 64) is None
    assert await store.history(run_id=run.id) == []
    async with store.transaction() as tx:
        assert await tx.tasks({task.id, kept.id}) == {kept.id: kept}
        assert await tx.receipts({(task.id, "msg_1")}) == {}
        assert await tx.unfinished_tasks(run.id) == [kept]


# Values are JSON copies.


def nested() -> dict[str, Any]:
    return {"lead": {"name": "Ada", "tags": ["a"]}}


def some(value: T | None) -> T:
    assert value is not None
    return value


async def test_mutating_what_was_written_does_not_change_the_store(store: Store) -> None:
    """Changing a payload, spec, item, output or history data after writing it changes
    nothing stored."""
    event = make_event(lead={"name": "Ada"})
    run = make_run(event)
    task = make_task(run, item=nested())
    done = replace(task, state=TaskState.SUCCEEDED, output=nested())
    entry = HistoryEntry("task_succeeded", T0, run.id, data=nested())
    async with store.transaction() as tx:
        await tx.insert_event(event)
        await tx.insert_run(run)
        await tx.insert_tasks([task])
        assert await tx.write_tasks([write(done, TaskState.PENDING)]) == {task.id}
        [appended] = await tx.append_history([entry])
    expected = deepcopy((event, run, done, appended))
    for value in [event.payload["lead"], run.spec, task.item["lead"], done.output, entry.data]:
        value["name"] = "changed"
    assert (await store.get_event(event.id), await store.get_run(run.id)) == expected[:2]
    assert await store.get_task(task.id) == expected[2]
    assert await store.history(run_id=run.id) == [expected[3]]


async def test_mutating_what_was_read_does_not_change_the_store(store: Store) -> None:
    """Changing a value read from the store, in or outside a transaction, changes nothing
    stored."""
    event = make_event(lead={"name": "Ada"})
    run = make_run(event)
    task = replace(make_task(run, item=nested()), output=nested())
    async with store.transaction() as tx:
        await tx.insert_event(event)
        await tx.insert_run(run)
        await tx.insert_tasks([task])
        [entry] = await tx.append_history([HistoryEntry("e", T0, run.id, data=nested())])
        read: list[dict[str, Any]] = [
            (await tx.tasks({task.id}))[task.id].item,
            (await tx.tasks_of_steps([(run.id, task.step)]))[0].output,
            (await tx.unfinished_tasks(run.id))[0].item,
            (await tx.runs({run.id}))[run.id].spec,
            some(await tx.get_event(event.id)).payload,
        ]
    read += [
        some(await store.get_task(task.id)).item,
        (await store.tasks_of_run(run.id))[0].output,
        (await store.unfinished()).tasks[0].item,
        some(await store.get_run(run.id)).spec,
        (await store.runs_of_event(event.id))[0].spec,
        (await store.list_runs()).items[0].spec,
        some(await store.get_event(event.id)).payload,
        (await store.history(run_id=run.id))[0].data,
    ]
    expected = deepcopy((event, run, task, entry))
    for value in read:
        value["changed"] = True
    assert (await store.get_event(event.id), await store.get_run(run.id)) == expected[:2]
    assert await store.runs_of_event(event.id) == [expected[1]]
    assert await store.get_task(task.id) == expected[2]
    assert await store.history(run_id=run.id) == [expected[3]]


async def test_a_value_that_is_not_json_fails_its_write_whole(store: Store) -> None:
    """A write carrying a value JSON cannot hold raises TypeError and stores nothing of its
    batch, so the transaction may go on and commit without it."""
    run = await seed_run(store)
    good, bad = make_task(run, key="good"), make_task(run, key="bad", item={"at": object()})
    other = make_task(run, key="other")
    async with store.transaction() as tx:
        with pytest.raises(TypeError):
            await tx.insert_tasks([good, bad])
        assert await tx.tasks({good.id, bad.id}) == {}
        await tx.insert_tasks([good, other])
        done = write(replace(good, state=TaskState.SUCCEEDED), TaskState.PENDING)
        unjson = write(replace(other, output={"tags": {"a"}}), TaskState.PENDING)
        with pytest.raises(TypeError):
            await tx.write_tasks([done, unjson])
        assert await tx.tasks({good.id, other.id}) == {good.id: good, other.id: other}
        entries = [HistoryEntry("ok", T0, run.id), HistoryEntry("bad", T0, data={"x": object()})]
        with pytest.raises(TypeError):
            await tx.append_history(entries)
        event = make_event(dedup_key="d-1", at=object())
        with pytest.raises(TypeError):
            await tx.insert_event(event)
        retried = make_event(dedup_key="d-1")
        assert await tx.insert_event(retried) == (retried, True)
        unjson_run = replace(make_run(retried), spec={"x": object()})
        with pytest.raises(TypeError):
            await tx.insert_run(unjson_run)
    assert await store.tasks_of_run(run.id) == [good, other]
    assert await store.history() == []
    assert await store.get_event(event.id) is None
    assert await store.get_event(retried.id) == retried
    assert await store.get_run(unjson_run.id) is None
