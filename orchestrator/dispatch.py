"""The dispatcher: starts every admitted ready task at once, one transaction per batch.

Ready tasks pass admission (concurrency, exclusive, rate); the admitted batch is marked
dispatched in one transaction and its handlers start concurrently. A pending task with a
not-before time (retry backoff) waits on the timer heap, never in a sleeping loop.

Two bounds keep memory flat however large a fan-out is: at most `max_running` handler
coroutines at once (a remote handler returns as soon as it has handed off, so this bounds
memory, not the work in flight at services), and only deadlines within `deadline_window`
sit on the timer heap; later ones stay in the store, and one heap entry loads them when
the earliest comes within the window.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Collection, Iterable, Mapping
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import Any

import httpx
import structlog

from orchestrator.bus import HistoryBus
from orchestrator.invoke import (
    Context,
    Handler,
    HandlerImportError,
    HandlerResult,
    Invocation,
    Upstream,
    invoke,
    load_handler,
)
from orchestrator.limits import Admission, LaneLimits
from orchestrator.model import ServiceSpec, StepSpec
from orchestrator.records import HistoryEntry, Task
from orchestrator.states import Outcome, TaskState
from orchestrator.store import Store, StoreTx
from orchestrator.timers import Clock, TimerHeap
from orchestrator.tokens import callback_token, task_secret, token_hash

log = structlog.get_logger("orchestrator.dispatch")

ResultFn = Callable[["Ready", Invocation], Awaitable[None]]

STORE_RETRY_SECONDS = 1.0
MAX_RUNNING_HANDLERS = 1024
DEADLINE_WINDOW = 300.0
WINDOW_KEY = ("deadlines", "window")
_PAYLOAD_CACHE_SIZE = 64


@dataclass(frozen=True, slots=True)
class Ready:
    """A pending task with what the dispatcher needs to start it."""

    task: Task
    workflow: str
    spec: StepSpec

    @property
    def lane(self) -> tuple[str, str]:
        return (self.workflow, self.task.step)

    @property
    def limits(self) -> LaneLimits:
        return LaneLimits(self.spec.concurrency, self.spec.exclusive, self.spec.rate)


@dataclass(frozen=True, slots=True)
class Starting:
    """A batch marked dispatched in a transaction, to launch once it commits."""

    batch: list[Ready]
    started: list[Ready]
    contexts: list[Context]
    history: list[HistoryEntry]


def timer_key(task_id: str) -> tuple[str, str]:
    """The timer-heap key of a task: its not-before time while pending, its deadline while dispatched."""
    return ("task", task_id)


def collect_upstream(tasks: Iterable[Task]) -> Upstream:
    """How a join sees one upstream step's tasks."""
    upstream = Upstream()
    for task in tasks:
        if task.state is TaskState.SUCCEEDED:
            upstream.outputs[task.item_key] = task.output
        elif task.state in (TaskState.FAILED, TaskState.TIMED_OUT):
            upstream.failed[task.item_key] = task.error or task.state.value
        else:
            upstream.missing.append(task.item_key)
    return upstream


class Dispatcher:
    def __init__(
        self,
        *,
        store: Store,
        timers: TimerHeap,
        bus: HistoryBus,
        http: httpx.AsyncClient,
        executor: Executor,
        on_result: ResultFn,
        on_timeout: Callable[[Task], Awaitable[None]],
        clock: Clock,
        public_url: str,
        services: Mapping[str, ServiceSpec],
        key: bytes | None = None,
        max_running: int = MAX_RUNNING_HANDLERS,
        deadline_window: float = DEADLINE_WINDOW,
    ) -> None:
        self._store = store
        self._timers = timers
        self._bus = bus
        self._http = http
        self._executor = executor
        self._on_result = on_result
        self._on_timeout = on_timeout
        self._clock = clock
        self._public_url = public_url.rstrip("/")
        self._services = services
        self._key = key
        self._admission: Admission[Ready] = Admission()
        self._handlers: dict[str, Handler] = {}
        self._running: dict[str, asyncio.Task[None]] = {}
        self._background: set[asyncio.Task[None]] = set()
        self._max_running = max_running
        self._starting = 0
        self._pump_soon: asyncio.Handle | None = None
        self._payloads: dict[str, Mapping[str, Any]] = {}
        self._window = deadline_window
        self._window_due: float | None = None
        self._touched_while_loading: set[str] | None = None

    @property
    def running(self) -> int:
        return len(self._running)

    def handler(self, path: str) -> Handler:
        """The loaded handler for `path`, imported once."""
        handler = self._handlers.get(path)
        if handler is None:
            handler = self._handlers[path] = load_handler(path)
        return handler

    def submit(self, ready: Iterable[Ready]) -> None:
        """Start these pending tasks as soon as their not-before time and limits allow."""
        self._enqueue(ready, self._clock())
        self._pump()

    def _enqueue(self, ready: Iterable[Ready], now: float) -> None:
        for item in ready:
            due = item.task.due_at
            if due is not None and due > now:
                self._timers.schedule(timer_key(item.task.id), due, self._offer_later(item))
            else:
                self._admission.offer(item.lane, item.limits, item.task.id, item)

    def _offer_later(self, item: Ready) -> Callable[[], Awaitable[None]]:
        async def offer() -> None:
            self._admission.offer(item.lane, item.limits, item.task.id, item)
            self._pump()

        return offer

    def release(self, task_ids: Iterable[str]) -> None:
        """These tasks are no longer in flight: free their slots and clear their timers."""
        freed = False
        for task_id in task_ids:
            self._timers.cancel(timer_key(task_id))
            if self._touched_while_loading is not None:
                self._touched_while_loading.add(task_id)
            freed = self._admission.release(task_id) or freed
        if freed:
            self._pump()

    def interrupt(self, task_ids: Iterable[str]) -> None:
        """Stop the handlers of these tasks if they are still running."""
        for task_id in task_ids:
            running = self._running.pop(task_id, None)
            if running is not None:
                running.cancel()

    def arm_deadline(self, task: Task) -> None:
        """Time out this dispatched task at its `due_at` (or never, without one)."""
        due = task.due_at
        if self._touched_while_loading is not None:
            self._touched_while_loading.add(task.id)  # newer than what the load read
        if due is None or due > self._clock() + self._window:
            self._timers.cancel(timer_key(task.id))
            if due is not None:
                self._load_window_at(due - self._window)
        else:
            self._timers.schedule(timer_key(task.id), due, self._timeout(task))

    def _load_window_at(self, at: float) -> None:
        if self._window_due is None or at < self._window_due:
            self._window_due = at
            self._timers.schedule(WINDOW_KEY, at, self._load_window)

    async def _load_window(self) -> None:
        """Put the deadlines now within the window on the heap; wake again for the next."""
        self._window_due = None
        horizon = self._clock() + self._window
        touched = self._touched_while_loading = set()
        try:
            tasks = await self._store.deadlines_before(horizon)
            later = await self._store.next_deadline(horizon)
        except Exception:  # a busy store: try again soon, the deadlines are safe in it
            log.warning("deadline_window_deferred", exc_info=True)
            self._load_window_at(self._clock() + STORE_RETRY_SECONDS)
            return
        finally:
            self._touched_while_loading = None
        for task in tasks:
            # A task that ended, or got a new deadline (a heartbeat), while the store was
            # read keeps what that gave it, not what was read.
            if task.id not in touched and task.due_at is not None:
                self._timers.schedule(timer_key(task.id), task.due_at, self._timeout(task))
        if later is not None:
            self._load_window_at(later - self._window)

    def hold(self, item: Ready) -> None:
        """Count a task that is already in flight (awaiting its callback) against its limits.

        Used at start-up: the task keeps its slot until its callback or deadline releases it.
        """
        self._admission.offer(item.lane, item.limits, item.task.id, item)
        self._admission.take_one(item.lane, item.task.id, self._clock())
        self.arm_deadline(item.task)

    async def key(self) -> bytes:
        """The callback key: given at construction, else made once and kept in the store."""
        if self._key is None:
            self._key = await self._store.server_key()
        return self._key

    def callback_url(self, task: Task) -> str:
        assert self._key is not None  # noqa: S101 - loaded before the first dispatch
        return f"{self._public_url}/callbacks/{callback_token(self._key, task.id, task.attempt)}"

    def _pump(self) -> None:
        self._pump_soon = None
        admitted = self._take_admitted(self._clock())
        if admitted:
            self._spawn(self._start(admitted))

    def _take_admitted(self, now: float) -> list[Ready]:
        """What admission lets start now, within the room for running handlers (a handler
        that ends pumps again); counted as starting until launched or abandoned."""
        room = self._max_running - len(self._running) - self._starting
        if room <= 0:
            return []
        admitted, wake_at = self._admission.take(now, room)
        if wake_at is not None:
            self._timers.schedule(("rate", "wake"), wake_at, self._wake)
        self._starting += len(admitted)
        return admitted

    def _pump_later(self) -> None:
        """Pump once after this step of the loop: handlers ending together start one batch."""
        if self._pump_soon is None:
            self._pump_soon = asyncio.get_running_loop().call_soon(self._pump)

    async def _wake(self) -> None:
        self._pump()

    def _spawn(self, coroutine: Awaitable[None]) -> None:
        task = asyncio.ensure_future(coroutine)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _start(self, batch: list[Ready]) -> None:
        try:
            await self._start_batch(batch)
        finally:
            self._pump_later()

    async def _start_batch(self, batch: list[Ready]) -> None:
        now = self._clock()
        try:
            await self.key()
            async with self._store.transaction() as tx:
                starting = await self._mark_batch(tx, batch, now)
                entries = await tx.append_history(starting.history)
        except Exception as error:  # any store failure defers the batch; it is never lost
            log.warning("dispatch_deferred", reason=str(error), tasks=len(batch), exc_info=True)
            self.abandon(Starting(batch, [], [], []))
            return
        self._bus.publish(entries)
        self.launch(starting)

    async def start_within(
        self, tx: StoreTx, ready: Iterable[Ready], released: Collection[str], now: float
    ) -> tuple[Starting | None, list[Ready]]:
        """Offer the tasks of `ready` that are due now and mark what may start dispatched
        inside the caller's transaction: a step whose barrier opens is dispatched by the
        commit that opened it. Returns that batch and the tasks left for `submit` after the
        commit: those due later, and those the transaction also `released` (a retry of the
        same task is released first, then offered again).

        After the commit the caller passes the batch to `launch`, or to `abandon` if the
        transaction failed.
        """
        now_ready: list[Ready] = []
        later: list[Ready] = []
        for item in ready:
            due = item.task.due_at
            startable = item.task.id not in released and (due is None or due <= now)
            (now_ready if startable else later).append(item)
        self._enqueue(now_ready, now)
        if self._key is None:  # not loaded yet: the pump after the commit starts them
            return None, later
        admitted = self._take_admitted(now)
        if not admitted:
            return None, later
        return await self._mark_batch(tx, admitted, now), later

    async def _mark_batch(self, tx: StoreTx, batch: list[Ready], now: float) -> Starting:
        """Mark `batch` dispatched, with its callback tokens and history, in `tx`."""
        started = await self._mark_dispatched(tx, batch, now)
        # The tokens are committed before any handler can hand its URL out, so a service
        # that calls back at once never meets a 404.
        await tx.insert_callback_tokens(
            [
                (token_hash(self._token(item.task)), item.task.id, item.task.attempt)
                for item in started
            ]
        )
        contexts = await self._contexts(tx, started)
        history = [
            HistoryEntry(
                "task_dispatched", now, item.task.run_id, item.task.id, item.task.step,
                {"attempt": item.task.attempt, "item": item.task.item_key},
            )
            for item in started
        ]  # fmt: skip
        return Starting(batch, started, contexts, history)

    def launch(self, starting: Starting) -> None:
        """The batch is committed: start its handlers, free the slots of what did not start."""
        self._starting -= len(starting.batch)
        started_ids = {item.task.id for item in starting.started}
        self.release(item.task.id for item in starting.batch if item.task.id not in started_ids)
        for item, ctx in zip(starting.started, starting.contexts, strict=True):
            self._launch(item, ctx)

    def abandon(self, starting: Starting) -> None:
        """The batch did not commit: free its slots and offer it again a little later."""
        self._starting -= len(starting.batch)
        self.release(item.task.id for item in starting.batch)
        retry_at = self._clock() + STORE_RETRY_SECONDS
        for item in starting.batch:
            self._timers.schedule(timer_key(item.task.id), retry_at, self._offer_later(item))

    async def _mark_dispatched(self, tx: StoreTx, batch: list[Ready], now: float) -> list[Ready]:
        started = []
        for item in batch:
            timeout = item.spec.timeout
            dispatched = item.task.replace(
                state=TaskState.DISPATCHED,
                started_at=now,
                due_at=None if timeout is None else now + timeout,
            )
            if await tx.transition_task(dispatched, TaskState.PENDING, item.task.attempt):
                started.append(Ready(dispatched, item.workflow, item.spec))
        return started

    async def _contexts(self, tx: StoreTx, started: list[Ready]) -> list[Context]:
        events: dict[str, Mapping[str, Any]] = {}
        upstreams: dict[tuple[str, str], Upstream] = {}
        contexts = []
        for item in started:
            task = item.task
            if task.run_id not in events:
                events[task.run_id] = await self._event_payload(tx, task.run_id)
            for need in item.spec.needs:
                if (task.run_id, need) not in upstreams:
                    tasks = await tx.tasks_of_run(task.run_id, need)
                    upstreams[(task.run_id, need)] = collect_upstream(tasks)
            contexts.append(
                Context(
                    run_id=task.run_id,
                    task_id=task.id,
                    step=task.step,
                    item_key=task.item_key,
                    attempt=task.attempt,
                    event=events[task.run_id],
                    upstream={need: upstreams[(task.run_id, need)] for need in item.spec.needs},
                    http=self._http,
                    log=structlog.get_logger("handler").bind(
                        run_id=task.run_id, task_id=task.id, step=task.step
                    ),
                    callback_url=self.callback_url(task),
                    callback_secret=self.callback_secret(task),
                    service=None
                    if item.spec.service is None
                    else self._services.get(item.spec.service),
                )
            )
        return contexts

    def _token(self, task: Task) -> str:
        assert self._key is not None  # noqa: S101 - loaded before the first dispatch
        return callback_token(self._key, task.id, task.attempt)

    def callback_secret(self, task: Task) -> str:
        """The per-attempt secret a service may sign this task's callback with."""
        assert self._key is not None  # noqa: S101 - loaded before the first dispatch
        return task_secret(self._key, task.id, task.attempt)

    async def _event_payload(self, tx: StoreTx, run_id: str) -> Mapping[str, Any]:
        """The payload of the run's event, read once per run (a fan-out's list can be large)."""
        payload = self._payloads.get(run_id)
        if payload is None:
            run = await tx.get_run(run_id)
            event = None if run is None else await tx.get_event(run.event_id)
            payload = {} if event is None else event.payload
            if len(self._payloads) >= _PAYLOAD_CACHE_SIZE:
                self._payloads.pop(next(iter(self._payloads)))
            self._payloads[run_id] = payload
        return payload

    def _launch(self, item: Ready, ctx: Context) -> None:
        self.arm_deadline(item.task)
        running = asyncio.ensure_future(self._run(item, ctx))
        self._running[item.task.id] = running
        # Also tracked as background work, so close() waits for a report under way.
        self._background.add(running)
        running.add_done_callback(self._background.discard)

    def _timeout(self, task: Task) -> Callable[[], Awaitable[None]]:
        async def fire() -> None:
            await self._on_timeout(task)

        return fire

    async def _run(self, item: Ready, ctx: Context) -> None:
        structlog.contextvars.bind_contextvars(run_id=ctx.run_id, task_id=ctx.task_id)
        result: Invocation
        try:
            handler = self.handler(item.spec.handler)
        except HandlerImportError as error:
            result = HandlerResult(Outcome.FAILED, error=str(error))
        else:
            result = await invoke(
                handler, ctx, item.task.item, item.spec.for_each is not None, self._executor
            )
        # Leave the running set before reporting, so that nothing the report causes can
        # cancel this very coroutine half-way through its report.
        self._running.pop(item.task.id, None)
        self._pump_later()
        try:
            await self._on_result(item, result)
        except Exception:
            # The task stays dispatched: its deadline, or the next restart, settles it.
            log.exception("report_failed", task_id=item.task.id)

    async def close(self) -> None:
        """Stop handlers still running; their tasks stay dispatched and restart re-dispatches them."""
        if self._pump_soon is not None:
            self._pump_soon.cancel()
        for task in self._running.values():
            task.cancel()
        pending = [*self._running.values(), *self._background]
        self._running.clear()
        if pending:
            await asyncio.gather(*pending, return_exceptions=True)
