"""The engine: fires runs and completes tasks, each in one transaction, then acts on what committed.

`report()` is the one path that completes a task, whatever reported it (a handler's return,
a timer, a callback or an operator). In one transaction it applies the task's state
machine, advances the step's barrier, appends history, and creates the tasks of every step
whose barrier just opened (advance.py); only after the commit does it start those tasks,
arm timers and publish the history.
"""

from __future__ import annotations

import contextlib
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from concurrent.futures import Executor, ThreadPoolExecutor
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

import httpx
import structlog

from orchestrator.advance import Advance, Applied, Outbox
from orchestrator.barrier import Arrival, Barrier
from orchestrator.bus import HistoryBus
from orchestrator.dispatch import DEADLINE_WINDOW, MAX_RUNNING_HANDLERS, Dispatcher, Ready
from orchestrator.ids import new_id
from orchestrator.invoke import Handoff, Invocation, Redispatch
from orchestrator.model import ServiceSpec, StepSpec, TriggerSpec, WorkflowSpec
from orchestrator.records import Event, HistoryEntry, Run, Task
from orchestrator.states import Outcome, RunMove, RunState, TaskState, backoff_delay
from orchestrator.store import Store, StoreUnavailable
from orchestrator.timers import Clock, TimerHeap

log = structlog.get_logger("orchestrator.engine")

STORE_RETRY_SECONDS = 1.0
MAX_DISPATCH_TRIES = 8
_SPEC_CACHE_SIZE = 1024


class RunStateError(ValueError):
    """An operator action that the run's state does not allow (answered 409)."""


class UnknownTarget(LookupError):
    """A fire for a name that is neither a trigger nor a workflow."""


class Verdict(StrEnum):
    """How a callback or heartbeat is answered: 200, 200, 409 or 410."""

    ACCEPTED = "accepted"
    DUPLICATE = "duplicate"
    CONFLICT = "conflict"
    GONE = "gone"


@dataclass(frozen=True, slots=True)
class Fired:
    event_id: str
    run_id: str | None
    duplicate: bool


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
        services: Mapping[str, ServiceSpec] | None = None,
        public_url: str = "http://127.0.0.1:8000",
        callback_key: bytes | None = None,
        clock: Clock = time.time,
        rng: random.Random | None = None,
        executor: Executor | None = None,
        handler_threads: int = 32,
        max_running_handlers: int = MAX_RUNNING_HANDLERS,
        deadline_window: float = DEADLINE_WINDOW,
        bus: HistoryBus | None = None,
    ) -> None:
        self.store = store
        self.workflows = dict(workflows)
        self.triggers = dict(triggers or {})
        self.services = dict(services or {})
        self.clock = clock
        self.rng = rng or random.Random()  # noqa: S311 - jitter, not cryptography
        self.bus = bus or HistoryBus()
        self.timers = TimerHeap(clock)
        self._executor = executor or ThreadPoolExecutor(
            handler_threads, thread_name_prefix="handler"
        )
        self._specs: dict[str, WorkflowSpec] = {}
        self.dispatcher = Dispatcher(
            store=store,
            timers=self.timers,
            bus=self.bus,
            http=http,
            executor=self._executor,
            on_result=self._on_result,
            on_timeout=self._task_timed_out,
            clock=clock,
            public_url=public_url,
            services=self.services,
            key=callback_key,
            max_running=max_running_handlers,
            deadline_window=deadline_window,
        )

    @contextlib.asynccontextmanager
    async def _advancing(self) -> AsyncIterator[Advance]:
        """One transaction of run changes; what it decided is acted on after the commit.

        Tasks it made ready are dispatched in the same transaction as far as limits allow,
        so opening a barrier and starting the next step cost one commit, not two.
        """
        starting = None
        try:
            async with self.store.transaction() as tx:
                advance = Advance(tx, self.clock(), self.rng, self._spec)
                yield advance
                outbox = advance.outbox
                starting, outbox.submit = await self.dispatcher.start_within(
                    tx, outbox.submit, set(outbox.released), advance.now
                )
                if starting is not None:
                    outbox.history.extend(starting.history)
                entries = await tx.append_history(outbox.history)
        except BaseException:
            if starting is not None:
                self.dispatcher.abandon(starting)
            raise
        self._after_commit(outbox, entries)
        if starting is not None:
            self.dispatcher.launch(starting)

    # -- firing ----------------------------------------------------------------------------

    def resolve(self, name: str) -> tuple[str, str, dict[str, Any]]:
        """(trigger, workflow, default payload) for a trigger name, or a workflow fired by hand."""
        trigger = self.triggers.get(name)
        if trigger is not None:
            return name, trigger.workflow, dict(trigger.payload)
        if name in self.workflows:
            return f"manual:{name}", name, {}
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
        merged = {**defaults, **(payload or {})}
        event = Event(new_id("evt", now), trigger, workflow_name, now, merged, dedup_key)
        async with self._advancing() as advance:
            stored, created = await advance.tx.insert_event(event)
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
            await advance.tx.insert_run(run)
            self._specs[run.id] = workflow
            advance.outbox.note(
                "event_received", now, run.id, trigger=trigger, source=source, event_id=event.id
            )
            advance.outbox.note("run_started", now, run.id, workflow=workflow_name)
            await advance.start_ready_steps(run)
        log.info("run_started", run_id=run.id, workflow=workflow_name, trigger=trigger)
        return Fired(event.id, run.id, duplicate=False)

    # -- completing ------------------------------------------------------------------------

    async def _on_result(self, item: Ready, result: Invocation) -> None:
        task = item.task
        if isinstance(result, Handoff):
            await self._with_store_retry(("handoff", task.id), lambda: self.hand_off(task, result))
        elif isinstance(result, Redispatch):
            await self._with_store_retry(
                ("redispatch", task.id), lambda: self.dispatch_failed(task, result)
            )
        else:
            await self._with_store_retry(
                ("report", task.id),
                lambda: self.report(
                    task.id, task.attempt, result.outcome, result.output, result.error, "handler"
                ),
            )

    async def _with_store_retry(
        self, key: tuple[str, str], action: Callable[[], Awaitable[object]]
    ) -> None:
        """Run `action`; if the store is busy, run it again from the timer heap."""
        try:
            await action()
        except StoreUnavailable as error:
            log.warning("store_busy_deferred", action=key[0], task_id=key[1], reason=str(error))

            async def again() -> None:
                await self._with_store_retry(key, action)

            self.timers.schedule(key, self.clock() + STORE_RETRY_SECONDS, again)

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
        async with self._advancing() as advance:
            task = await advance.tx.get_task(task_id)
            if task is None:
                return False
            applied = await advance.report(task, attempt, outcome, output, error, source)
        return applied.changed

    async def _task_timed_out(self, task: Task) -> None:
        error = "no result within the step's timeout"
        if task.awaiting:
            error = "no callback (or heartbeat) before the deadline"
        await self._with_store_retry(
            ("timeout", task.id),
            lambda: self.report(
                task.id, task.attempt, Outcome.TIMED_OUT, error=error, source="timer"
            ),
        )

    async def _in_flight(self, advance: Advance, task: Task) -> tuple[Task, Run, StepSpec] | None:
        """The task as stored, its run and step, if this very attempt is still dispatched."""
        current = await advance.tx.get_task(task.id)
        if (
            current is None
            or current.state is not TaskState.DISPATCHED
            or current.attempt != task.attempt
        ):
            return None
        run = await advance.tx.get_run(task.run_id)
        assert run is not None  # noqa: S101 - a foreign key guarantees it
        return current, run, self._spec(run).steps[task.step]

    async def hand_off(self, task: Task, handoff: Handoff) -> bool:
        """The handler handed its work to a service: wait for the callback, with a deadline."""
        async with self._advancing() as advance:
            found = await self._in_flight(advance, task)
            if found is None:
                return False  # the callback came first (or the task ended meanwhile)
            current, run, step = found
            window = handoff.heartbeat or step.heartbeat or handoff.timeout or step.timeout
            waiting = current.replace(
                awaiting=True,
                wait_window=window,
                due_at=None if window is None else advance.now + window,
            )
            if not await advance.tx.transition_task(waiting, current.state, current.attempt):
                return False
            advance.outbox.note(
                "task_awaiting_callback", advance.now, run.id, task_id=task.id, step=task.step,
                attempt=task.attempt, deadline=waiting.due_at,
            )  # fmt: skip
            advance.outbox.task_deadlines.append(waiting)
        return True

    async def dispatch_failed(self, task: Task, failure: Redispatch) -> None:
        """The hand-off did not get through: dispatch the same attempt again, later."""
        async with self._advancing() as advance:
            found = await self._in_flight(advance, task)
            if found is None:
                return
            current, run, step = found
            tries = current.dispatch_tries + 1
            if tries >= MAX_DISPATCH_TRIES:
                error = f"dispatch failed {tries} times; last: {failure.error}"
                await advance.report(
                    current, current.attempt, Outcome.FAILED, error=error, source="dispatch"
                )
                return
            backoff = backoff_delay(tries, step.backoff, step.backoff_max, self.rng)
            again = current.replace(
                state=TaskState.PENDING, due_at=advance.now + max(failure.retry_after or 0.0, backoff),
                started_at=None, dispatch_tries=tries,
            )  # fmt: skip
            if not await advance.tx.transition_task(again, current.state, current.attempt):
                return
            advance.outbox.note(
                "task_dispatch_failed", advance.now, run.id, task_id=task.id, step=task.step,
                attempt=task.attempt, error=failure.error, tries=tries, retry_at=again.due_at,
            )  # fmt: skip
            advance.outbox.released.append(task.id)
            advance.outbox.submit.append(
                Ready(again, run.workflow, self._spec(run).steps[task.step])
            )

    async def callback(
        self,
        task_id: str,
        attempt: int,
        webhook_id: str,
        body_hash: str,
        outcome: Outcome,
        output: Any,
        error: str | None,
    ) -> tuple[Verdict, str]:
        """Apply a verified callback; the verdict says how to answer the sender, and why."""
        async with self._advancing() as advance:
            task = await advance.tx.get_task(task_id)
            assert task is not None  # noqa: S101 - a callback token names an existing task
            ids = {"task_id": task.id, "step": task.step, "webhook_id": webhook_id}
            seen = await advance.tx.get_receipt(task_id, webhook_id)
            recorded = None
            if seen is not None:
                verdict, reason = (
                    (Verdict.DUPLICATE, "duplicate received, not applied")
                    if seen == body_hash
                    else (Verdict.CONFLICT, "webhook-id reused with a different body")
                )
            else:
                applied = await advance.report(task, attempt, outcome, output, error, "callback")
                verdict, reason = _verdict(applied, attempt, outcome, output)
                if verdict in (Verdict.ACCEPTED, Verdict.DUPLICATE):
                    await advance.tx.insert_receipt(task_id, webhook_id, body_hash, advance.now)
                recorded = applied.entry if verdict is Verdict.ACCEPTED else None
            if recorded is not None:
                # The task's own entry (source "callback") records the accepted callback:
                # one history row per completion.
                recorded.data["webhook_id"] = webhook_id
            else:  # a duplicate, a conflict or a late callback: changes nothing
                advance.outbox.note(
                    "callback_rejected", advance.now, task.run_id, **ids, attempt=attempt,
                    verdict=verdict.value, reason=reason,
                )  # fmt: skip
        return verdict, reason

    async def heartbeat(self, task_id: str, attempt: int) -> tuple[Verdict, str, float | None]:
        """Extend the deadline of a task awaiting its callback."""
        async with self._advancing() as advance:
            task = await advance.tx.get_task(task_id)
            assert task is not None  # noqa: S101 - a heartbeat token names an existing task
            if task.state is not TaskState.DISPATCHED or task.attempt != attempt:
                reason = f"task is {task.state.value} on attempt {task.attempt}"
                advance.outbox.note(
                    "heartbeat_rejected", advance.now, task.run_id, task_id=task.id,
                    step=task.step, attempt=attempt, reason=reason,
                )  # fmt: skip
                return Verdict.GONE, reason, None
            window = task.wait_window
            extended = task.replace(due_at=None if window is None else advance.now + window)
            if window is not None and await advance.tx.transition_task(
                extended, task.state, attempt
            ):
                advance.outbox.task_deadlines.append(extended)
            advance.outbox.note(
                "task_heartbeat", advance.now, task.run_id, task_id=task.id, step=task.step,
                attempt=attempt, deadline=extended.due_at,
            )  # fmt: skip
        reason = "deadline extended" if window is not None else "no deadline to extend"
        return Verdict.ACCEPTED, reason, extended.due_at

    async def callback_key(self) -> bytes:
        """The key callback tokens and per-task secrets derive from (loaded once)."""
        return await self.dispatcher.key()

    async def record(self, entry: HistoryEntry) -> None:
        """Append one history entry on its own (rejections that change nothing else)."""
        async with self._advancing() as advance:
            advance.outbox.history.append(entry)

    async def _step_deadline(self, run_id: str, step: str) -> None:
        async with self._advancing() as advance:
            run = await advance.tx.get_run(run_id)
            if run is None or run.status is not RunState.RUNNING:
                return
            advance.outbox.note("step_deadline_passed", advance.now, run_id, step=step)
            await advance.arrive(run, step, Arrival.DEADLINE)

    # -- after the commit ------------------------------------------------------------------

    def _after_commit(self, outbox: Outbox, entries: list[HistoryEntry]) -> None:
        self.bus.publish(entries)
        for run_id, step in outbox.cleared_deadlines:
            self.timers.cancel(step_deadline_key(run_id, step))
        for barrier in outbox.deadlines:
            self._arm_step_deadline(barrier)
        self.dispatcher.interrupt(outbox.interrupted)
        self.dispatcher.release(outbox.released)
        for task in outbox.task_deadlines:
            self.dispatcher.arm_deadline(task)
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

    async def workflow_of(self, run_id: str) -> WorkflowSpec:
        """The workflow a run was fired with (cached; read from the store when not)."""
        spec = self._specs.get(run_id)
        if spec is None:
            run = await self.store.get_run(run_id)
            if run is None:
                raise LookupError(f"no run {run_id!r}")
            spec = self._spec(run)
        return spec

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
        async with self._advancing() as advance:
            run = await advance.tx.get_run(run_id)
            if run is None:
                raise LookupError(f"no run {run_id!r}")
            changed = await advance.finish_run(run, RunMove.CANCEL, reason=reason)
        return changed

    async def retry_run(self, run_id: str) -> int:
        """Re-run the failed, timed-out and cancelled tasks of a finished run; how many."""
        async with self._advancing() as advance:
            run = await advance.tx.get_run(run_id)
            if run is None:
                raise LookupError(f"no run {run_id!r}")
            if run.status not in (RunState.FAILED, RunState.CANCELLED):
                raise RunStateError(
                    f"only a failed or cancelled run can be retried; it is {run.status.value}"
                )
            return await advance.retry_run(run, reason="retried by operator")

    async def replay(self, event_id: str, force: bool = False) -> Fired:
        """Start a new run from a stored event; refused while a run of it is active."""
        event = await self.store.get_event(event_id)
        if event is None:
            raise LookupError(f"no event {event_id!r}")
        active = [
            run.id for run in await self.store.runs_of_event(event_id) if not run.status.finished
        ]
        if active and not force:
            raise RunStateError(
                f"run {active[0]} of this event is still running (pass force to replay anyway)"
            )
        if event.workflow not in self.workflows:
            raise LookupError(f"workflow {event.workflow!r} of this event is no longer configured")
        now = self.clock()
        workflow = self.workflows[event.workflow]
        async with self._advancing() as advance:
            run = Run(
                id=new_id("run", now), workflow=event.workflow, event_id=event.id,
                status=RunState.RUNNING, created_at=now, spec=workflow.model_dump(mode="json"),
            )  # fmt: skip
            await advance.tx.insert_run(run)
            self._specs[run.id] = workflow
            advance.outbox.note("event_replayed", now, run.id, event_id=event.id, forced=force)
            advance.outbox.note("run_started", now, run.id, workflow=event.workflow)
            await advance.start_ready_steps(run)
        return Fired(event.id, run.id, duplicate=False)

    async def recover(self) -> int:
        """Pick up after a restart: requeue interrupted hand-offs, re-arm every timer.

        A task awaiting its callback keeps waiting (its service has the URL); a task whose
        handler was still running is dispatched again, same attempt and idempotency key.
        """
        await self.dispatcher.key()  # loaded outside any transaction: dispatch needs it inside
        unfinished = await self.store.unfinished()
        held: list[Ready] = []
        async with self._advancing() as advance:
            runs: dict[str, Run] = {}
            for task in unfinished.tasks:
                run = runs.get(task.run_id) or await advance.tx.get_run(task.run_id)
                assert run is not None  # noqa: S101 - a foreign key guarantees it
                runs[run.id] = run
                step = self._spec(run).steps[task.step]
                if task.state is TaskState.DISPATCHED and task.awaiting:
                    held.append(Ready(task, run.workflow, step))
                    continue
                pending = task
                if task.state is TaskState.DISPATCHED:
                    pending = task.replace(state=TaskState.PENDING, due_at=None, started_at=None)
                    if not await advance.tx.transition_task(pending, task.state, task.attempt):
                        continue
                    advance.outbox.note(
                        "task_requeued", advance.now, run.id, task_id=task.id, step=task.step,
                        attempt=task.attempt, reason="the orchestrator restarted while it ran",
                    )  # fmt: skip
                advance.outbox.submit.append(Ready(pending, run.workflow, step))
            advance.outbox.deadlines.extend(
                barrier for barrier in unfinished.barriers if barrier.deadline_at is not None
            )
            resumed = len(advance.outbox.submit)
            waiting = len(advance.outbox.deadlines)
            # Tasks awaiting callbacks take their slots before anything pending is admitted.
            for item in held:
                self.dispatcher.hold(item)
        if resumed or held or waiting:
            log.info(
                "recovered",
                dispatching=resumed,
                awaiting_callback=len(held),
                step_deadlines=waiting,
            )
        return resumed + len(held)

    async def close(self) -> None:
        await self.dispatcher.close()
        await self.timers.close()
        self._executor.shutdown(wait=False, cancel_futures=True)


def _verdict(applied: Applied, attempt: int, outcome: Outcome, output: Any) -> tuple[Verdict, str]:
    """How to answer a callback that the task state machine did or did not apply."""
    if applied.changed:
        return Verdict.ACCEPTED, "completed the task"
    task = applied.task
    assert task is not None  # noqa: S101 - an ignored report carries the task
    if task.attempt != attempt:
        return Verdict.GONE, f"attempt {attempt} was replaced by attempt {task.attempt}"
    if task.state in (TaskState.TIMED_OUT, TaskState.CANCELLED):
        return Verdict.GONE, f"task already {task.state.value}"
    same_state = task.state.value == outcome.value
    if same_state and task.output == output:
        return Verdict.DUPLICATE, "task already completed with the same result"
    if task.state.finished:
        return Verdict.CONFLICT, f"task already {task.state.value} with a different result"
    return Verdict.CONFLICT, applied.reason or f"task is {task.state.value}"
