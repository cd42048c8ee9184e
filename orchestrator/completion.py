"""Completing tasks: reports, callbacks, hand-offs, timeouts, in batches, one policy for errors.

Everything that may complete or change a dispatched task comes here as a piece of work: a
handler's result (its output, a hand-off to a service, a hand-off that did not get
through), a verified callback, a timer that fired, a rejection to record. Work that
arrives together is done in one transaction (batching.py), so N callbacks or N handlers
returning at once cost one commit and a constant number of statements. A sender is
answered only after the commit that holds its work.

The error policy, in one place:

* the store is busy (StoreUnavailable): work from HTTP senders is answered 503 at once
  (they retry); the engine's own work is tried again with backoff on the timer heap;
* anything else is a bug in processing that piece of work: the batch is split and each
  piece tried alone; a piece that still fails fails its task, with the error in the
  task's history (counting toward its retries); a callback's sender gets the error.
"""

from __future__ import annotations

import asyncio
import itertools
from typing import Any

import structlog

from orchestrator import task_moves
from orchestrator.advance import Advance, Applied, Report
from orchestrator.applier import Applier
from orchestrator.batching import Batcher
from orchestrator.invoke import Handoff, Redispatch
from orchestrator.outbox import Ready
from orchestrator.recording import apply
from orchestrator.records import HistoryEntry, Task
from orchestrator.states import Outcome, TaskState
from orchestrator.store import StoreUnavailable
from orchestrator.timers import TimerHeap
from orchestrator.verdicts import Verdict
from orchestrator.work import (
    CallbackWork,
    DeadlineWork,
    HandoffWork,
    RecordWork,
    RedispatchWork,
    ReportWork,
    Work,
    one_per_task,
    task_of,
)

log = structlog.get_logger("orchestrator.completion")

BUSY_RETRY_FIRST = 0.05
BUSY_RETRY_MAX = 5.0


class Completion:
    def __init__(self, applier: Applier, timers: TimerHeap) -> None:
        self._applier = applier
        self._timers = timers
        self._batcher: Batcher[Work] = Batcher(self._process)
        self._seq = itertools.count()

    # -- what senders and the engine submit ------------------------------------------------

    async def report(self, report: Report) -> Applied:
        """Apply a report; answers once it is committed."""
        result: Applied = await self._submit(ReportWork(report=report))
        return result

    async def callback(
        self, report: Report, webhook_id: str, body_hash: str
    ) -> tuple[Verdict, str]:
        """Apply a verified callback; the verdict says how to answer the sender, and why."""
        verdict: tuple[Verdict, str] = await self._submit(
            CallbackWork(report=report, webhook_id=webhook_id, body_hash=body_hash)
        )
        return verdict

    async def record(self, *entries: HistoryEntry) -> None:
        """Append history entries that change nothing else (rejections)."""
        await self._submit(RecordWork(entries=list(entries)))

    def handed_off(self, item: Ready, handoff: Handoff) -> None:
        self._batcher.submit(HandoffWork(item=item, handoff=handoff))

    def redispatch(self, item: Ready, failure: Redispatch) -> None:
        self._batcher.submit(RedispatchWork(item=item, failure=failure))

    def reported(self, report: Report) -> None:
        """The engine's own report (a handler's result, a timer): nobody waits for it."""
        self._batcher.submit(ReportWork(report=report))

    def step_deadline(self, run_id: str, step: str) -> None:
        self._batcher.submit(DeadlineWork(run_id=run_id, step=step))

    def timed_out(self, task: Task) -> None:
        """A dispatched task's deadline passed (the timer heap calls this)."""
        error = "no result within the step's timeout"
        if task.awaiting:
            error = "no callback (or heartbeat) before the deadline"
        self.reported(Report(task, task.attempt, Outcome.TIMED_OUT, error=error, source="timer"))

    async def heartbeat(self, task_id: str, attempt: int) -> tuple[Verdict, str, float | None]:
        """Extend the deadline of a task awaiting its callback (rare: its own transaction)."""
        return await self._applier.transact(lambda advance: _heartbeat(advance, task_id, attempt))

    async def close(self) -> None:
        await self._batcher.close()

    async def _submit(self, work: Work) -> Any:
        work.done = asyncio.get_running_loop().create_future()
        self._batcher.submit(work)
        return await work.done

    # -- processing ------------------------------------------------------------------------

    async def _process(self, batch: list[Work]) -> None:
        """One transaction for the batch, at most one piece of work per task in it."""
        batch, later = one_per_task(batch)
        for work in later:
            self._batcher.submit(work)
        try:
            results = await self._applier.transact(lambda advance: apply(advance, batch))
        except StoreUnavailable as error:
            for work in batch:
                self._busy(work, error)
            return
        except Exception as error:
            if len(batch) == 1:
                self._failed(batch[0], error)
                return
            for work in batch:  # find the piece that fails: each alone
                await self._process([work])
            return
        for work, result in zip(batch, results, strict=True):
            _answer(work, result)

    def _busy(self, work: Work, error: StoreUnavailable) -> None:
        """The store is busy: senders hear 503; the engine's own work waits and tries again."""
        if work.done is not None:
            if not work.done.done():
                work.done.set_exception(error)
            return
        delay = min(BUSY_RETRY_MAX, BUSY_RETRY_FIRST * 2**work.busy_tries)
        work.busy_tries += 1
        log.warning("store_busy_deferred", kind=type(work).__name__, task_id=work.task_id,
                    retry_in=delay, reason=str(error))  # fmt: skip

        async def again() -> None:
            self._batcher.submit(work)

        self._timers.schedule(("store-busy", next(self._seq)), self._applier.clock() + delay, again)

    def _failed(self, work: Work, error: Exception) -> None:
        """Processing this piece of work raised: fail its task, with the error, or tell the sender."""
        log.exception("work_failed", kind=type(work).__name__, task_id=work.task_id, exc_info=error)
        if work.done is not None:
            if not work.done.done():
                work.done.set_exception(error)
            return
        task = task_of(work)
        if task is None or (isinstance(work, ReportWork) and work.last_resort):
            log.error("work_lost", kind=type(work).__name__, task_id=work.task_id)
            return
        message = f"internal error while recording its result: {type(error).__name__}: {error}"
        failure = Report(task, task.attempt, Outcome.FAILED, error=message, source="engine")
        self._batcher.submit(ReportWork(report=failure, last_resort=True))


async def _heartbeat(
    advance: Advance, task_id: str, attempt: int
) -> tuple[Verdict, str, float | None]:
    task = (await advance.tx.tasks([task_id])).get(task_id)
    if task is None:
        return Verdict.GONE, "no such task", None
    if task.state is not TaskState.DISPATCHED or task.attempt != attempt:
        reason = f"task is {task.state.value} on attempt {task.attempt}"
        advance.outbox.note(
            "heartbeat_rejected", advance.now, task.run_id, task_id=task.id, step=task.step,
            attempt=attempt, reason=reason,
        )  # fmt: skip
        return Verdict.GONE, reason, None
    write = task_moves.extend(task, advance.now)
    if task.wait_window is not None and await advance.tx.write_tasks([write]):
        advance.outbox.task_deadlines.append(write.task)
    advance.outbox.note(
        "task_heartbeat", advance.now, task.run_id, task_id=task.id, step=task.step,
        attempt=attempt, deadline=write.task.due_at,
    )  # fmt: skip
    reason = "deadline extended" if task.wait_window is not None else "no deadline to extend"
    return Verdict.ACCEPTED, reason, write.task.due_at


def _answer(work: Work, result: Any) -> None:
    if work.done is not None and not work.done.done():
        work.done.set_result(result)
