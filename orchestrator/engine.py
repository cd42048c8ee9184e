"""The engine: fires runs and completes tasks, each in one transaction, then acts on what committed.

`report()` is the one path that completes a task, whatever reported it (a handler's return,
a timer, later a callback or an operator). In one transaction it applies the task's state
machine, advances the step's barrier, appends history, and creates the tasks of every step
whose barrier just opened; only after the commit does it start those tasks, arm timers and
publish the history.
"""

from __future__ import annotations

import random
import time
from collections.abc import Iterable, Mapping
from concurrent.futures import Executor, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import httpx
import structlog

from orchestrator import barrier as barriers
from orchestrator.barrier import Arrival, Barrier, BarrierStatus, Effect
from orchestrator.bus import HistoryBus
from orchestrator.dispatch import Dispatcher, Ready
from orchestrator.ids import new_id
from orchestrator.invoke import HandlerResult
from orchestrator.model import StepSpec, TriggerSpec, WorkflowSpec
from orchestrator.records import Event, HistoryEntry, Run, Task
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
from orchestrator.store import Store, StoreTx, StoreUnavailable
from orchestrator.timers import Clock, TimerHeap

log = structlog.get_logger("orchestrator.engine")

REPORT_RETRY_SECONDS = 1.0
_SPEC_CACHE_SIZE = 1024


class UnknownTarget(LookupError):
    """A fire for a name that is neither a trigger nor a workflow."""


class FanOutError(ValueError):
    """A step's for_each source is missing or not a list."""


@dataclass(frozen=True, slots=True)
class Fired:
    event_id: str
    run_id: str | None
    duplicate: bool


@dataclass(slots=True)
class _Outbox:
    """What one transaction decided to do once it has committed."""

    history: list[HistoryEntry] = field(default_factory=list)
    submit: list[Ready] = field(default_factory=list)
    released: list[str] = field(default_factory=list)
    deadlines: list[Barrier] = field(default_factory=list)
    cleared_deadlines: list[tuple[str, str]] = field(default_factory=list)

    def note(self, type: str, at: float, run_id: str | None = None, **kw: Any) -> None:
        task_id = kw.pop("task_id", None)
        step = kw.pop("step", None)
        self.history.append(HistoryEntry(type, at, run_id, task_id, step, kw))


def step_deadline_key(run_id: str, step: str) -> tuple[str, str, str]:
    return ("step", run_id, step)


class Engine:
    def __init__(
        self,
        store: Store,
        workflows: Mapping[str, WorkflowSpec],
        triggers: Mapping[str, TriggerSpec] | None = None,
        *,
        http: httpx.AsyncClient,
        clock: Clock = time.time,
        rng: random.Random | None = None,
        executor: Executor | None = None,
        bus: HistoryBus | None = None,
    ) -> None:
        self.store = store
        self.workflows = dict(workflows)
        self.triggers = dict(triggers or {})
        self.clock = clock
        self.rng = rng or random.Random()  # noqa: S311 - jitter, not cryptography
        self.bus = bus or HistoryBus()
        self.timers = TimerHeap(clock)
        self._executor = executor or ThreadPoolExecutor(32, thread_name_prefix="handler")
        self._specs: dict[str, WorkflowSpec] = {}
        self.dispatcher = Dispatcher(
            store=store,
            timers=self.timers,
            bus=self.bus,
            http=http,
            executor=self._executor,
            report=self.report_result,
            on_timeout=self._task_timed_out,
            clock=clock,
        )

    # -- firing ----------------------------------------------------------------------------

    def resolve(self, name: str) -> tuple[str, str, dict[str, Any]]:
        """(trigger, workflow, default payload) for a trigger name, or a workflow fired by hand."""
        trigger = self.triggers.get(name)
        if trigger is not None:
            return name, trigger.workflow, dict(trigger.payload)
        if name in self.workflows:
            return "manual", name, {}
        known = ", ".join(sorted({*self.triggers, *self.workflows})) or "none configured"
        raise UnknownTarget(f"no trigger or workflow named {name!r} (known: {known})")

    async def fire(
        self,
        name: str,
        payload: Mapping[str, Any] | None = None,
        *,
        dedup_key: str | None = None,
        source: str = "manual",
    ) -> Fired:
        """Persist an event and start its run; a repeated dedup key returns the first event."""
        trigger, workflow_name, defaults = self.resolve(name)
        workflow = self.workflows[workflow_name]
        now = self.clock()
        event = Event(
            new_id("evt", now),
            trigger,
            workflow_name,
            now,
            {**defaults, **(payload or {})},
            dedup_key,
        )
        outbox = _Outbox()
        async with self.store.transaction() as tx:
            stored, created = await tx.insert_event(event)
            if not created:
                return Fired(stored.id, None, duplicate=True)
            run = Run(
                id=new_id("run", now),
                workflow=workflow_name,
                event_id=event.id,
                status=RunState.RUNNING,
                created_at=now,
                spec=workflow.model_dump(mode="json"),
            )
            await tx.insert_run(run)
            outbox.note(
                "event_received", now, run.id, trigger=trigger, source=source, event_id=event.id
            )
            outbox.note("run_started", now, run.id, workflow=workflow_name)
            self._specs[run.id] = workflow
            await self._start_ready_steps(tx, run, workflow, now, outbox)
            entries = await tx.append_history(outbox.history)
        log.info("run_started", run_id=run.id, workflow=workflow_name, trigger=trigger)
        self._after_commit(outbox, entries)
        return Fired(event.id, run.id, duplicate=False)

    # -- completing ------------------------------------------------------------------------

    async def report_result(
        self, task_id: str, attempt: int, result: HandlerResult, source: str
    ) -> None:
        """Report a handler's result; a busy store defers the report on the timer heap."""
        try:
            await self.report(task_id, attempt, result.outcome, result.output, result.error, source)
        except StoreUnavailable as error:
            log.warning("report_deferred", task_id=task_id, reason=str(error))

            async def again() -> None:
                await self.report_result(task_id, attempt, result, source)

            self.timers.schedule(
                ("report", task_id, attempt), self.clock() + REPORT_RETRY_SECONDS, again
            )

    async def report(
        self,
        task_id: str,
        attempt: int,
        outcome: Outcome,
        output: Any = None,
        error: str | None = None,
        source: str = "handler",
    ) -> bool:
        """The one completion path; True if the report changed the task, False if ignored."""
        now = self.clock()
        outbox = _Outbox()
        async with self.store.transaction() as tx:
            task = await tx.get_task(task_id)
            if task is None:
                return False
            run = await tx.get_run(task.run_id)
            assert run is not None  # noqa: S101 - a foreign key guarantees it
            spec = self._spec(run)
            applied = await self._apply_report(
                tx, run, spec, task, attempt, outcome, output, error, source, now, outbox
            )
            entries = await tx.append_history(outbox.history)
        self._after_commit(outbox, entries)
        return applied

    async def _apply_report(
        self,
        tx: StoreTx,
        run: Run,
        spec: WorkflowSpec,
        task: Task,
        attempt: int,
        outcome: Outcome,
        output: Any,
        error: str | None,
        source: str,
        now: float,
        outbox: _Outbox,
    ) -> bool:
        step = spec.steps[task.step]
        policy = RetryPolicy(step.max_attempts, step.backoff, step.backoff_max)
        decision = decide_report(task.state, task.attempt, attempt, outcome, policy, now, self.rng)
        ids = {"task_id": task.id, "step": task.step}
        if isinstance(decision, Ignore):
            outbox.note(
                "report_ignored",
                now,
                run.id,
                **ids,
                outcome=outcome,
                attempt=attempt,
                source=source,
                reason=decision.reason,
            )
            return False
        if isinstance(decision, Retry):
            retried = task.replace(
                state=TaskState.PENDING,
                attempt=decision.attempt,
                due_at=decision.not_before,
                started_at=None,
                error=error,
            )
            if not await tx.transition_task(retried, task.state, task.attempt):
                return False
            outbox.note(
                "task_attempt_failed",
                now,
                run.id,
                **ids,
                attempt=task.attempt,
                outcome=decision.failed_as,
                error=error,
                source=source,
            )
            outbox.note(
                "task_retry_scheduled",
                now,
                run.id,
                **ids,
                attempt=decision.attempt,
                not_before=decision.not_before,
            )
            outbox.released.append(task.id)
            outbox.submit.append(Ready(retried, run.workflow, step))
            return True
        assert isinstance(decision, Settle)  # noqa: S101 - Decision is a closed union
        finished = task.replace(
            state=decision.state, finished_at=now, due_at=None, output=output, error=error
        )
        if not await tx.transition_task(finished, task.state, task.attempt):
            return False
        outbox.note(
            f"task_{decision.state.value}",
            now,
            run.id,
            **ids,
            item=task.item_key,
            attempt=task.attempt,
            source=source,
            error=error,
            duration=_duration(finished),
        )
        outbox.released.append(task.id)
        arrival = Arrival.SUCCEEDED if decision.state is TaskState.SUCCEEDED else Arrival.FAILED
        await self._arrive(tx, run, spec, task.step, arrival, now, outbox)
        return True

    async def _task_timed_out(self, task: Task) -> None:
        await self.report_result(
            task.id,
            task.attempt,
            HandlerResult(Outcome.TIMED_OUT, error="no result within the step's timeout"),
            "timer",
        )

    async def _step_deadline(self, run_id: str, step: str) -> None:
        now = self.clock()
        outbox = _Outbox()
        async with self.store.transaction() as tx:
            run = await tx.get_run(run_id)
            if run is None or run.status is not RunState.RUNNING:
                return
            outbox.note("step_deadline_passed", now, run_id, step=step)
            await self._arrive(tx, run, self._spec(run), step, Arrival.DEADLINE, now, outbox)
            entries = await tx.append_history(outbox.history)
        self._after_commit(outbox, entries)

    async def _arrive(
        self,
        tx: StoreTx,
        run: Run,
        spec: WorkflowSpec,
        step: str,
        arrival: Arrival,
        now: float,
        outbox: _Outbox,
    ) -> None:
        barrier = await tx.get_barrier(run.id, step)
        if barrier is None:
            return
        advanced, effects = barriers.advance(barrier, arrival, now)
        if Effect.IGNORED in effects:
            return
        await tx.save_barrier(advanced, barrier.status)
        outbox.note(
            "barrier_advanced",
            now,
            run.id,
            step=step,
            succeeded=advanced.succeeded,
            failed=advanced.failed,
            expected=advanced.expected,
            required=advanced.required,
        )
        await self._apply_barrier_effects(tx, run, spec, advanced, effects, now, outbox)

    async def _apply_barrier_effects(
        self,
        tx: StoreTx,
        run: Run,
        spec: WorkflowSpec,
        barrier: Barrier,
        effects: Iterable[Effect],
        now: float,
        outbox: _Outbox,
    ) -> None:
        effects = tuple(effects)
        if Effect.CANCEL_OUTSTANDING in effects:
            outstanding = await tx.tasks_of_run(run.id, barrier.step)
            await self._cancel(tx, outstanding, now, f"barrier of {barrier.step} decided", outbox)
        if barrier.deadline_at is not None and barrier.status is not BarrierStatus.WAITING:
            outbox.cleared_deadlines.append((run.id, barrier.step))
        if Effect.OPENED in effects:
            outbox.note("barrier_opened", now, run.id, step=barrier.step, **_barrier_data(barrier))
            await self._start_ready_steps(tx, run, spec, now, outbox)
        if Effect.FAILED in effects:
            outbox.note("barrier_failed", now, run.id, step=barrier.step, **_barrier_data(barrier))
            await self._finish_run(tx, run, RunMove.FAIL, now, outbox, reason=barrier.reason)

    async def _cancel(
        self, tx: StoreTx, tasks: Iterable[Task], now: float, reason: str, outbox: _Outbox
    ) -> None:
        for task in tasks:
            if task.state.finished:
                continue
            cancelled = task.replace(
                state=TaskState.CANCELLED, finished_at=now, due_at=None, error=reason
            )
            if await tx.transition_task(cancelled, task.state, task.attempt):
                outbox.note(
                    "task_cancelled",
                    now,
                    task.run_id,
                    task_id=task.id,
                    step=task.step,
                    reason=reason,
                )
                outbox.released.append(task.id)

    async def _finish_run(
        self,
        tx: StoreTx,
        run: Run,
        move: RunMove,
        now: float,
        outbox: _Outbox,
        reason: str | None = None,
    ) -> bool:
        current = await tx.get_run(run.id)
        if current is None or current.status is not RunState.RUNNING:
            return False
        new = next_run_state(current.status, move)
        if not await tx.set_run_status(run.id, current.status, new, now):
            return False
        if new is not RunState.SUCCEEDED:
            tasks = await tx.tasks_of_run(run.id)
            await self._cancel(tx, tasks, now, f"run {new.value}", outbox)
            for pending in await tx.barriers_of_run(run.id):
                if pending.deadline_at is not None and pending.status is BarrierStatus.WAITING:
                    outbox.cleared_deadlines.append((run.id, pending.step))
        outbox.note(f"run_{new.value}", now, run.id, workflow=run.workflow, reason=reason)
        return True

    # -- starting steps --------------------------------------------------------------------

    async def _start_ready_steps(
        self, tx: StoreTx, run: Run, spec: WorkflowSpec, now: float, outbox: _Outbox
    ) -> None:
        """Create barrier and tasks of every step whose needs are all open (cascading)."""
        started = {barrier.step: barrier for barrier in await tx.barriers_of_run(run.id)}
        while True:
            ready = [
                name
                for name, step in spec.steps.items()
                if name not in started
                and all(
                    need in started and started[need].status is BarrierStatus.OPEN
                    for need in step.needs
                )
            ]
            if not ready:
                break
            for name in ready:
                try:
                    items = await self._items(tx, run, spec.steps[name])
                except FanOutError as error:
                    outbox.note("step_input_invalid", now, run.id, step=name, error=str(error))
                    await self._finish_run(tx, run, RunMove.FAIL, now, outbox, reason=str(error))
                    return
                started[name] = await self._start_step(
                    tx, run, name, spec.steps[name], items, now, outbox
                )
        if len(started) == len(spec.steps) and all(
            barrier.status is BarrierStatus.OPEN for barrier in started.values()
        ):
            await self._finish_run(tx, run, RunMove.COMPLETE, now, outbox)

    async def _start_step(
        self,
        tx: StoreTx,
        run: Run,
        name: str,
        step: StepSpec,
        items: list[tuple[str, Any]],
        now: float,
        outbox: _Outbox,
    ) -> Barrier:
        deadline_at = None if step.deadline is None else now + step.deadline
        barrier, effects = barriers.create(
            run.id, name, len(items), step.policy(), now, deadline_at
        )
        await tx.insert_barrier(barrier)
        tasks = [Task(new_id("tsk", now), run.id, name, key, item) for key, item in items]
        await tx.insert_tasks(tasks)
        outbox.note(
            "step_started", now, run.id, step=name, tasks=len(tasks), required=barrier.required
        )
        outbox.submit.extend(Ready(task, run.workflow, step) for task in tasks)
        if deadline_at is not None and barrier.status is BarrierStatus.WAITING:
            outbox.deadlines.append(barrier)
        if Effect.OPENED in effects:
            outbox.note("barrier_opened", now, run.id, step=name, **_barrier_data(barrier))
        return barrier

    async def _items(self, tx: StoreTx, run: Run, step: StepSpec) -> list[tuple[str, Any]]:
        """The (item key, item) pairs a step fans out over; one ("", None) without for_each."""
        source = step.for_each_source()
        if source is None:
            return [("", None)]
        head, path = source
        if head == "event":
            event = await tx.get_event(run.event_id)
            value: Any = {} if event is None else event.payload
        else:
            upstream = await tx.tasks_of_run(run.id, head)
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

    # -- after the commit ------------------------------------------------------------------

    def _after_commit(self, outbox: _Outbox, entries: list[HistoryEntry]) -> None:
        self.bus.publish(entries)
        for run_id, step in outbox.cleared_deadlines:
            self.timers.cancel(step_deadline_key(run_id, step))
        for barrier in outbox.deadlines:
            self._arm_step_deadline(barrier)
        self.dispatcher.release(outbox.released)
        self.dispatcher.submit(outbox.submit)
        for entry in entries:
            if entry.type in ("run_succeeded", "run_failed", "run_cancelled"):
                log.info(entry.type, run_id=entry.run_id, reason=entry.data.get("reason"))

    def _arm_step_deadline(self, barrier: Barrier) -> None:
        assert barrier.deadline_at is not None  # noqa: S101 - only barriers with deadlines come here
        run_id, step = barrier.run_id, barrier.step

        async def fire() -> None:
            await self._step_deadline(run_id, step)

        self.timers.schedule(step_deadline_key(run_id, step), barrier.deadline_at, fire)

    def _spec(self, run: Run) -> WorkflowSpec:
        """The workflow as it was when the run was fired, parsed once per run."""
        spec = self._specs.get(run.id)
        if spec is None:
            if len(self._specs) >= _SPEC_CACHE_SIZE:
                self._specs.pop(next(iter(self._specs)))
            spec = self._specs[run.id] = WorkflowSpec.model_validate(run.spec)
        return spec

    # -- operator actions and restart ------------------------------------------------------

    async def cancel_run(self, run_id: str, reason: str = "cancelled by operator") -> bool:
        """Cancel a running run and its unfinished tasks; False if it is not running."""
        now = self.clock()
        outbox = _Outbox()
        async with self.store.transaction() as tx:
            run = await tx.get_run(run_id)
            if run is None:
                raise LookupError(f"no run {run_id!r}")
            changed = await self._finish_run(tx, run, RunMove.CANCEL, now, outbox, reason=reason)
            entries = await tx.append_history(outbox.history)
        self._after_commit(outbox, entries)
        return changed

    async def recover(self) -> int:
        """Pick up after a restart: requeue interrupted attempts, re-arm timers, resume dispatch."""
        unfinished = await self.store.unfinished()
        now = self.clock()
        outbox = _Outbox()
        async with self.store.transaction() as tx:
            runs: dict[str, Run] = {}
            for task in unfinished.tasks:
                run = runs.get(task.run_id) or await tx.get_run(task.run_id)
                assert run is not None  # noqa: S101 - a foreign key guarantees it
                runs[run.id] = run
                pending = task
                if task.state is TaskState.DISPATCHED:
                    pending = task.replace(state=TaskState.PENDING, due_at=None, started_at=None)
                    if not await tx.transition_task(pending, task.state, task.attempt):
                        continue
                    outbox.note(
                        "task_requeued",
                        now,
                        run.id,
                        task_id=task.id,
                        step=task.step,
                        attempt=task.attempt,
                        reason="the orchestrator restarted while it ran",
                    )
                outbox.submit.append(Ready(pending, run.workflow, self._spec(run).steps[task.step]))
            outbox.deadlines.extend(b for b in unfinished.barriers if b.deadline_at is not None)
            entries = await tx.append_history(outbox.history)
        self._after_commit(outbox, entries)
        if outbox.submit or outbox.deadlines:
            log.info("recovered", tasks=len(outbox.submit), step_deadlines=len(outbox.deadlines))
        return len(outbox.submit)

    async def close(self) -> None:
        await self.dispatcher.close()
        await self.timers.close()
        self._executor.shutdown(wait=False, cancel_futures=True)


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
