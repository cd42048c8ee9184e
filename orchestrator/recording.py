"""Recording a batch of work in one transaction, a constant number of statements per kind.

`apply` does every piece of a batch (work.py) inside one transaction and returns a result
for each: hand-offs become tasks awaiting callbacks, hand-offs that did not get through go
out again later, reports and verified callbacks go through the one completion path, step
deadlines reach their barriers, rejections are appended to history. A hand-off that awaits
an event registers its wait, or completes at once from an event kept for its key
(key_waits.py).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from orchestrator import key_waits, task_moves
from orchestrator.advance import Advance, Applied, Report
from orchestrator.outbox import Ready
from orchestrator.states import Outcome, RunState, backoff_delay
from orchestrator.store import Receipt
from orchestrator.verdicts import callback_verdict, unseen_callbacks
from orchestrator.work import (
    CallbackWork,
    DeadlineWork,
    HandoffWork,
    RecordWork,
    RedispatchWork,
    ReportWork,
    Work,
)

MAX_DISPATCH_TRIES = 8


async def apply(advance: Advance, batch: Sequence[Work]) -> list[Any]:
    """Every piece of work of the batch inside one transaction; a result for each."""
    results: dict[int, Any] = {}
    reports: list[tuple[int, Report]] = []
    callbacks = [(i, w) for i, w in enumerate(batch) if isinstance(w, CallbackWork)]
    for index, work in enumerate(batch):
        if isinstance(work, RecordWork):
            advance.outbox.history.extend(work.entries)
            results[index] = None
        elif isinstance(work, ReportWork) and work.report is not None:
            reports.append((index, work.report))
    handoffs = [(i, w) for i, w in enumerate(batch) if isinstance(w, HandoffWork)]
    handed, early = await _hand_off(advance, handoffs)
    results.update(handed)
    redispatches = [(i, w) for i, w in enumerate(batch) if isinstance(w, RedispatchWork)]
    reports += await _redispatch(advance, redispatches, results)
    for index, work in enumerate(batch):
        if isinstance(work, DeadlineWork):
            results[index] = await _step_deadline(advance, work.run_id, work.step)
    fresh = await unseen_callbacks(advance, callbacks, results)
    applied = await advance.report(
        [report for _, report in reports]
        + [work.report for _, work in fresh if work.report]
        + [completing.report for completing in early]
    )
    for (index, _), outcome in zip(reports, applied, strict=False):
        results[index] = outcome
    receipts: list[Receipt] = []
    settled = applied[len(reports) : len(reports) + len(fresh)]
    for (index, work), outcome in zip(fresh, settled, strict=True):
        results[index] = callback_verdict(advance, work, outcome, receipts)
    key_waits.annotate(early, applied[len(reports) + len(fresh) :])
    await advance.tx.insert_receipts(receipts)
    await _forget_waits(advance, [report for _, report in reports], applied)
    return [results.get(index) for index in range(len(batch))]


async def _forget_waits(advance: Advance, reports: list[Report], applied: list[Applied]) -> None:
    """A timer or an operator ended tasks awaiting events: their waits go with them. (Other
    ways a task ends leave its wait to the retention sweep: a wait whose task no longer
    waits is never matched.)"""
    ended = [
        report.task.id
        for report, outcome in zip(reports, applied, strict=False)
        if report.task.awaiting and report.source in ("timer", "operator") and outcome.changed
    ]
    await advance.tx.delete_waits(ended)


async def _hand_off(
    advance: Advance, handoffs: list[tuple[int, HandoffWork]]
) -> tuple[dict[int, bool], list[key_waits.Completing]]:
    """The handlers handed their work off: wait for the callbacks or events, with deadlines.
    Also the reports of tasks that an event kept for their key completes at once."""
    writes = []
    for _, work in handoffs:
        assert work.item is not None  # noqa: S101 - built with one
        assert work.handoff is not None  # noqa: S101 - built with one
        step, handoff = work.item.spec, work.handoff
        window = handoff.heartbeat or step.heartbeat or handoff.timeout or step.timeout
        move = task_moves.await_event if handoff.event else task_moves.await_callback
        writes.append(move(work.item.task, advance.now, window))
    applied = await advance.tx.write_tasks(writes)
    registering = []
    for (_, work), write in zip(handoffs, writes, strict=True):
        task, wait = write.task, work.handoff.event if work.handoff else None
        if task.id not in applied:
            continue
        if wait is None:
            advance.outbox.note(
                "task_awaiting_callback", advance.now, task.run_id, task_id=task.id,
                step=task.step, attempt=task.attempt, deadline=task.due_at,
            )  # fmt: skip
            advance.outbox.task_deadlines.append(task)
            continue
        advance.outbox.note(
            "task_awaiting_event", advance.now, task.run_id, task_id=task.id, step=task.step,
            attempt=task.attempt, trigger=wait.trigger, key=wait.key, deadline=task.due_at,
        )  # fmt: skip
        assert work.item is not None  # noqa: S101 - built with one
        registering.append(key_waits.Registering(task, work.item.spec, wait, task.due_at))
    early = await key_waits.register(advance, registering)
    completed_at_once = {completing.report.task.id for completing in early}
    advance.outbox.task_deadlines.extend(
        item.task for item in registering if item.task.id not in completed_at_once
    )
    # Not applied: the callback came first, or the task ended meanwhile.
    handed = {
        index: write.task.id in applied for (index, _), write in zip(handoffs, writes, strict=True)
    }
    return handed, early


async def _redispatch(
    advance: Advance, redispatches: list[tuple[int, RedispatchWork]], results: dict[int, Any]
) -> list[tuple[int, Report]]:
    """Hand-offs that did not get through go out again later; the last try fails the attempt."""
    writes, reports = [], []
    for index, work in redispatches:
        assert work.item is not None  # noqa: S101 - built with one
        assert work.failure is not None  # noqa: S101 - built with one
        task, failure = work.item.task, work.failure
        tries = task.dispatch_tries + 1
        if tries >= MAX_DISPATCH_TRIES:
            error = f"dispatch failed {tries} times; last: {failure.error}"
            reports.append(
                (index, Report(task, task.attempt, Outcome.FAILED, error=error, source="dispatch"))
            )
            continue
        backoff = backoff_delay(
            tries, work.item.spec.backoff, work.item.spec.backoff_max, advance.rng
        )
        due = advance.now + max(failure.retry_after or 0.0, backoff)
        write = task_moves.requeue(task, advance.now, due, tries, advance.replica)
        writes.append((index, work, write, failure))
    applied = await advance.tx.write_tasks([write for _, _, write, _ in writes])
    for index, work, write, failure in writes:
        results[index] = write.task.id in applied
        if write.task.id not in applied:
            continue
        task = write.task
        advance.outbox.note(
            "task_dispatch_failed", advance.now, task.run_id, task_id=task.id, step=task.step,
            attempt=task.attempt, error=failure.error, tries=task.dispatch_tries,
            retry_at=task.due_at,
        )  # fmt: skip
        advance.outbox.release(task, interrupt=False)
        assert work.item is not None  # noqa: S101 - checked above
        advance.outbox.ready.append(Ready(task, work.item.workflow, work.item.spec))
    return reports


async def _step_deadline(advance: Advance, run_id: str, step: str) -> bool:
    runs = await advance.tx.runs([run_id])
    run = runs.get(run_id)
    if run is None or run.status is not RunState.RUNNING:
        return False
    advance.outbox.note("step_deadline_passed", advance.now, run_id, step=step)
    await advance.deadline(run_id, step)
    return True
