"""Launching handlers: the context each one gets, running it, and handing back its result.

A handler runs as an asyncio task (a plain function in a worker thread); when it ends,
its result goes to the completion path and its slot frees for the next ready task.
Nothing here touches the store: contexts are built inside the dispatch transaction from
what it read, and results are recorded by completion.py.

Each invocation continues its run's event's trace under a `dispatch` span of its own, and
the first start of a step that waited on others is also a `join` span, from the last
upstream task's end to this start (tracing.py: recorded where OpenTelemetry is set up).
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import Executor
from dataclasses import replace
from typing import Any

import httpx
import structlog

from orchestrator import tracing
from orchestrator.capabilities import Capabilities
from orchestrator.invoke import (
    Context,
    Handler,
    HandlerImportError,
    HandlerResult,
    Handoff,
    Invocation,
    Spent,
    Upstream,
    invoke,
    load_handler,
)
from orchestrator.model import ServiceSpec
from orchestrator.outbox import Launch, Ready
from orchestrator.records import Event, Task
from orchestrator.specs import SpecCache
from orchestrator.states import Outcome, TaskState
from orchestrator.store import StoreTx
from orchestrator.timers import Clock

log = structlog.get_logger("orchestrator.launcher")

PAYLOADS = 64
JOINS = 4096  # (run, step) joins recently started here: one `join` span each

ResultFn = Callable[[Ready, Invocation, Spent], None]


def collect_upstream(tasks: Iterable[Task]) -> Upstream:
    """How a join sees one upstream step's tasks."""
    outputs: dict[str, Any] = {}
    failed: dict[str, str] = {}
    missing: list[str] = []
    finished_at: float | None = None
    for task in tasks:
        if task.state is TaskState.SUCCEEDED:
            outputs[task.item_key] = task.output
        elif task.state in (TaskState.FAILED, TaskState.TIMED_OUT):
            failed[task.item_key] = task.error or task.state.value
        else:
            missing.append(task.item_key)
        if task.finished_at is not None:
            finished_at = max(finished_at or task.finished_at, task.finished_at)
    return Upstream(outputs, failed, missing, finished_at)


class Contexts:
    """Builds handler contexts inside the dispatch transaction, reading each run's event
    once (a fan-out's list can be large) and each upstream step once per batch."""

    def __init__(
        self,
        *,
        http: httpx.AsyncClient,
        services: Mapping[str, ServiceSpec],
        capabilities: Capabilities,
        specs: SpecCache,
    ) -> None:
        self._http = http
        self._services = services
        self._capabilities = capabilities
        self._specs = specs
        self._events: OrderedDict[str, Event | None] = OrderedDict()

    async def build(self, tx: StoreTx, started: list[Ready]) -> list[Context]:
        infos = await self._specs.load(tx, {item.task.run_id for item in started})
        needs = {(item.task.run_id, need) for item in started for need in item.spec.needs}
        upstream: dict[tuple[str, str], list[Task]] = {key: [] for key in needs}
        for task in await tx.tasks_of_steps(needs):
            upstream[(task.run_id, task.step)].append(task)
        joined = {key: collect_upstream(tasks) for key, tasks in upstream.items()}
        contexts = []
        for item in started:
            task = item.task
            event = await self._event(tx, infos[task.run_id].event_id)
            contexts.append(self._context(item, event, joined))
        return contexts

    def _context(
        self, item: Ready, event: Event | None, joined: dict[tuple[str, str], Upstream]
    ) -> Context:
        task, spec = item.task, item.spec
        return Context(
            run_id=task.run_id,
            task_id=task.id,
            step=task.step,
            item_key=task.item_key,
            attempt=task.attempt,
            event={} if event is None else event.payload,
            upstream={need: joined[(task.run_id, need)] for need in spec.needs},
            http=self._http,
            log=structlog.get_logger("handler").bind(
                run_id=task.run_id, task_id=task.id, step=task.step
            ),
            callback_url=self._capabilities.url(task),
            callback_secret=self._capabilities.secret(task),
            service=None if spec.service is None else self._services.get(spec.service),
            # The event's trace until the launcher starts the task's own span under it.
            trace=None if event is None else tracing.restored(event.traceparent, event.tracestate),
        )

    async def _event(self, tx: StoreTx, event_id: str) -> Event | None:
        if event_id in self._events:
            self._events.move_to_end(event_id)
            return self._events[event_id]
        event = self._events[event_id] = await tx.get_event(event_id)
        if len(self._events) > PAYLOADS:
            self._events.popitem(last=False)
        return event


class Launcher:
    def __init__(
        self, *, executor: Executor, clock: Clock, on_result: ResultFn, on_ended: Callable[[], None]
    ) -> None:
        self._executor = executor
        self._clock = clock
        self._on_result = on_result
        self._on_ended = on_ended
        self._handlers: dict[str, Handler] = {}
        self._running: dict[str, asyncio.Task[None]] = {}
        self._background: set[asyncio.Task[None]] = set()
        self._joins: OrderedDict[tuple[str, str], None] = OrderedDict()

    @property
    def running(self) -> int:
        return len(self._running)

    def handler(self, path: str) -> Handler:
        """The loaded handler for `path`, imported once."""
        handler = self._handlers.get(path)
        if handler is None:
            handler = self._handlers[path] = load_handler(path)
        return handler

    def launch(self, launches: Iterable[Launch]) -> None:
        """Start these handlers, all at once."""
        for launch in launches:
            running = asyncio.ensure_future(self._run(launch.ready, launch.context))
            self._running[launch.ready.task.id] = running
            # Also tracked as background work, so close() waits for a result under way.
            self._background.add(running)
            running.add_done_callback(self._background.discard)

    def interrupt(self, task_ids: Iterable[str]) -> None:
        """Stop the handlers of these tasks if they are still running."""
        for task_id in task_ids:
            running = self._running.pop(task_id, None)
            if running is not None:
                running.cancel()

    async def _run(self, item: Ready, ctx: Context) -> None:
        structlog.contextvars.bind_contextvars(run_id=ctx.run_id, task_id=ctx.task_id)
        task = item.task
        tracer = tracing.current()
        self._joined(tracer, item, ctx)
        with tracer.span(
            "dispatch", ctx.trace, run_id=ctx.run_id, task_id=ctx.task_id, step=ctx.step,
            item=ctx.item_key, attempt=ctx.attempt, handler=item.spec.handler,
        ) as span:  # fmt: skip
            ctx = replace(ctx, trace=tracing.own_context(span, ctx.trace))
            tracing.bind(ctx.trace)
            result, spent = await self._invoke(item, ctx)
            span.annotate(result=_result_name(result))
        # Leave the running set before reporting, so that nothing the report causes can
        # cancel this very coroutine half-way through.
        self._running.pop(task.id, None)
        self._on_ended()
        self._on_result(item, result, spent)

    async def _invoke(self, item: Ready, ctx: Context) -> tuple[Invocation, Spent]:
        try:
            handler = self.handler(item.spec.handler)
        except HandlerImportError as error:
            return HandlerResult(Outcome.FAILED, error=str(error)), Spent()
        return await invoke(
            handler, ctx, item.task.item, item.spec.for_each is not None, self._executor,
            self._clock,
        )  # fmt: skip

    def _joined(self, tracer: tracing.Tracer, item: Ready, ctx: Context) -> None:
        """The first start of a step that needed others, once per run and step here: a
        `join` span from the last upstream task's end to now."""
        task = item.task
        ends = [up.finished_at for up in ctx.upstream.values() if up.finished_at is not None]
        key = (task.run_id, task.step)
        if not ends or task.attempt != 1 or task.dispatch_tries or key in self._joins:
            return
        self._joins[key] = None
        if len(self._joins) > JOINS:
            self._joins.popitem(last=False)
        with tracer.span(
            "join", ctx.trace, start=max(ends), run_id=task.run_id, step=task.step,
            needs=",".join(item.spec.needs),
        ):  # fmt: skip
            pass

    async def close(self) -> None:
        """Stop handlers still running; their tasks stay dispatched and a restart re-dispatches them."""
        for task in self._running.values():
            task.cancel()
        pending = [*self._running.values(), *self._background]
        self._running.clear()
        if pending:
            await asyncio.gather(*pending, return_exceptions=True)


def _result_name(result: Invocation) -> str:
    """What a handler's invocation came to, as a span attribute."""
    if isinstance(result, HandlerResult):
        return result.outcome.value
    return "handed_off" if isinstance(result, Handoff) else "redispatch"
