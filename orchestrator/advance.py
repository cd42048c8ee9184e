"""What one transaction does to a run: apply a report, advance a barrier, start ready steps.

`Advance` works inside one open store transaction. It applies the pure state machines of
states.py and barrier.py, writes their results through the StoreTx, and collects in an
`Outbox` what must happen only after the commit: history to publish, tasks to dispatch,
slots to release, handlers to stop, timers to arm or clear.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from typing import Any

from orchestrator import barrier as barriers
from orchestrator.barrier import Arrival, Barrier, BarrierStatus, Effect
from orchestrator.dispatch import Ready
from orchestrator.ids import new_id
from orchestrator.model import StepSpec, WorkflowSpec
from orchestrator.records import HistoryEntry, Run, Task
from orchestrator.states import (
    Ignore,
    Outcome,
    Retry,
    RetryPolicy,
    RunMove,
    RunState,
    Settle,
    TaskMove,
    TaskState,
    decide_report,
    next_run_state,
    next_task_state,
)
from orchestrator.store import StoreTx

RETRYABLE = frozenset({TaskState.FAILED, TaskState.TIMED_OUT, TaskState.CANCELLED})


class FanOutError(ValueError):
    """A step's for_each source is missing or not a list."""


@dataclass(slots=True)
class Outbox:
    """What one transaction decided to do once it has committed."""

    history: list[HistoryEntry] = field(default_factory=list)
    submit: list[Ready] = field(default_factory=list)
    released: list[str] = field(default_factory=list)
    interrupted: list[str] = field(default_factory=list)
    deadlines: list[Barrier] = field(default_factory=list)
    cleared_deadlines: list[tuple[str, str]] = field(default_factory=list)
    task_deadlines: list[Task] = field(default_factory=list)

    def note(self, type: str, at: float, run_id: str | None = None, **data: Any) -> HistoryEntry:
        task_id = data.pop("task_id", None)
        step = data.pop("step", None)
        entry = HistoryEntry(type, at, run_id, task_id, step, data)
        self.history.append(entry)
        return entry


@dataclass(frozen=True, slots=True)
class Applied:
    """The result of applying a report: whether it changed the task, and if not, why."""

    changed: bool
    reason: str | None = None
    task: Task | None = None
    entry: HistoryEntry | None = None  # the history entry that records the change


class Advance:
    """The run-changing operations of one transaction."""

    def __init__(
        self,
        tx: StoreTx,
        now: float,
        rng: random.Random,
        spec_of: Callable[[Run], WorkflowSpec],
    ) -> None:
        self.tx = tx
        self.now = now
        self.rng = rng
        self.spec_of = spec_of
        self.outbox = Outbox()

    # -- reports ---------------------------------------------------------------------------

    async def report(
        self,
        task: Task,
        attempt: int,
        outcome: Outcome,
        output: Any = None,
        error: str | None = None,
        source: str = "handler",
    ) -> Applied:
        """Apply one report of `outcome` for `attempt` of `task` (the one completion path)."""
        run = await self.tx.get_run(task.run_id)
        assert run is not None  # noqa: S101 - a foreign key guarantees it
        step = self.spec_of(run).steps[task.step]
        policy = RetryPolicy(step.max_attempts, step.backoff, step.backoff_max)
        decision = decide_report(
            task.state, task.attempt, attempt, outcome, policy, self.now, self.rng
        )
        ids = {"task_id": task.id, "step": task.step}
        # A handler still running for a report from elsewhere (a timer, an operator) is
        # stopped; a callback lets the handler that registered it finish on its own.
        interrupt = source not in ("handler", "callback")
        if isinstance(decision, Ignore):
            self.outbox.note(
                "report_ignored", self.now, run.id, **ids, outcome=outcome,
                attempt=attempt, source=source, reason=decision.reason,
            )  # fmt: skip
            return Applied(False, decision.reason, task)
        if isinstance(decision, Retry):
            retried = task.replace(
                state=TaskState.PENDING, attempt=decision.attempt, due_at=decision.not_before,
                started_at=None, error=error, awaiting=False, dispatch_tries=0,
            )  # fmt: skip
            if not await self.tx.transition_task(retried, task.state, task.attempt):
                return Applied(False, "the task changed meanwhile", task)
            failed = self.outbox.note(
                "task_attempt_failed", self.now, run.id, **ids, attempt=task.attempt,
                outcome=decision.failed_as, error=error, source=source,
            )  # fmt: skip
            self.outbox.note(
                "task_retry_scheduled", self.now, run.id, **ids, attempt=decision.attempt,
                not_before=decision.not_before,
            )  # fmt: skip
            self._release(task.id, interrupt)
            self.outbox.submit.append(Ready(retried, run.workflow, step))
            return Applied(True, task=retried, entry=failed)
        assert isinstance(decision, Settle)  # noqa: S101 - Decision is a closed union
        finished = task.replace(
            state=decision.state, finished_at=self.now, due_at=None, output=output, error=error
        )
        if not await self.tx.transition_task(finished, task.state, task.attempt):
            return Applied(False, "the task changed meanwhile", task)
        entry = self.outbox.note(
            f"task_{decision.state.value}", self.now, run.id, **ids, item=task.item_key,
            attempt=task.attempt, source=source, error=error, duration=_duration(finished),
        )  # fmt: skip
        self._release(task.id, interrupt)
        arrival = Arrival.SUCCEEDED if decision.state is TaskState.SUCCEEDED else Arrival.FAILED
        await self.arrive(run, task.step, arrival, counts_into=entry.data)
        return Applied(True, task=finished, entry=entry)

    def _release(self, task_id: str, interrupt: bool) -> None:
        self.outbox.released.append(task_id)
        if interrupt:
            self.outbox.interrupted.append(task_id)

    # -- barriers --------------------------------------------------------------------------

    async def arrive(
        self, run: Run, step: str, arrival: Arrival, counts_into: dict[str, Any] | None = None
    ) -> None:
        """Tell the step's barrier; act on its decision.

        The barrier's new counts go into `counts_into` (the data of the task's own history
        entry) when given, else into a `barrier_advanced` entry: one row per completion,
        not two.
        """
        barrier = await self.tx.get_barrier(run.id, step)
        if barrier is None:
            return
        advanced, effects = barriers.advance(barrier, arrival, self.now)
        if Effect.IGNORED in effects:
            return
        await self.tx.save_barrier(advanced, barrier.status)
        counts = {
            "succeeded": advanced.succeeded, "failed": advanced.failed,
            "expected": advanced.expected, "required": advanced.required,
        }  # fmt: skip
        if counts_into is not None:
            counts_into["barrier"] = counts
        else:
            self.outbox.note("barrier_advanced", self.now, run.id, step=step, **counts)
        await self._apply_barrier_effects(run, advanced, effects)

    async def _apply_barrier_effects(
        self, run: Run, barrier: Barrier, effects: Iterable[Effect]
    ) -> None:
        effects = tuple(effects)
        if Effect.CANCEL_OUTSTANDING in effects:
            outstanding = await self.tx.tasks_of_run(run.id, barrier.step)
            await self.cancel(outstanding, f"barrier of {barrier.step} decided")
        if barrier.deadline_at is not None and barrier.status is not BarrierStatus.WAITING:
            self.outbox.cleared_deadlines.append((run.id, barrier.step))
        if Effect.OPENED in effects:
            self.outbox.note(
                "barrier_opened", self.now, run.id, step=barrier.step, **_barrier_data(barrier)
            )
            await self.start_ready_steps(run)
        if Effect.FAILED in effects:
            self.outbox.note(
                "barrier_failed", self.now, run.id, step=barrier.step, **_barrier_data(barrier)
            )
            await self.finish_run(run, RunMove.FAIL, reason=barrier.reason)

    # -- tasks and runs --------------------------------------------------------------------

    async def cancel(self, tasks: Iterable[Task], reason: str) -> None:
        """Cancel every unfinished task among `tasks` and stop their handlers."""
        for task in tasks:
            if task.state.finished:
                continue
            cancelled = task.replace(
                state=TaskState.CANCELLED, finished_at=self.now, due_at=None, error=reason
            )
            if await self.tx.transition_task(cancelled, task.state, task.attempt):
                self.outbox.note(
                    "task_cancelled", self.now, task.run_id, task_id=task.id, step=task.step,
                    reason=reason,
                )  # fmt: skip
                self._release(task.id, interrupt=True)

    async def finish_run(self, run: Run, move: RunMove, reason: str | None = None) -> bool:
        """Move a running run to its end; a failed or cancelled run cancels its unfinished tasks."""
        current = await self.tx.get_run(run.id)
        if current is None or current.status is not RunState.RUNNING:
            return False
        new = next_run_state(current.status, move)
        if not await self.tx.set_run_status(run.id, current.status, new, self.now):
            return False
        if new is not RunState.SUCCEEDED:
            await self.cancel(await self.tx.tasks_of_run(run.id), f"run {new.value}")
            for barrier in await self.tx.barriers_of_run(run.id):
                if barrier.deadline_at is not None and barrier.status is BarrierStatus.WAITING:
                    self.outbox.cleared_deadlines.append((run.id, barrier.step))
        self.outbox.note(f"run_{new.value}", self.now, run.id, workflow=run.workflow, reason=reason)
        return True

    async def retry_run(self, run: Run, reason: str) -> int:
        """Re-run what did not succeed in a failed or cancelled run; succeeded work is kept.

        Every failed, timed-out or cancelled task of a step whose barrier has not opened goes
        back to pending with attempt + 1 (so a new callback token: the old attempt's late
        callback is answered 410). Failed barriers wait again with their successes counted;
        steps never started start when their needs open, as always.
        """
        running = next_run_state(run.status, RunMove.RETRY)
        if not await self.tx.set_run_status(run.id, run.status, running, None):
            return 0
        spec = self.spec_of(run)
        tasks = await self.tx.tasks_of_run(run.id)
        retried = 0
        for barrier in await self.tx.barriers_of_run(run.id):
            if barrier.status is BarrierStatus.OPEN:
                continue
            step = spec.steps[barrier.step]
            own = [task for task in tasks if task.step == barrier.step]
            reset = replace(
                barrier,
                status=BarrierStatus.WAITING,
                succeeded=sum(task.state is TaskState.SUCCEEDED for task in own),
                failed=0,
                decided_at=None,
                reason=None,
                deadline_at=None if step.deadline is None else self.now + step.deadline,
            )
            await self.tx.save_barrier(reset, barrier.status)
            if reset.deadline_at is not None:
                self.outbox.deadlines.append(reset)
            for task in own:
                if task.state in RETRYABLE:
                    await self._retry_task(run, task, step)
                    retried += 1
        self.outbox.note(
            "run_retried", self.now, run.id, workflow=run.workflow, tasks=retried, reason=reason
        )
        await self.start_ready_steps(run)
        return retried

    async def _retry_task(self, run: Run, task: Task, step: StepSpec) -> None:
        again = task.replace(
            state=next_task_state(task.state, TaskMove.RETRY), attempt=task.attempt + 1,
            due_at=None, started_at=None, finished_at=None, output=None, error=None,
            awaiting=False, dispatch_tries=0, wait_window=None,
        )  # fmt: skip
        if await self.tx.transition_task(again, task.state, task.attempt):
            self.outbox.note(
                "task_retried", self.now, run.id, task_id=task.id, step=task.step,
                attempt=again.attempt, was=task.state.value,
            )  # fmt: skip
            self.outbox.submit.append(Ready(again, run.workflow, step))

    # -- starting steps --------------------------------------------------------------------

    async def start_ready_steps(self, run: Run) -> None:
        """Create barrier and tasks of every step whose needs are all open (cascading)."""
        spec = self.spec_of(run)
        started = {barrier.step: barrier for barrier in await self.tx.barriers_of_run(run.id)}
        while ready := _ready_steps(spec, started):
            for name in ready:
                try:
                    items = await self._items(run, spec.steps[name])
                except FanOutError as error:
                    self.outbox.note(
                        "step_input_invalid", self.now, run.id, step=name, error=str(error)
                    )
                    await self.finish_run(run, RunMove.FAIL, reason=str(error))
                    return
                started[name] = await self._start_step(run, name, spec.steps[name], items)
        if len(started) == len(spec.steps) and all(
            barrier.status is BarrierStatus.OPEN for barrier in started.values()
        ):
            await self.finish_run(run, RunMove.COMPLETE)

    async def _start_step(
        self, run: Run, name: str, step: StepSpec, items: list[tuple[str, Any]]
    ) -> Barrier:
        deadline_at = None if step.deadline is None else self.now + step.deadline
        barrier, effects = barriers.create(
            run.id, name, len(items), step.policy(), self.now, deadline_at
        )
        await self.tx.insert_barrier(barrier)
        tasks = [Task(new_id("tsk", self.now), run.id, name, key, item) for key, item in items]
        await self.tx.insert_tasks(tasks)
        self.outbox.note(
            "step_started", self.now, run.id, step=name, tasks=len(tasks), required=barrier.required
        )
        self.outbox.submit.extend(Ready(task, run.workflow, step) for task in tasks)
        if deadline_at is not None and barrier.status is BarrierStatus.WAITING:
            self.outbox.deadlines.append(barrier)
        if Effect.OPENED in effects:
            self.outbox.note(
                "barrier_opened", self.now, run.id, step=name, **_barrier_data(barrier)
            )
        return barrier

    async def _items(self, run: Run, step: StepSpec) -> list[tuple[str, Any]]:
        """The (item key, item) pairs a step fans out over; one ("", None) without for_each."""
        source = step.for_each_source()
        if source is None:
            return [("", None)]
        head, path = source
        if head == "event":
            event = await self.tx.get_event(run.event_id)
            value: Any = {} if event is None else event.payload
        else:
            upstream = await self.tx.tasks_of_run(run.id, head)
            succeeded = [task for task in upstream if task.state is TaskState.SUCCEEDED]
            if len(upstream) == 1 and upstream[0].item_key == "":
                value = succeeded[0].output if succeeded else None
            else:
                value = [task.output for task in succeeded]
        for key in path:
            if not isinstance(value, dict) or key not in value:
                raise FanOutError(f"for_each = {step.for_each!r}: no key {key!r} in {head}")
            value = value[key]
        if not isinstance(value, list):
            raise FanOutError(
                f"for_each = {step.for_each!r} must be a list, got {type(value).__name__}"
            )
        return [(str(index), item) for index, item in enumerate(value)]


def _ready_steps(spec: WorkflowSpec, started: dict[str, Barrier]) -> list[str]:
    return [
        name
        for name, step in spec.steps.items()
        if name not in started
        and all(
            need in started and started[need].status is BarrierStatus.OPEN for need in step.needs
        )
    ]


def _duration(task: Task) -> float | None:
    if task.started_at is None or task.finished_at is None:
        return None
    return round(task.finished_at - task.started_at, 6)


def _barrier_data(barrier: Barrier) -> dict[str, Any]:
    return {
        "succeeded": barrier.succeeded,
        "failed": barrier.failed,
        "expected": barrier.expected,
        "required": barrier.required,
        "reason": barrier.reason,
    }
