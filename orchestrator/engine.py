"""The engine: its parts, wired once, and the operations the routes and the CLI call.

The way through it, for one remote task:

    firing (a transaction)       -> outbox: tasks ready
    dispatcher (a transaction)   -> outbox: handlers to start, their deadlines
    launcher                     -> the handler hands its work off
    completion (a transaction)   -> the task awaits its callback, a deadline armed
    POST /callbacks -> completion (a transaction) -> task, barrier, next steps ready

Every transaction produces an outbox that the applier acts on after the commit; no part
calls back into the one that fed it.
"""

from __future__ import annotations

import asyncio
import json
import random
import time
from collections.abc import Callable, Mapping
from concurrent.futures import Executor, ThreadPoolExecutor
from typing import Any

import httpx
import structlog

from orchestrator.advance import LOCAL, Advance, Report
from orchestrator.applier import RELEASED_TOPIC, Applier
from orchestrator.bus import HistoryBus
from orchestrator.capabilities import Capabilities
from orchestrator.completion import Completion
from orchestrator.deadlines import WINDOW, Deadlines
from orchestrator.dispatch import MAX_RUNNING_HANDLERS, Dispatcher
from orchestrator.firing import Fired, Firing, RunStateError, UnknownTarget
from orchestrator.invoke import Handler, Handoff, Invocation, Redispatch, Spent
from orchestrator.launcher import Contexts, Launcher
from orchestrator.metrics import Metrics
from orchestrator.model import ServiceSpec, TriggerSpec, WorkflowSpec
from orchestrator.observe import EngineFigures
from orchestrator.outbox import Ready
from orchestrator.records import HistoryEntry, Task
from orchestrator.recovery import Recovered, recover
from orchestrator.relay import TOPIC as HISTORY_TOPIC
from orchestrator.relay import HistoryRelay
from orchestrator.replicas import LEASE, Membership
from orchestrator.replicas import TOPIC as REPLICA_TOPIC
from orchestrator.rerun import rerun
from orchestrator.specs import SpecCache
from orchestrator.states import Outcome, RunMove, RunState
from orchestrator.store import RECONNECTED, Notice, Store
from orchestrator.timers import Clock, TimerHeap
from orchestrator.tracecontext import TraceContext
from orchestrator.verdicts import Verdict

log = structlog.get_logger("orchestrator.engine")

__all__ = ["Engine", "Fired", "RunStateError", "UnknownTarget", "Verdict"]


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
        deadline_window: float = WINDOW,
        bus: HistoryBus | None = None,
        metrics: Metrics | None = None,
        replica: str = LOCAL,
        lease: float = LEASE,
        on_lease_lost: Callable[[], None] | None = None,
    ) -> None:
        self.store = store
        self.workflows = dict(workflows)
        self.triggers = dict(triggers or {})
        self.services = dict(services or {})
        self.clock = clock
        self.bus = bus or HistoryBus()
        self.timers = TimerHeap(clock)
        self.specs = SpecCache()
        self._executor = executor or ThreadPoolExecutor(
            handler_threads, thread_name_prefix="handler"
        )
        rng = rng or random.Random()  # noqa: S311 - jitter, not cryptography
        self.replica = replica
        self.relay = HistoryRelay(store, self.bus, self.timers, clock)
        self.applier = Applier(store, self.specs, self.relay, clock, rng, replica)
        self._lease = lease
        self._on_lease_lost = on_lease_lost
        self.membership: Membership | None = None
        self._taking_over = asyncio.Lock()
        self.capabilities = Capabilities(store, public_url, callback_key)
        self.completion = Completion(self.applier, self.timers)
        self.launcher = Launcher(
            executor=self._executor, clock=clock, on_result=self._on_result,
            on_ended=self._on_handler_ended,
        )  # fmt: skip
        contexts = Contexts(
            http=http, services=self.services, capabilities=self.capabilities, specs=self.specs
        )
        self.dispatcher = Dispatcher(
            applier=self.applier, timers=self.timers, capabilities=self.capabilities,
            contexts=contexts, running=lambda: self.launcher.running,
            on_failed=self.completion.reported, max_running=max_running_handlers,
            shared=store.shared, resource_lanes=_resource_lanes(self.workflows),
        )  # fmt: skip
        self.deadlines = Deadlines(
            store=store, timers=self.timers, clock=clock, window=deadline_window,
            on_task_due=self.completion.timed_out, on_step_due=self.completion.step_deadline,
            replica=replica if store.shared else None,
        )  # fmt: skip
        self.applier.connect(self.deadlines, self.launcher, self.dispatcher)
        self.firing = Firing(self.applier, store, self.workflows, self.triggers)
        if metrics is not None:
            self.timers.observe(metrics)
            self.applier.figures = EngineFigures(
                metrics, self.specs, pending=lambda: self.dispatcher.waiting,
                running=lambda: self.launcher.running,
            )  # fmt: skip

    # -- handlers' results -----------------------------------------------------------------

    def _on_result(self, item: Ready, result: Invocation, spent: Spent) -> None:
        task = item.task
        if isinstance(result, Handoff):
            self.completion.handed_off(item, result)
        elif isinstance(result, Redispatch):
            self.completion.redispatch(item, result)
        else:
            self.completion.reported(
                Report(task, task.attempt, result.outcome, result.output, result.error,
                       "handler", spent.began, spent.ended)
            )  # fmt: skip

    def _on_handler_ended(self) -> None:
        self.dispatcher.pump_soon()

    def handler(self, path: str) -> Handler:
        """The loaded handler for `path` (imported once)."""
        return self.launcher.handler(path)

    # -- firing ----------------------------------------------------------------------------

    def resolve(self, name: str) -> tuple[str, str, dict[str, Any]]:
        """(trigger, workflow, default payload) for a trigger name, or a workflow fired by hand."""
        return self.firing.resolve(name)

    async def fire(
        self,
        name: str,
        payload: Mapping[str, Any] | None = None,
        *,
        dedup_key: str | None = None,
        source: str = "manual",
        trace: TraceContext | None = None,
    ) -> Fired:
        """Persist an event and start its run; a repeated dedup key returns the first event."""
        return await self.firing.fire(
            name, payload, dedup_key=dedup_key, source=source, trace=trace
        )

    async def replay(self, event_id: str, force: bool = False) -> Fired:
        """Start a new run from a stored event; refused while a run of it is active."""
        return await self.firing.replay(event_id, force)

    # -- completing ------------------------------------------------------------------------

    async def report(
        self,
        task_id: str,
        attempt: int,
        outcome: Outcome,
        output: Any = None,
        error: str | None = None,
        source: str = "operator",
    ) -> bool:
        """Report an attempt's outcome; True if it changed the task, False if ignored."""
        task = await self.store.get_task(task_id)
        if task is None:
            return False
        applied = await self.completion.report(
            Report(task, attempt, outcome, output, error, source)
        )
        return applied.changed

    async def callback(
        self,
        task: Task,
        attempt: int,
        webhook_id: str,
        body_hash: str,
        outcome: Outcome,
        output: Any,
        error: str | None,
        trace: TraceContext | None = None,
    ) -> tuple[Verdict, str]:
        """Apply a verified callback; the verdict says how to answer the sender, and why."""
        report = Report(task, attempt, outcome, output, error, "callback", trace=trace)
        return await self.completion.callback(report, webhook_id, body_hash)

    async def heartbeat(self, task_id: str, attempt: int) -> tuple[Verdict, str, float | None]:
        """Extend the deadline of a task awaiting its callback."""
        return await self.completion.heartbeat(task_id, attempt)

    async def record(self, entry: HistoryEntry) -> None:
        """Append one history entry on its own (rejections that change nothing else)."""
        await self.completion.record(entry)

    async def callback_key(self) -> bytes:
        """The key callback tokens and per-task secrets derive from (loaded once)."""
        return await self.capabilities.load()

    async def workflow_of(self, run_id: str) -> WorkflowSpec:
        """The workflow a run was fired with (from the spec cache; read once when not)."""
        info = self.specs.peek(run_id)
        if info is None:
            run = await self.store.get_run(run_id)
            if run is None:
                raise LookupError(f"no run {run_id!r}")
            info = self.specs.info(run)
        return info.spec

    # -- operator actions and restart ------------------------------------------------------

    async def cancel_run(self, run_id: str, reason: str = "cancelled by operator") -> bool:
        """Cancel a running run and its unfinished tasks; False if it is not running."""

        async def work(advance: Advance) -> bool:
            if run_id not in await advance.tx.runs([run_id]):
                raise LookupError(f"no run {run_id!r}")
            return await advance.finish_run(run_id, RunMove.CANCEL, reason=reason)

        return await self.applier.transact(work)

    async def retry_run(self, run_id: str) -> int:
        """Re-run the failed, timed-out and cancelled tasks of a finished run; how many."""

        async def work(advance: Advance) -> int:
            run = (await advance.tx.runs([run_id])).get(run_id)
            if run is None:
                raise LookupError(f"no run {run_id!r}")
            if run.status not in (RunState.FAILED, RunState.CANCELLED):
                raise RunStateError(
                    f"only a failed or cancelled run can be retried; it is {run.status.value}"
                )
            return await rerun(advance, run, reason="retried by operator")

        return await self.applier.transact(work)

    async def recover(self) -> int:
        """Pick up after a restart; how many tasks were resumed or are awaiting callbacks.

        On a shared store this replica also joins the others: it listens to their notices,
        records its lease, and takes back its earlier self's tasks and any whose replica's
        lease ran out.
        """
        if not self.store.shared:
            recovered = await self._recover()
        else:
            await self.store.listen(self._noticed)
            self.membership = Membership(
                self.store, self.timers, self.clock, self.replica, lease=self._lease,
                on_peer_expired=self._take_over, on_lease_lost=self._lease_lost,
            )  # fmt: skip
            joined = await self.membership.join()
            recovered = await self._recover(joined.owners, joined.expired)
        return recovered.dispatching + recovered.awaiting_callback

    async def _recover(
        self, owners: frozenset[str | None] | None = None, expired: frozenset[str] = frozenset()
    ) -> Recovered:
        async with self._taking_over:
            return await recover(
                self.store, self.applier, self.capabilities, self.dispatcher, self.deadlines,
                owners, expired,
            )  # fmt: skip

    async def _take_over(self, peer: str) -> bool:
        """A peer's lease ran out: claim its tasks, unless it renewed or another survivor
        claimed them first; True if this replica did."""
        recovered = await self._recover(frozenset(), frozenset({peer}))
        return peer in recovered.taken_over

    def _lease_lost(self) -> None:
        if self._on_lease_lost is not None:
            self._on_lease_lost()

    def _noticed(self, notice: Notice) -> None:
        """A notice another replica's transaction left (or the listener's reconnection)."""
        if notice.topic == HISTORY_TOPIC:
            self.relay.noticed(notice.payload)
            self.dispatcher.unpark()  # what it committed may have freed a slot
        elif notice.topic == RELEASED_TOPIC:
            self._released(notice.payload)
        elif notice.topic == REPLICA_TOPIC and self.membership is not None:
            self.membership.noticed(notice.payload)
        elif notice.topic == RECONNECTED:
            self.relay.reconnected()
            self.dispatcher.unpark()
            if self.membership is not None:
                self.membership.refresh_soon()

    def _released(self, payload: str) -> None:
        """Another replica finished (or cancelled) tasks this one holds: free their slots."""
        try:
            told = json.loads(payload)
            if told.get("to") != self.replica:
                return
            released, stopped = list(map(str, told["ids"])), list(map(str, told["stop"]))
        except (ValueError, KeyError, TypeError, AttributeError):
            log.warning("released_notice_unreadable", payload=payload[:80])
            return
        self.launcher.interrupt(stopped)
        self.deadlines.forget(released)
        self.dispatcher.release(released)

    async def close(self) -> None:
        await self.dispatcher.close()
        await self.launcher.close()
        await self.completion.close()
        if self.membership is not None:
            await self.membership.leave()
        await self.relay.close()
        await self.timers.close()
        self._executor.shutdown(wait=False, cancel_futures=True)


def _resource_lanes(workflows: Mapping[str, WorkflowSpec]) -> dict[str, list[tuple[str, str]]]:
    """Each exclusive resource, and the (workflow, step) lanes that name it."""
    named: dict[str, list[tuple[str, str]]] = {}
    for workflow, spec in workflows.items():
        for step, step_spec in spec.steps.items():
            if step_spec.exclusive is not None:
                named.setdefault(step_spec.exclusive, []).append((workflow, step))
    return named
