"""Picking up after a restart, or a dead replica's work: requeue interrupted work, keep
waiting work waiting, re-arm timers.

A task awaiting its callback keeps waiting (its service has the URL) and keeps its slot
under its limits; a task whose handler was still running is requeued (the same attempt,
so the same idempotency key: at-least-once); pending tasks are offered again; every
deadline is re-armed from the store. On a shared store the same happens to the tasks of
one replica (this one's earlier self, or a peer whose lease ran out): this replica claims
them, so its dispatcher holds them from then on.
"""

from __future__ import annotations

from collections.abc import Collection
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
    taken_over: tuple[str, ...] = ()  # the expired peers whose tasks this replica claimed


async def recover(
    store: Store,
    applier: Applier,
    capabilities: Capabilities,
    dispatcher: Dispatcher,
    deadlines: Deadlines,
    owners: Collection[str | None] | None = None,
    expired: Collection[str] = (),
) -> Recovered:
    """Requeue, hold and re-arm what an earlier process left unfinished: every task
    (`owners` None, a store no other process shares), or the tasks of these replicas (a
    replica's earlier self, unowned tasks) and of the `expired` peers this transaction
    removes first (another survivor may remove them first), which this replica claims."""
    await capabilities.load()  # outside any transaction: dispatch needs it inside
    unfinished = await store.unfinished()

    lost: list[str] = []

    async def work(advance: Advance) -> tuple[list[Ready], int]:
        why = "the orchestrator restarted while it ran"
        lost.clear()  # the transaction may be tried again
        if owners is None:
            tasks = unfinished.tasks
        else:
            for peer in sorted(expired):
                if await advance.tx.drop_replica(peer, advance.now):
                    lost.append(peer)
            tasks = await advance.tx.owned_tasks({*owners, *lost})
            for peer in lost:
                why = "its replica stopped renewing its lease while it ran"
                advance.outbox.note(
                    "replica_lost", advance.now, None, replica=peer, by=advance.replica,
                    tasks=sum(task.owner == peer for task in tasks),
                )  # fmt: skip
        infos = await advance.infos({task.run_id for task in tasks})
        held, requeues, claims = [], [], []
        for task in tasks:
            info = infos[task.run_id]
            ready = Ready(task, info.workflow, info.step(task.step))
            if task.state is TaskState.DISPATCHED and not task.awaiting:
                requeues.append(
                    (ready, task_moves.requeue(task, advance.now, owner=advance.replica))
                )
            elif owners is not None:
                claims.append((ready, task_moves.claim(task, advance.replica)))
            elif task.state is TaskState.DISPATCHED:
                held.append(ready)
            else:
                advance.outbox.ready.append(ready)
        applied = await advance.tx.write_tasks([write for _, write in requeues + claims])
        for ready, write in claims:
            if write.task.id in applied:
                claimed = Ready(write.task, ready.workflow, ready.spec)
                if write.task.state is TaskState.DISPATCHED:
                    held.append(claimed)
                else:
                    advance.outbox.ready.append(claimed)
        for ready, write in requeues:
            task = write.task
            if task.id in applied:
                advance.outbox.note(
                    "task_requeued", advance.now, task.run_id, task_id=task.id, step=task.step,
                    attempt=task.attempt, reason=why,
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
        resumed, len(held), sum(b.deadline_at is not None for b in unfinished.barriers),
        tuple(lost),
    )  # fmt: skip
    if resumed or held or recovered.step_deadlines:
        log.info(
            "recovered",
            dispatching=recovered.dispatching,
            awaiting_callback=recovered.awaiting_callback,
            step_deadlines=recovered.step_deadlines,
            replicas=None if owners is None else sorted(map(str, owners)),
        )
    return recovered
