"""Picking up after a restart: requeue interrupted work, keep waiting work waiting, re-arm timers.

A task awaiting its callback keeps waiting (its service has the URL) and keeps its slot
under its limits; a task whose handler was still running is requeued (the same attempt,
so the same idempotency key: at-least-once); pending tasks are offered again; every
deadline is re-armed from the store.
"""

from __future__ import annotations

from dataclasses import dataclass

import structlog

from orchestrator import task_moves
from orchestrator.advance import Advance
from orchestrator.applier import Applier
from orchestrator.capabilities import Capabilities
from orchestrator.deadlines import Deadlines
from orchestrator.dispatch import Dispatcher
from orchestrator.outbox import Ready
from orchestrator.states import TaskState
from orchestrator.store import Store

log = structlog.get_logger("orchestrator.engine")


@dataclass(frozen=True, slots=True)
class Recovered:
    dispatching: int
    awaiting_callback: int
    step_deadlines: int


async def recover(
    store: Store,
    applier: Applier,
    capabilities: Capabilities,
    dispatcher: Dispatcher,
    deadlines: Deadlines,
) -> Recovered:
    """Requeue, hold and re-arm what an earlier process left unfinished."""
    await capabilities.load()  # outside any transaction: dispatch needs it inside
    unfinished = await store.unfinished()

    async def work(advance: Advance) -> tuple[list[Ready], int]:
        infos = await advance.infos({task.run_id for task in unfinished.tasks})
        held, requeues = [], []
        for task in unfinished.tasks:
            info = infos[task.run_id]
            ready = Ready(task, info.workflow, info.step(task.step))
            if task.state is TaskState.DISPATCHED and task.awaiting:
                held.append(ready)
            elif task.state is TaskState.DISPATCHED:
                requeues.append((ready, task_moves.requeue(task, advance.now)))
            else:
                advance.outbox.ready.append(ready)
        applied = await advance.tx.write_tasks([write for _, write in requeues])
        for ready, write in requeues:
            task = write.task
            if task.id in applied:
                advance.outbox.note(
                    "task_requeued", advance.now, task.run_id, task_id=task.id, step=task.step,
                    attempt=task.attempt, reason="the orchestrator restarted while it ran",
                )  # fmt: skip
                advance.outbox.ready.append(Ready(task, ready.workflow, ready.spec))
        waiting = [b for b in unfinished.barriers if b.deadline_at is not None]
        advance.outbox.step_deadlines.extend(waiting)
        return held, len(advance.outbox.ready)

    held, resumed = await applier.transact(work)
    # Tasks awaiting callbacks take their slots before anything pending is admitted (the
    # dispatcher admits on the next turn of the loop).
    for item in held:
        dispatcher.hold(item)
        deadlines.arm_task(item.task)
    recovered = Recovered(
        resumed, len(held), sum(b.deadline_at is not None for b in unfinished.barriers)
    )
    if resumed or held or recovered.step_deadlines:
        log.info(
            "recovered",
            dispatching=recovered.dispatching,
            awaiting_callback=recovered.awaiting_callback,
            step_deadlines=recovered.step_deadlines,
        )
    return recovered
