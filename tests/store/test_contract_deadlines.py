"""The Store contract, deadlines: what the dispatcher's deadline window reads from the store."""

from __future__ import annotations

from dataclasses import replace

from orchestrator.records import Run, Task
from orchestrator.states import RunState, TaskState
from orchestrator.store import Store
from tests.store.conftest import T0, make_task, seed_run, write


def dispatched(run: Run, key: str, due_at: float | None) -> Task:
    return replace(make_task(run, key=key), state=TaskState.DISPATCHED, due_at=due_at)


async def test_deadlines_before_lists_dispatched_tasks_of_running_runs_by_deadline(
    store: Store,
) -> None:
    """deadlines_before(t) holds the dispatched tasks of running runs due before t, earliest
    first; pending and finished tasks, tasks without a deadline and finished runs are left out."""
    running = await seed_run(store)
    failed = await seed_run(store, status=RunState.FAILED, now=T0 + 1)
    late = dispatched(running, "late", T0 + 30)
    early = dispatched(running, "early", T0 + 10)
    middle = dispatched(running, "middle", T0 + 20)
    left_out = [
        dispatched(running, "no-deadline", None),
        replace(make_task(running, key="backoff"), due_at=T0 + 5),
        replace(dispatched(running, "done", T0 + 5), state=TaskState.SUCCEEDED),
        dispatched(failed, "of-a-failed-run", T0 + 5),
    ]
    async with store.transaction() as tx:
        await tx.insert_tasks([late, early, middle, *left_out])
    assert await store.deadlines_before(T0 + 100) == [early, middle, late]
    assert await store.deadlines_before(T0 + 20) == [early], "the bound itself is excluded"
    assert await store.deadlines_before(T0 + 10) == []


async def test_next_deadline_is_the_earliest_dispatched_deadline_from_a_time(store: Store) -> None:
    """next_deadline(t) is the smallest deadline of a dispatched task at or after t, else None."""
    run = await seed_run(store)
    async with store.transaction() as tx:
        await tx.insert_tasks(
            [
                dispatched(run, "a", T0 + 10),
                dispatched(run, "b", T0 + 20),
                dispatched(run, "none", None),
                replace(make_task(run, key="pending"), due_at=T0 + 15),
            ]
        )
    assert await store.next_deadline(T0) == T0 + 10
    assert await store.next_deadline(T0 + 10) == T0 + 10, "the bound itself is included"
    assert await store.next_deadline(T0 + 11) == T0 + 20
    assert await store.next_deadline(T0 + 21) is None


async def test_deadlines_follow_task_transitions(store: Store) -> None:
    """A task leaves the deadline reads once it is no longer dispatched, and a moved deadline
    is read at its new time."""
    run = await seed_run(store)
    first = dispatched(run, "first", T0 + 10)
    second = dispatched(run, "second", T0 + 20)
    async with store.transaction() as tx:
        await tx.insert_tasks([first, second])
    succeeded = replace(first, state=TaskState.SUCCEEDED, due_at=None, finished_at=T0 + 1)
    extended = replace(second, due_at=T0 + 40)
    async with store.transaction() as tx:
        assert await tx.write_tasks(
            [write(succeeded, TaskState.DISPATCHED), write(extended, TaskState.DISPATCHED)]
        ) == {first.id, second.id}
    assert await store.deadlines_before(T0 + 100) == [extended]
    assert await store.next_deadline(T0) == T0 + 40
