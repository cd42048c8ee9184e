"""The Store contract, replicas: leases, owners, takeover reads, locked runs.

Run on every backend; only PostgreSQL is shared by several processes (`shared`), but every
store keeps the same records, so one engine code path serves them all.
"""

from __future__ import annotations

from dataclasses import replace

from orchestrator.states import TaskState
from orchestrator.store import Store
from tests.store.conftest import T0, make_task, seed_run, write


async def test_a_replica_is_recorded_and_its_lease_renewed(store: Store) -> None:
    """save_replica records a replica, and again renews its lease (its start time kept)."""
    async with store.transaction() as tx:
        await tx.save_replica("rep_a", T0, T0 + 30)
        await tx.save_replica("rep_b", T0, T0 + 30)
    async with store.transaction() as tx:
        await tx.save_replica("rep_a", T0 + 10, T0 + 40)
    assert await store.replicas() == {"rep_a": T0 + 40, "rep_b": T0 + 30}


async def test_only_an_expired_lease_can_be_dropped_and_only_once(store: Store) -> None:
    """drop_replica applies once its lease ran out, for one transaction only; not before."""
    async with store.transaction() as tx:
        await tx.save_replica("rep_a", T0, T0 + 30)
    async with store.transaction() as tx:
        assert not await tx.drop_replica("rep_a", T0 + 30), "the lease has not run out yet"
    async with store.transaction() as tx:
        assert await tx.drop_replica("rep_a", T0 + 31)
    async with store.transaction() as tx:
        assert not await tx.drop_replica("rep_a", T0 + 31), "already taken over"
    assert await store.replicas() == {}


async def test_owned_tasks_are_the_unfinished_tasks_of_those_owners(store: Store) -> None:
    """owned_tasks finds the pending and dispatched tasks of the named owners (None: no
    owner), in creation order; finished ones and other owners' are left out."""
    run = await seed_run(store)
    tasks = [
        replace(make_task(run, key="a"), owner="rep_a"),
        replace(make_task(run, key="b"), owner="rep_b", state=TaskState.DISPATCHED),
        replace(make_task(run, key="c"), owner=None),
        replace(make_task(run, key="d"), owner="rep_a", state=TaskState.SUCCEEDED),
        replace(make_task(run, key="e"), owner="rep_a", state=TaskState.DISPATCHED),
    ]
    async with store.transaction() as tx:
        await tx.insert_tasks(tasks)
        owned = await tx.owned_tasks(["rep_a", None])
        only_b = await tx.owned_tasks(["rep_b"])
        none = await tx.owned_tasks([])
    assert [task.item_key for task in owned] == ["a", "c", "e"]
    assert [task.item_key for task in only_b] == ["b"]
    assert none == []


async def test_a_task_write_moves_its_owner(store: Store) -> None:
    """The owner a write carries is stored, as every other field of the task."""
    run = await seed_run(store)
    task = replace(make_task(run), owner="rep_a")
    async with store.transaction() as tx:
        await tx.insert_tasks([task])
    taken = replace(task, owner="rep_b")
    async with store.transaction() as tx:
        assert await tx.write_tasks([write(taken, TaskState.PENDING)]) == {task.id}
        assert [t.id for t in await tx.owned_tasks(["rep_b"])] == [task.id]
    assert (await store.get_task(task.id)) == taken


async def test_locked_runs_read_as_runs(store: Store) -> None:
    """lock_runs answers what runs() answers (and locks them where the backend can)."""
    run = await seed_run(store)
    async with store.transaction() as tx:
        assert await tx.lock_runs([run.id, "run_missing"]) == {run.id: run}
        assert await tx.lock_runs([]) == {}


async def test_notices_need_no_listener(store: Store) -> None:
    """A transaction may leave notices whether or not anyone listens; they change nothing."""
    async with store.transaction() as tx:
        tx.notify("history", "42")
    await store.listen(lambda notice: None)
    async with store.transaction() as tx:
        tx.notify("history", "43")


async def test_lane_loads_count_dispatched_tasks_and_recent_starts_per_lane(store: Store) -> None:
    """A lane is (workflow, step): its dispatched tasks whatever their owner, and the start
    times after its own `since`, oldest first; a lane with nothing counts zero."""
    outreach = await seed_run(store, workflow="outreach")
    other = await seed_run(store, workflow="other")
    tasks = [
        replace(make_task(outreach, key="a"), state=TaskState.DISPATCHED, started_at=T0 + 1),
        replace(make_task(outreach, key="b"), state=TaskState.DISPATCHED, started_at=T0 + 5,
                owner="rep_b"),
        replace(make_task(outreach, key="c"), state=TaskState.SUCCEEDED, started_at=T0 + 3,
                finished_at=T0 + 4),
        replace(make_task(outreach, key="d")),  # pending: neither in flight nor started
        replace(make_task(outreach, step="write", key="e"), state=TaskState.DISPATCHED,
                started_at=T0 + 2),
        replace(make_task(other, key="f"), state=TaskState.DISPATCHED, started_at=T0 + 6),
    ]  # fmt: skip
    async with store.transaction() as tx:
        await tx.insert_tasks(tasks)
    research, write_step = ("outreach", "research"), ("outreach", "write")
    idle = ("outreach", "nothing")
    async with store.transaction() as tx:
        loads = await tx.lane_loads([research, write_step, idle], {research: T0 + 2})
        assert await tx.lane_loads([], {}) == {}
    assert loads[research].in_flight == 2
    assert loads[research].starts == (T0 + 3, T0 + 5)
    assert (loads[write_step].in_flight, loads[write_step].starts) == (1, ())
    assert (loads[idle].in_flight, loads[idle].starts) == (0, ())
    assert set(loads) == {research, write_step, idle}
