"""The Store contract, batches: each StoreTx operation takes many rows at once and answers
for each of them, whatever the batch's size.

The tests speak only the Store and StoreTx protocols, never SQL, so every backend runs them
unchanged through the `store` fixture.
"""

from __future__ import annotations

import itertools
from dataclasses import replace

from orchestrator.barrier import Barrier, BarrierStatus
from orchestrator.ids import new_id
from orchestrator.records import HistoryEntry, Task
from orchestrator.states import RunState, TaskState
from orchestrator.store import BarrierWrite, CallbackToken, Receipt, Store
from orchestrator.store.sqlite_tx import OFFLOAD_ROWS
from tests.store.conftest import T0, make_barrier, make_task, seed_run, write

# Past OFFLOAD_ROWS the SQLite store runs a batch in its connection's thread: both paths count.
LARGE = 600
assert LARGE > 2 * OFFLOAD_ROWS


def dispatched(task: Task, at: float = T0 + 1) -> Task:
    return task.replace(state=TaskState.DISPATCHED, started_at=at, due_at=at + 60)


def succeeded(task: Task, n: int = 1) -> Task:
    return task.replace(state=TaskState.SUCCEEDED, output={"n": n}, finished_at=T0 + 2)


async def commit_tasks(store: Store, tasks: list[Task]) -> None:
    async with store.transaction() as tx:
        await tx.insert_tasks(tasks)


# Conditional task writes.


async def test_write_tasks_applies_exactly_the_writes_still_as_expected(store: Store) -> None:
    """In a mixed batch write_tasks applies each write whose row is still in the expected state
    and attempt, answers exactly those ids, and leaves every other row as it was."""
    run = await seed_run(store)
    fresh, moved, retried, other = (make_task(run, key=key) for key in "abcd")
    moved, retried = dispatched(moved), replace(retried, attempt=2)
    async with store.transaction() as tx:
        await tx.insert_tasks([fresh, moved, retried, other])
    missing = make_task(run, key="missing")
    writes = [
        write(dispatched(fresh), TaskState.PENDING),  # applies
        write(succeeded(moved), TaskState.PENDING),  # stale state: it is dispatched
        write(dispatched(retried), TaskState.PENDING, attempt=1),  # stale attempt: it is 2
        write(dispatched(missing), TaskState.PENDING),  # no such task
        write(dispatched(other), TaskState.PENDING),  # applies
    ]
    async with store.transaction() as tx:
        assert await tx.write_tasks(writes) == {fresh.id, other.id}
        assert await tx.tasks({missing.id}) == {}
    assert await store.tasks_of_run(run.id) == [
        dispatched(fresh),
        moved,
        retried,
        dispatched(other),
    ]


async def test_a_write_whose_result_is_already_stored_does_not_apply(store: Store) -> None:
    """A duplicate of a write that applied, finding the row already as it would leave it but
    no longer in its expected state, is answered not applied: a report counts once."""
    run = await seed_run(store)
    task, alone = dispatched(make_task(run, key="a")), dispatched(make_task(run, key="b"))
    async with store.transaction() as tx:
        await tx.insert_tasks([task, alone])
        assert await tx.write_tasks([write(succeeded(task), TaskState.DISPATCHED)]) == {task.id}
    duplicate = write(succeeded(task), TaskState.DISPATCHED)
    async with store.transaction() as tx:
        assert await tx.write_tasks([duplicate]) == set()
        fine = write(succeeded(alone), TaskState.DISPATCHED)
        assert await tx.write_tasks([duplicate, fine]) == {alone.id}
    assert await store.tasks_of_run(run.id) == [succeeded(task), succeeded(alone)]


async def test_writes_of_one_task_in_one_batch_apply_in_order(store: Store) -> None:
    """Writes of one task in one batch apply one after another: a write expecting the previous
    write's result applies, one expecting the row as it was before does not."""
    run = await seed_run(store)
    task = make_task(run)
    async with store.transaction() as tx:
        await tx.insert_tasks([task])
        chained = [
            write(dispatched(task), TaskState.PENDING),
            write(succeeded(dispatched(task)), TaskState.DISPATCHED),
            write(dispatched(task, at=T0 + 9), TaskState.PENDING),
        ]
        assert await tx.write_tasks(chained) == {task.id}
    assert await store.get_task(task.id) == succeeded(dispatched(task))


async def test_write_tasks_of_an_empty_batch_applies_nothing(store: Store) -> None:
    """An empty batch of writes answers the empty set."""
    async with store.transaction() as tx:
        assert await tx.write_tasks([]) == set()
        assert await tx.write_barriers([]) == set()


# Conditional barrier writes.


async def test_write_barriers_applies_exactly_the_writes_still_as_expected(store: Store) -> None:
    """In a mixed batch write_barriers applies each write whose barrier still has the expected
    status and counts, answers exactly those keys, and leaves every other barrier alone."""
    run = await seed_run(store)
    fresh, decided, counted, other = (make_barrier(run, step) for step in ["a", "b", "c", "d"])
    decided = replace(decided, succeeded=4, status=BarrierStatus.OPEN, decided_at=T0 + 1)
    counted = replace(counted, succeeded=1)
    async with store.transaction() as tx:
        await tx.insert_barriers([fresh, decided, counted, other])
    one_more = {step: replace(make_barrier(run, step), succeeded=1) for step in "abcd"}
    missing = make_barrier(run, "missing")
    writes = [
        BarrierWrite(one_more["a"], fresh),  # applies
        BarrierWrite(one_more["b"], make_barrier(run, "b")),  # stale status: it opened
        BarrierWrite(one_more["c"], make_barrier(run, "c")),  # stale counts: one arrived
        BarrierWrite(replace(missing, succeeded=1), missing),  # no such barrier
        BarrierWrite(one_more["d"], other),  # applies
    ]
    async with store.transaction() as tx:
        assert await tx.write_barriers(writes) == {(run.id, "a"), (run.id, "d")}
        assert await tx.barriers({(run.id, "missing")}) == {}
    assert await store.barriers_of_run(run.id) == [one_more["a"], decided, counted, one_more["d"]]


async def test_write_barriers_is_conditional_on_each_count(store: Store) -> None:
    """A barrier write expecting the right status but a wrong succeeded or failed count, or a
    result already stored, does not apply."""
    run = await seed_run(store)
    stored = replace(make_barrier(run), succeeded=2, failed=1)
    async with store.transaction() as tx:
        await tx.insert_barriers([stored])
    after = replace(stored, succeeded=3)
    wrong = [
        BarrierWrite(after, replace(stored, succeeded=1)),
        BarrierWrite(after, replace(stored, failed=0)),
        BarrierWrite(after, replace(stored, status=BarrierStatus.OPEN)),
    ]
    async with store.transaction() as tx:
        for barrier_write in wrong:
            assert await tx.write_barriers([barrier_write]) == set()
        assert await tx.write_barriers([BarrierWrite(after, stored)]) == {(run.id, "research")}
        assert await tx.write_barriers([BarrierWrite(after, stored)]) == set()
    assert await store.barriers_of_run(run.id) == [after]


# Batch reads.


async def test_batch_reads_answer_only_the_keys_that_exist(store: Store) -> None:
    """tasks, barriers and runs answer the stored rows of the keys asked for and leave missing
    keys out; no keys, no rows."""
    run, other = await seed_run(store), await seed_run(store, now=T0 + 1)
    tasks = [make_task(run, key=key) for key in "ab"]
    barrier = make_barrier(run)
    await commit_tasks(store, tasks)
    async with store.transaction() as tx:
        await tx.insert_barriers([barrier])
        gone_task, gone_run = new_id("tsk"), new_id("run")
        assert await tx.tasks({tasks[0].id, tasks[1].id, gone_task}) == {t.id: t for t in tasks}
        assert await tx.tasks({gone_task}) == {}
        assert await tx.tasks(set()) == {}
        key = (run.id, "research")
        assert await tx.barriers({key, (run.id, "draft"), (other.id, "research")}) == {key: barrier}
        assert await tx.barriers(set()) == {}
        assert await tx.runs({run.id, other.id, gone_run}) == {run.id: run, other.id: other}
        assert await tx.runs(set()) == {}


async def test_barriers_of_runs_reads_several_runs_in_creation_order(store: Store) -> None:
    """barriers_of_runs answers the barriers of every run asked for, in the order they were
    made, and none of a run not asked for."""
    first, second, third = [await seed_run(store, now=T0 + i) for i in range(3)]
    made = [
        make_barrier(second, "draft"),
        make_barrier(first, "research"),
        make_barrier(third, "research"),
        make_barrier(second, "research"),
    ]
    async with store.transaction() as tx:
        await tx.insert_barriers(made[:2])
    async with store.transaction() as tx:
        await tx.insert_barriers(made[2:])
        assert await tx.barriers_of_runs([second.id, first.id]) == [made[0], made[1], made[3]]
        assert await tx.barriers_of_runs([new_id("run")]) == []
        assert await tx.barriers_of_runs([]) == []


async def test_tasks_of_steps_keeps_creation_order_across_steps(store: Store) -> None:
    """tasks_of_steps over several steps answers their tasks in the order they were made,
    across batches and transactions (this one's uncommitted ones last), each task once."""
    run, other = await seed_run(store), await seed_run(store, now=T0 + 1)
    made = [
        make_task(run, "research", "a"),
        make_task(run, "draft", "a"),
        make_task(other, "research", "a"),
        make_task(run, "research", "b"),
        make_task(run, "draft", "b"),
        make_task(run, "send", "a"),
        make_task(run, "research", "c"),
    ]
    async with store.transaction() as tx:
        await tx.insert_tasks(made[:3])
    async with store.transaction() as tx:
        await tx.insert_tasks(made[3:5])
    async with store.transaction() as tx:
        await tx.insert_tasks(made[5:])
        keys = [(run.id, "draft"), (run.id, "research"), (run.id, "draft")]
        wanted = [made[0], made[1], made[3], made[4], made[6]]
        assert await tx.tasks_of_steps(keys) == wanted
        assert await tx.tasks_of_steps([(run.id, "send")]) == [made[5]]
        assert await tx.tasks_of_steps([]) == []


async def test_creation_order_survives_pruning_older_runs(store: Store) -> None:
    """Tasks made after older runs were pruned still come after the tasks made before."""
    old = await seed_run(store, status=RunState.SUCCEEDED)
    run = await seed_run(store, now=T0 + 1)
    before = [make_task(run, key=key) for key in "abc"]
    await commit_tasks(store, [make_task(old, key=key) for key in "abc"] + before)
    assert await store.prune_runs(T0 + 10, 100) == 1
    after = [make_task(run, key=key) for key in "de"]
    async with store.transaction() as tx:
        await tx.insert_tasks(after)
    async with store.transaction() as tx:
        assert await tx.tasks_of_steps([(run.id, "research")]) == [*before, *after]
        assert await tx.unfinished_tasks(run.id) == [*before, *after]


async def test_unfinished_tasks_of_a_run_and_of_a_step(store: Store) -> None:
    """unfinished_tasks answers the pending and dispatched tasks of a run, or of one of its
    steps, in creation order, as this transaction left them."""
    run, other = await seed_run(store), await seed_run(store, now=T0 + 1)
    research = [make_task(run, "research", key) for key in "abc"]
    draft = [dispatched(make_task(run, "draft", "a")), make_task(run, "draft", "b")]
    finished = [
        replace(make_task(run, "research", state.value), state=state)
        for state in (
            TaskState.SUCCEEDED,
            TaskState.FAILED,
            TaskState.TIMED_OUT,
            TaskState.CANCELLED,
        )
    ]
    await commit_tasks(store, [*research, *draft, *finished, make_task(other, "research", "a")])
    uncommitted = make_task(run, "research", "d")
    async with store.transaction() as tx:
        await tx.insert_tasks([uncommitted])
        assert await tx.unfinished_tasks(run.id) == [*research, *draft, uncommitted]
        assert await tx.unfinished_tasks(run.id, "draft") == draft
        assert await tx.unfinished_tasks(run.id, "missing") == []
        done = write(succeeded(research[1]), TaskState.PENDING)
        assert await tx.write_tasks([done]) == {research[1].id}
        assert await tx.unfinished_tasks(run.id, "research") == [
            research[0],
            research[2],
            uncommitted,
        ]


async def test_receipts_of_several_keys_at_once(store: Store) -> None:
    """receipts answers the body hash of every key asked for that has one, in one call."""
    run = await seed_run(store)
    first, second = make_task(run, key="a"), make_task(run, key="b")
    async with store.transaction() as tx:
        await tx.insert_tasks([first, second])
        await tx.insert_receipts(
            [
                Receipt(first.id, "msg_1", "hash-1", T0),
                Receipt(first.id, "msg_2", "hash-2", T0),
                Receipt(second.id, "msg_1", "hash-3", T0),
            ]
        )
    keys = {(first.id, "msg_1"), (first.id, "msg_2"), (second.id, "msg_1"), (second.id, "msg_2")}
    async with store.transaction() as tx:
        assert await tx.receipts(keys) == {
            (first.id, "msg_1"): "hash-1",
            (first.id, "msg_2"): "hash-2",
            (second.id, "msg_1"): "hash-3",
        }
        assert await tx.receipts(set()) == {}


# Large batches.


async def test_a_large_fan_out_is_inserted_read_and_written_in_batches(store: Store) -> None:
    """insert_tasks, tasks, tasks_of_steps and write_tasks handle a batch of LARGE rows, and a
    large write batch still answers exactly the writes that applied."""
    run = await seed_run(store)
    tasks = [make_task(run, key=f"lead-{i:04}") for i in range(LARGE)]
    async with store.transaction() as tx:
        await tx.insert_tasks(tasks)
        assert await tx.tasks({task.id for task in tasks}) == {task.id: task for task in tasks}
        assert await tx.tasks_of_steps([(run.id, "research")]) == tasks
    # Every third task was dispatched elsewhere meanwhile: its write below is stale.
    taken = tasks[::3]
    async with store.transaction() as tx:
        assert await tx.write_tasks([write(dispatched(t), TaskState.PENDING) for t in taken]) == {
            task.id for task in taken
        }
    writes = [write(dispatched(task, at=T0 + 5), TaskState.PENDING) for task in tasks]
    async with store.transaction() as tx:
        applied = await tx.write_tasks(writes)
    assert applied == {task.id for task in tasks} - {task.id for task in taken}
    stored = await store.tasks_of_run(run.id)
    assert stored == [
        dispatched(task) if index % 3 == 0 else dispatched(task, at=T0 + 5)
        for index, task in enumerate(tasks)
    ]


async def test_a_large_batch_of_callback_tokens_all_resolve(store: Store) -> None:
    """insert_callback_tokens stores a batch of LARGE tokens, each resolving to its own task."""
    run = await seed_run(store)
    tasks = [make_task(run, key=f"lead-{i:04}") for i in range(LARGE)]
    tokens = [CallbackToken(f"{i:064x}", task.id, 1 + i % 3) for i, task in enumerate(tasks)]
    async with store.transaction() as tx:
        await tx.insert_tasks(tasks)
        await tx.insert_callback_tokens(tokens)
    for token in [tokens[0], tokens[OFFLOAD_ROWS], tokens[-1]]:
        found = await store.callback_target(token.token_hash)
        assert found is not None
        assert (found[0].id, found[1]) == (token.task_id, token.attempt)


async def test_a_large_history_batch_gets_consecutive_increasing_ids(store: Store) -> None:
    """append_history of LARGE entries answers them with consecutive increasing ids, after the
    ids of earlier batches, and history() reads back the same entries."""
    run = await seed_run(store)
    async with store.transaction() as tx:
        [before] = await tx.append_history([HistoryEntry("run_started", T0, run.id)])
    entries = [HistoryEntry("task_queued", T0 + i, run.id, data={"i": i}) for i in range(LARGE)]
    async with store.transaction() as tx:
        stored = await tx.append_history(entries)
    ids = [entry.id or 0 for entry in stored]
    assert ids[0] > (before.id or 0)
    assert all(b == a + 1 for a, b in itertools.pairwise(ids))
    assert [replace(entry, id=None) for entry in stored] == entries
    assert await store.history(after=before.id or 0, limit=LARGE + 1) == stored


async def test_a_large_batch_of_barriers_is_written_conditionally(store: Store) -> None:
    """insert_barriers and write_barriers handle LARGE barriers, answering exactly the writes
    whose barrier was still as expected."""
    run = await seed_run(store)
    barriers = [make_barrier(run, f"step-{i:04}") for i in range(LARGE)]
    counted: list[Barrier] = [replace(b, succeeded=1) for b in barriers]
    async with store.transaction() as tx:
        await tx.insert_barriers(barriers)
        assert await tx.write_barriers(
            [BarrierWrite(c, b) for c, b in zip(counted[::2], barriers[::2], strict=True)]
        ) == {(run.id, b.step) for b in barriers[::2]}
    async with store.transaction() as tx:
        applied = await tx.write_barriers(
            [BarrierWrite(c, b) for c, b in zip(counted, barriers, strict=True)]
        )
    assert applied == {(run.id, b.step) for b in barriers[1::2]}
    assert await store.barriers_of_run(run.id) == counted
