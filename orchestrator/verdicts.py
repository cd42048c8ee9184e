"""Answering a callback: the receipts that make a resent callback a duplicate, and the verdict.

A callback whose webhook-id this task accepted before is answered from its receipt (same
body: a duplicate, 200; another body: a conflict, 409). Any other goes through the task's
state machine, and its verdict says how that went: accepted (200), a duplicate of the
result already recorded (200), a conflicting result (409), or too late (410: the attempt
timed out, was cancelled or replaced). Everything but an acceptance leaves a
`callback_rejected` history entry; an acceptance is recorded in the task's own entry.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Any

from orchestrator.advance import Advance, Applied, Report
from orchestrator.states import TaskState
from orchestrator.store import Receipt
from orchestrator.work import CallbackWork


class Verdict(StrEnum):
    """How a callback or heartbeat is answered: 200, 200, 409 or 410."""

    ACCEPTED = "accepted"
    DUPLICATE = "duplicate"
    CONFLICT = "conflict"
    GONE = "gone"


async def unseen_callbacks(
    advance: Advance, callbacks: list[tuple[int, CallbackWork]], results: dict[int, Any]
) -> list[tuple[int, CallbackWork]]:
    """Callbacks whose webhook-id this task has not accepted before; the others are answered
    from their receipt (same body: a duplicate; another body: a conflict)."""
    seen = await advance.tx.receipts(
        {(w.report.task.id, w.webhook_id) for _, w in callbacks if w.report}
    )
    fresh = []
    for index, work in callbacks:
        assert work.report is not None  # noqa: S101 - built with one
        stored = seen.get((work.report.task.id, work.webhook_id))
        if stored is None:
            fresh.append((index, work))
            continue
        verdict = (
            (Verdict.DUPLICATE, "duplicate received, not applied")
            if stored == work.body_hash
            else (Verdict.CONFLICT, "webhook-id reused with a different body")
        )
        _note_rejected(advance, work, verdict)
        results[index] = verdict
    return fresh


def callback_verdict(
    advance: Advance, work: CallbackWork, applied: Applied, receipts: list[Receipt]
) -> tuple[Verdict, str]:
    """The answer to a callback whose report was decided; accepted ones leave a receipt."""
    assert work.report is not None  # noqa: S101 - built with one
    verdict = _verdict(applied, work.report)
    if verdict[0] in (Verdict.ACCEPTED, Verdict.DUPLICATE):
        receipts.append(Receipt(work.report.task.id, work.webhook_id, work.body_hash, advance.now))
    if verdict[0] is Verdict.ACCEPTED and applied.entry is not None:
        # The task's own entry (source "callback") records the accepted callback.
        applied.entry.data["webhook_id"] = work.webhook_id
    else:
        _note_rejected(advance, work, verdict)
    return verdict


def _note_rejected(advance: Advance, work: CallbackWork, verdict: tuple[Verdict, str]) -> None:
    assert work.report is not None  # noqa: S101 - built with one
    task = work.report.task
    advance.outbox.note(
        "callback_rejected", advance.now, task.run_id, task_id=task.id, step=task.step,
        webhook_id=work.webhook_id, attempt=work.report.attempt, verdict=verdict[0].value,
        reason=verdict[1],
    )  # fmt: skip


def _verdict(applied: Applied, report: Report) -> tuple[Verdict, str]:
    """How to answer a callback that the task state machine did or did not apply."""
    if applied.changed:
        return Verdict.ACCEPTED, "completed the task"
    task = applied.task
    assert task is not None  # noqa: S101 - an ignored report carries the task
    if task.attempt != report.attempt:
        return Verdict.GONE, f"attempt {report.attempt} was replaced by attempt {task.attempt}"
    if task.state in (TaskState.TIMED_OUT, TaskState.CANCELLED):
        return Verdict.GONE, f"task already {task.state.value}"
    same_state = task.state.value == report.outcome.value
    if same_state and task.output == report.output:
        return Verdict.DUPLICATE, "task already completed with the same result"
    if task.state.finished:
        return Verdict.CONFLICT, f"task already {task.state.value} with a different result"
    return Verdict.CONFLICT, applied.reason or f"task is {task.state.value}"
