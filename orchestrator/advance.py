"""The run-changing work of one transaction, on batches: reports, barriers, steps, runs.

Each operation takes a batch (N reports, N arrivals, N tasks to cancel) and costs a
constant number of store statements whatever N is. Decisions come from the pure state
machines (`states.decide_report`, `barrier.advance`); task writes are built by
`task_moves` from the transition table; what must happen after the commit goes into the
outbox. Nothing here performs I/O other than through the transaction.
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from typing import Any

from orchestrator import barrier as barriers
from orchestrator import task_moves
from orchestrator.barrier import Arrival, Barrier, BarrierStatus, Effect
from orchestrator.fanout import FanOutError, fanout_items, ready_steps
from orchestrator.ids import new_id
from orchestrator.model import StepSpec, WorkflowSpec
from orchestrator.outbox import Outbox, Ready, StepKey
from orchestrator.records import Event, HistoryEntry, Run, Task
from orchestrator.slices import sliced_each, sliced_map
from orchestrator.specs import RunInfo, SpecCache
from orchestrator.states import (
    Ignore,
    Outcome,
    Retry,
    RetryPolicy,
    RunMove,
    RunState,
    Settle,
    TaskState,
    decide_report,
    next_run_state,
)
from orchestrator.store import BarrierWrite, StoreConflict, StoreTx
from orchestrator.task_moves import TaskWrite
from orchestrator.tracecontext import TraceContext
from orchestrator.tracing import received_data

LOCAL = "local"  # the replica id of an engine that shares its store with no other
DEADLINE_MOVED = "the deadline moved"


@dataclass(frozen=True, slots=True)
class Report:
    """What someone says about one attempt of a task, as they last saw the task.

    `task` may be stale (read before the transaction): the conditional write decides, and
    a report whose write does not apply is decided again on the stored row.
    """

    task: Task
    attempt: int
    outcome: Outcome
    output: Any = None
    error: str | None = None
    source: str = "handler"
    began: float | None = None  # when a local plain-function handler really started
    ended: float | None = None  # when a local handler returned
    trace: TraceContext | None = None  # the trace context a callback came with


@dataclass(frozen=True, slots=True)
class Applied:
    """Whether a report changed its task; if not, why, and the task as stored."""

    changed: bool
    reason: str | None = None
    task: Task | None = None
    entry: HistoryEntry | None = None  # the history entry that records the change


@dataclass(frozen=True, slots=True)
class _Arrival:
    key: StepKey
    arrival: Arrival
    counts_into: dict[str, Any] | None = None


@dataclass(frozen=True, slots=True)
class _Plan:
    index: int
    report: Report
    decision: Settle | Retry
    write: TaskWrite


class Advance:
    """The run-changing operations of one transaction; effects go to `outbox`.

    `replica` is the process doing the work: the tasks it makes ready (new, retried, backed
    off) are offered to its own dispatcher, so it becomes their owner.
    """

    def __init__(
        self,
        tx: StoreTx,
        now: float,
        rng: random.Random,
        specs: SpecCache,
        replica: str = LOCAL,
    ) -> None:
        self.tx = tx
        self.now = now
        self.rng = rng
        self.specs = specs
        self.replica = replica
        self.outbox = Outbox()

    async def infos(self, run_ids: Iterable[str]) -> dict[str, RunInfo]:
        return await self.specs.load(self.tx, set(run_ids))

    # -- reports ---------------------------------------------------------------------------

    async def report(self, reports: Sequence[Report]) -> list[Applied]:
        """Apply a batch of reports, at most one per task (the one completion path).

        The batch's tasks and their barriers are read (locked) first and each report is
        decided on the stored row, in order, as if the reports came one after another: a
        report whose step's barrier an earlier report of the batch decided finds its task
        cancelled by that decision, as it would have one transaction later.
        """
        tasks = await self.tx.tasks({report.task.id for report in reports})
        infos = await self.infos(task.run_id for task in tasks.values())
        read = await self.tx.barriers({(t.run_id, t.step) for t in tasks.values()})
        barrier_now = dict(read)
        results: list[Applied] = []
        plans: list[_Plan] = []
        for index, report in enumerate(reports):
            task = tasks.get(report.task.id)
            if task is None:
                results.append(Applied(False, "no such task", report.task))
                continue
            decision = self._decide(task, report, infos[task.run_id].step(task.step))
            if isinstance(decision, Ignore):
                results.append(self._ignored(task, report, decision.reason))
                if decision.reason == DEADLINE_MOVED and task.due_at is not None:
                    self.outbox.task_deadlines.append(task)  # keep timing it, at the new one
                continue
            key = (task.run_id, task.step)
            barrier = barrier_now.get(key)
            if barrier is not None and barrier.status is not BarrierStatus.WAITING:
                # Decided by an earlier report of this batch, which cancels this task.
                reason = f"the barrier of {task.step} decided first"
                ignored = self._ignored(task, report, reason)
                results.append(replace(ignored, task=task.replace(state=TaskState.CANCELLED)))
                continue
            if barrier is not None and isinstance(decision, Settle):
                barrier_now[key] = barriers.advance(barrier, _arrival_of(decision), self.now)[0]
            plans.append(_Plan(index, report, decision, self._write(task, report, decision)))
            results.append(Applied(False))  # replaced below once the write applied
        applied = await self.tx.write_tasks([plan.write for plan in plans])
        if len(applied) != len(plans):
            raise StoreConflict("a task changed under this transaction")
        arrivals: list[_Arrival] = []
        for plan in plans:
            info = infos[plan.write.task.run_id]
            results[plan.index] = self._record(info, plan, arrivals)
        await self.arrive(arrivals, read)
        return results

    def _decide(self, task: Task, report: Report, step: StepSpec) -> Settle | Retry | Ignore:
        moved = task.due_at is None or task.due_at > self.now
        if report.source == "timer" and task.state is TaskState.DISPATCHED and moved:
            # A heartbeat on another replica moved the deadline this timer was set for.
            return Ignore(DEADLINE_MOVED)
        policy = RetryPolicy(step.max_attempts, step.backoff, step.backoff_max)
        return decide_report(
            task.state, task.attempt, report.attempt, report.outcome, policy, self.now, self.rng
        )

    def _write(self, task: Task, report: Report, decision: Settle | Retry) -> TaskWrite:
        if isinstance(decision, Retry):
            return task_moves.back_off(
                task, decision.attempt, decision.not_before, self.now, report.error,
                owner=self.replica,
            )  # fmt: skip
        return task_moves.settle(
            task,
            report.outcome,
            self.now,
            report.output,
            report.error,
            report.began,
            report.ended,
        )

    def _ignored(self, task: Task, report: Report, reason: str) -> Applied:
        self.outbox.note(
            "report_ignored", self.now, task.run_id, task_id=task.id, step=task.step,
            outcome=report.outcome, attempt=report.attempt, source=report.source, reason=reason,
        )  # fmt: skip
        return Applied(False, reason, task)

    def _record(self, info: RunInfo, plan: _Plan, arrivals: list[_Arrival]) -> Applied:
        """History and follow-ups of a report whose write applied."""
        task, report = plan.write.task, plan.report
        ids = {"task_id": task.id, "step": task.step}
        # A handler still running for a report from elsewhere (a timer, an operator) is
        # stopped; a callback lets the handler that registered it finish on its own.
        self.outbox.release(task, interrupt=report.source not in ("handler", "callback"))
        traced = received_data(report.trace)  # a callback's trace, in its completion entry
        if isinstance(plan.decision, Retry):
            failed = self.outbox.note(
                "task_attempt_failed", self.now, task.run_id, **ids, attempt=report.attempt,
                outcome=plan.decision.failed_as, error=report.error, source=report.source,
                **traced,
            )  # fmt: skip
            self.outbox.note(
                "task_retry_scheduled", self.now, task.run_id, **ids, attempt=task.attempt,
                not_before=task.due_at,
            )  # fmt: skip
            self.outbox.ready.append(Ready(task, info.workflow, info.step(task.step)))
            return Applied(True, task=task, entry=failed)
        entry = self.outbox.note(
            f"task_{task.state.value}", self.now, task.run_id, **ids, item=task.item_key,
            attempt=task.attempt, source=report.source, error=report.error,
            duration=_rounded(task.ran), waited=_rounded(task.waited), **traced,
        )  # fmt: skip
        assert isinstance(plan.decision, Settle)  # noqa: S101 - Retry returned above
        arrivals.append(_Arrival((task.run_id, task.step), _arrival_of(plan.decision), entry.data))
        return Applied(True, task=task, entry=entry)

    # -- barriers --------------------------------------------------------------------------

    async def deadline(self, run_id: str, step: str) -> None:
        """The step's deadline passed: its barrier decides with what has arrived."""
        await self.arrive([_Arrival((run_id, step), Arrival.DEADLINE)])

    async def arrive(
        self, arrivals: Sequence[_Arrival], read: dict[StepKey, Barrier] | None = None
    ) -> None:
        """Tell the barriers (`read` already, or read now); act on their decisions.

        The barrier's new counts go into `counts_into` (the data of the task's own history
        entry) when given, else into a `barrier_advanced` entry: one row per completion.
        """
        if not arrivals:
            return
        if read is None:
            read = await self.tx.barriers({arrival.key for arrival in arrivals})
        current = dict(read)
        effects: dict[StepKey, list[Effect]] = {}
        for arrival in arrivals:
            barrier = current.get(arrival.key)
            if barrier is None:
                continue
            advanced, said = barriers.advance(barrier, arrival.arrival, self.now)
            if Effect.IGNORED in said:
                continue
            current[arrival.key] = advanced
            effects.setdefault(arrival.key, []).extend(said)
            self._counts(advanced, arrival.counts_into)
        writes = [BarrierWrite(current[key], read[key]) for key in effects]
        if len(await self.tx.write_barriers(writes)) != len(writes):
            raise StoreConflict("a barrier changed under this transaction")
        opened: list[str] = []
        for key, decided in effects.items():
            opened += await self._act_on(current[key], decided)
        await self.start_ready_steps(opened)

    def _counts(self, barrier: Barrier, into: dict[str, Any] | None) -> None:
        counts = {
            "succeeded": barrier.succeeded, "failed": barrier.failed,
            "expected": barrier.expected, "required": barrier.required,
        }  # fmt: skip
        if into is not None:
            into["barrier"] = counts
        else:
            self.outbox.note(
                "barrier_advanced", self.now, barrier.run_id, step=barrier.step, **counts
            )

    async def _act_on(self, barrier: Barrier, effects: list[Effect]) -> list[str]:
        """Carry out a barrier's decision; the run ids whose next steps may now start."""
        run_id = barrier.run_id
        if Effect.CANCEL_OUTSTANDING in effects:
            outstanding = await self.tx.unfinished_tasks(run_id, barrier.step)
            await self.cancel(outstanding, f"barrier of {barrier.step} decided")
        if barrier.deadline_at is not None and barrier.status is not BarrierStatus.WAITING:
            self.outbox.cleared_step_deadlines.append((run_id, barrier.step))
        data = _barrier_data(barrier)
        if Effect.OPENED in effects:
            self.outbox.note("barrier_opened", self.now, run_id, step=barrier.step, **data)
            return [run_id]
        if Effect.FAILED in effects:
            self.outbox.note("barrier_failed", self.now, run_id, step=barrier.step, **data)
            await self.finish_run(run_id, RunMove.FAIL, reason=barrier.reason)
        return []

    # -- tasks and runs --------------------------------------------------------------------

    async def cancel(self, tasks: Iterable[Task], reason: str) -> int:
        """Cancel every unfinished task among `tasks` and stop their handlers; how many."""
        unfinished = [task for task in tasks if not task.state.finished]
        writes = await sliced_map(lambda t: task_moves.cancel(t, self.now, reason), unfinished)
        applied = await self.tx.write_tasks(writes)

        def cancelled(write: TaskWrite) -> None:
            task = write.task
            if task.id in applied:
                self.outbox.note(
                    "task_cancelled", self.now, task.run_id, task_id=task.id, step=task.step,
                    reason=reason,
                )  # fmt: skip
                self.outbox.release(task, interrupt=True)

        await sliced_each(cancelled, writes)
        return len(applied)

    async def finish_run(self, run_id: str, move: RunMove, reason: str | None = None) -> bool:
        """Move a running run to its end; a failed or cancelled run cancels its unfinished tasks."""
        new = next_run_state(RunState.RUNNING, move)
        if not await self.tx.set_run_status(run_id, RunState.RUNNING, new, self.now):
            return False
        info = (await self.infos([run_id]))[run_id]
        if new is not RunState.SUCCEEDED:
            await self.cancel(await self.tx.unfinished_tasks(run_id), f"run {new.value}")
            self.outbox.cleared_step_deadlines.extend((run_id, step) for step in info.spec.steps)
        self.outbox.note(
            f"run_{new.value}", self.now, run_id, workflow=info.workflow, reason=reason
        )
        return True

    async def create_run(self, run_id: str, event: Event, workflow: str, spec: WorkflowSpec) -> Run:
        """A new run of `workflow` for `event`, its ready steps started."""
        run = Run(
            id=run_id, workflow=workflow, event_id=event.id,
            status=RunState.RUNNING, created_at=self.now, spec=spec.model_dump(mode="json"),
        )  # fmt: skip
        await self.tx.insert_run(run)
        self.specs.info(run, spec)
        self.outbox.note("run_started", self.now, run.id, workflow=workflow)
        await self.start_ready_steps([run.id])
        return run

    # -- starting steps --------------------------------------------------------------------

    async def start_ready_steps(self, run_ids: Iterable[str]) -> None:
        """Create the barriers and tasks of every step whose needs are all open, in every
        one of these runs (cascading through steps that open at once); one insert each."""
        wanted = list(dict.fromkeys(run_ids))
        if not wanted:
            return
        # Locked: two replicas that each opened one of a join's barriers decide in turn,
        # so the second sees the first's barrier open and starts the step (exactly once).
        runs = await self.tx.lock_runs(wanted)
        running = [run for run in runs.values() if run.status is RunState.RUNNING]
        started: dict[str, dict[str, Barrier]] = {run.id: {} for run in running}
        for barrier in await self.tx.barriers_of_runs([run.id for run in running]):
            started[barrier.run_id][barrier.step] = barrier
        new_barriers: list[Barrier] = []
        new_tasks: list[Task] = []
        finished: list[tuple[str, RunMove, str | None]] = []
        for run in running:
            info = self.specs.info(run)
            try:
                made = await self._start_steps(info, started[run.id])
            except FanOutError as error:
                finished.append((run.id, RunMove.FAIL, str(error)))
                continue
            for barrier, tasks in made:
                new_barriers.append(barrier)
                new_tasks += tasks
            if len(started[run.id]) == len(info.spec.steps) and all(
                barrier.status is BarrierStatus.OPEN for barrier in started[run.id].values()
            ):
                finished.append((run.id, RunMove.COMPLETE, None))
        await self.tx.insert_barriers(new_barriers)
        await self.tx.insert_tasks(new_tasks)
        for run_id, move, reason in finished:
            await self.finish_run(run_id, move, reason=reason)

    async def _start_steps(
        self, info: RunInfo, started: dict[str, Barrier]
    ) -> list[tuple[Barrier, list[Task]]]:
        made = []
        while ready := ready_steps(info.spec, started):
            for name in ready:
                step = info.step(name)
                try:
                    items = await fanout_items(self.tx, info, step)
                except FanOutError as error:
                    self.outbox.note(
                        "step_input_invalid", self.now, info.run_id, step=name, error=str(error)
                    )
                    raise
                barrier, tasks = self._step(info, name, step, items)
                started[name] = barrier
                made.append((barrier, tasks))
        return made

    def _step(
        self, info: RunInfo, name: str, step: StepSpec, items: list[tuple[str, Any]]
    ) -> tuple[Barrier, list[Task]]:
        deadline_at = None if step.deadline is None else self.now + step.deadline
        barrier, effects = barriers.create(
            info.run_id, name, len(items), step.policy(), self.now, deadline_at
        )
        tasks = [
            Task(
                new_id("tsk", self.now),
                info.run_id,
                name,
                key,
                item,
                queued_at=self.now,
                owner=self.replica,
            )
            for key, item in items
        ]
        self.outbox.note(
            "step_started", self.now, info.run_id, step=name, tasks=len(tasks),
            required=barrier.required,
        )  # fmt: skip
        self.outbox.ready.extend(Ready(task, info.workflow, step) for task in tasks)
        if deadline_at is not None and barrier.status is BarrierStatus.WAITING:
            self.outbox.step_deadlines.append(barrier)
        if Effect.OPENED in effects:
            self.outbox.note(
                "barrier_opened", self.now, info.run_id, step=name, **_barrier_data(barrier)
            )
        return barrier, tasks


def _arrival_of(decision: Settle) -> Arrival:
    return Arrival.SUCCEEDED if decision.state is TaskState.SUCCEEDED else Arrival.FAILED


def _rounded(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds, 6)


def _barrier_data(barrier: Barrier) -> dict[str, Any]:
    return {
        "succeeded": barrier.succeeded,
        "failed": barrier.failed,
        "expected": barrier.expected,
        "required": barrier.required,
        "reason": barrier.reason,
    }
