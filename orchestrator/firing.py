"""Firing: a trigger (or a workflow by hand) becomes a persisted event and a started run.

One transaction holds the event (deduplicated on its trigger and dedup key), the run, its
history and the barriers and tasks of its root steps; the dispatcher starts those after
the commit. An event of a trigger whose webhook `completes` by key also completes, in that
same transaction, every task waiting on its key, or is kept for waits registered later
(key_waits.py); a redelivery is the first event again and completes nothing. A trigger
with `starts_runs = false` starts no run. The event keeps the trace context it came with
(tracing.py): the sender's, or where spans are exported the `fire` span's own.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import structlog

from orchestrator import tracing
from orchestrator.advance import Advance
from orchestrator.applier import Applier
from orchestrator.ids import new_id
from orchestrator.key_waits import complete_by_event
from orchestrator.model import TriggerSpec, WorkflowSpec
from orchestrator.records import Event
from orchestrator.store import Store
from orchestrator.tracecontext import TraceContext

log = structlog.get_logger("orchestrator.engine")


class RunStateError(ValueError):
    """An operator action that the run's state does not allow (answered 409)."""


class UnknownTarget(LookupError):
    """A fire for a name that is neither a trigger nor a workflow."""


@dataclass(frozen=True, slots=True)
class Fired:
    """The stored event, the run it started (None: a duplicate, or a trigger that starts
    none), the tasks it completed by key and the keys it was kept under."""

    event_id: str
    run_id: str | None
    duplicate: bool
    completed: int = 0
    kept: int = 0


class Firing:
    def __init__(
        self,
        applier: Applier,
        store: Store,
        workflows: Mapping[str, WorkflowSpec],
        triggers: Mapping[str, TriggerSpec],
    ) -> None:
        self._applier = applier
        self._store = store
        self.workflows = workflows
        self.triggers = triggers

    def resolve(self, name: str) -> tuple[str, str, dict[str, Any]]:
        """(trigger, workflow, default payload) for a trigger name, or a workflow fired by hand."""
        trigger = self.triggers.get(name)
        if trigger is not None:
            return name, trigger.workflow or "", dict(trigger.payload)
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
        trace: TraceContext | None = None,
    ) -> Fired:
        """Persist an event and start its run; a repeated dedup key returns the first event.

        `trace` is the sender's valid trace context, if any: the event keeps it (or, where
        spans are exported, the `fire` span's) for every task of the run to continue."""
        trigger, workflow, defaults = self.resolve(name)
        with tracing.current().span("fire", trace, trigger=trigger, workflow=workflow) as span:
            merged = {**defaults, **(payload or {})}
            fired = await self._fire(
                name, trigger, workflow, merged, dedup_key, source, span.context or trace
            )
            span.annotate(event_id=fired.event_id, run_id=fired.run_id, duplicate=fired.duplicate)
        return fired

    async def _fire(
        self,
        name: str,
        trigger: str,
        workflow: str,
        payload: dict[str, Any],
        dedup_key: str | None,
        source: str,
        trace: TraceContext | None,
    ) -> Fired:
        spec = self.workflows.get(workflow)  # None: a trigger that only completes by key
        configured = self.triggers.get(name)
        webhook = configured.webhook if configured is not None else None
        traceparent, tracestate = tracing.stored(trace)

        async def work(advance: Advance) -> Fired:
            event = Event(
                new_id("evt", advance.now), trigger, workflow, advance.now, payload, dedup_key,
                traceparent, tracestate,
            )  # fmt: skip
            stored, created = await advance.tx.insert_event(event)
            if not created:
                return Fired(stored.id, None, duplicate=True)
            completed, kept = (0, 0)
            if webhook is not None and webhook.completes:
                completed, kept = await complete_by_event(advance, webhook, event)
            if spec is None:
                return Fired(event.id, None, False, completed, kept)
            run_id = new_id("run", advance.now)
            advance.outbox.note(
                "event_received", advance.now, run_id, trigger=trigger, source=source,
                event_id=event.id, **tracing.trace_data(trace),
            )  # fmt: skip
            await advance.create_run(run_id, event, workflow, spec)
            return Fired(event.id, run_id, False, completed, kept)

        fired = await self._applier.transact(work)
        if fired.run_id is not None:
            log.info("run_started", run_id=fired.run_id, workflow=workflow, trigger=trigger)
        if fired.completed or fired.kept:
            log.info("event_matched", event_id=fired.event_id, trigger=trigger,
                     completed=fired.completed, kept=fired.kept)  # fmt: skip
        return fired

    async def replay(self, event_id: str, force: bool = False) -> Fired:
        """Start a new run from a stored event; refused while a run of it is active."""
        event = await self._store.get_event(event_id)
        if event is None:
            raise LookupError(f"no event {event_id!r}")
        active = [
            run.id for run in await self._store.runs_of_event(event_id) if not run.status.finished
        ]
        if active and not force:
            raise RunStateError(
                f"run {active[0]} of this event is still running (pass force to replay anyway)"
            )
        if not event.workflow:
            raise LookupError(f"event {event_id!r} started no run: its trigger completes by key")
        spec = self.workflows.get(event.workflow)
        if spec is None:
            raise LookupError(f"workflow {event.workflow!r} of this event is no longer configured")

        async def work(advance: Advance) -> Fired:
            run_id = new_id("run", advance.now)
            advance.outbox.note(
                "event_replayed", advance.now, run_id, event_id=event.id, forced=force,
                **tracing.trace_data(tracing.restored(event.traceparent, event.tracestate)),
            )  # fmt: skip
            await advance.create_run(run_id, event, event.workflow, spec)
            return Fired(event.id, run_id, duplicate=False)

        return await self._applier.transact(work)
