"""Operator retry: a failed or cancelled run runs again, its successes kept."""

from __future__ import annotations

from dataclasses import replace

from orchestrator import task_moves
from orchestrator.advance import Advance
from orchestrator.barrier import BarrierStatus
from orchestrator.outbox import Ready
from orchestrator.records import Run
from orchestrator.states import RunMove, TaskState, next_run_state
from orchestrator.store import BarrierWrite, StoreConflict

RETRYABLE = (TaskState.FAILED, TaskState.TIMED_OUT, TaskState.CANCELLED)


async def rerun(advance: Advance, run: Run, reason: str) -> int:
    """Re-run what did not succeed in a failed or cancelled run; succeeded work is kept.

    Every failed, timed-out or cancelled task of a step whose barrier has not opened goes
    back to pending with attempt + 1 (so a new callback token: the old attempt's late
    callback is answered 410). Failed barriers wait again with their successes counted;
    steps never started start when their needs open, as always.
    """
    running = next_run_state(run.status, RunMove.RETRY)
    if not await advance.tx.set_run_status(run.id, run.status, running, None):
        return 0
    info = advance.specs.info(run)
    tasks = await advance.tx.tasks_of_steps([(run.id, step) for step in info.spec.steps])
    barrier_writes, task_writes = [], []
    for barrier in await advance.tx.barriers_of_runs([run.id]):
        if barrier.status is BarrierStatus.OPEN:
            continue
        step = info.step(barrier.step)
        own = [task for task in tasks if task.step == barrier.step]
        reset = replace(
            barrier, status=BarrierStatus.WAITING, failed=0, decided_at=None, reason=None,
            succeeded=sum(task.state is TaskState.SUCCEEDED for task in own),
            deadline_at=None if step.deadline is None else advance.now + step.deadline,
        )  # fmt: skip
        barrier_writes.append(BarrierWrite(reset, barrier))
        if reset.deadline_at is not None:
            advance.outbox.step_deadlines.append(reset)
        task_writes += [
            task_moves.retry(t, advance.now, advance.replica) for t in own if t.state in RETRYABLE
        ]
    if len(await advance.tx.write_barriers(barrier_writes)) != len(barrier_writes):
        raise StoreConflict("a barrier changed under this transaction")
    applied = await advance.tx.write_tasks(task_writes)
    for write in task_writes:
        task = write.task
        if task.id in applied:
            advance.outbox.note(
                "task_retried", advance.now, run.id, task_id=task.id, step=task.step,
                attempt=task.attempt, was=write.expected_state.value,
            )  # fmt: skip
            advance.outbox.ready.append(Ready(task, run.workflow, info.step(task.step)))
    advance.outbox.note(
        "run_retried",
        advance.now,
        run.id,
        workflow=run.workflow,
        tasks=len(applied),
        reason=reason,
    )
    await advance.start_ready_steps([run.id])
    return len(applied)
