"""Completion by key, in whichever order the wait and the event arrive.

Two transactions meet here. The hand-off (`register`): a handler returned
`ctx.await_event(trigger=..., key=...)`; an event kept for that key completes the task at
once, else a wait is registered. The firing (`complete_by_event`): an event of a trigger
with `completes` arrived; it completes every task waiting on one of its keys, in the same
transaction that stores it, and is kept for `keep_unmatched` under each key nobody waits
on. Both lock the keys first, so on a store shared by replicas the two never miss each
other. A redelivered event is a duplicate before it gets here, so it completes nothing.

An event completes a task through the one completion path (`Advance.report`), its payload
the output (checked against the handler's `AwaitEvent[Model]`; a payload that does not
match fails the task with the reason). The task's own history entry names the event.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from orchestrator.advance import Advance, Applied, Report
from orchestrator.event_keys import match_event
from orchestrator.invoke import EventWait, Handler, HandlerImportError, load_handler
from orchestrator.model import StepSpec, WebhookSpec
from orchestrator.records import Event, Task
from orchestrator.states import Outcome
from orchestrator.store import KeptEvent, Wait


@dataclass(frozen=True, slots=True)
class Completing:
    """A report an event makes, and what the task's history entry says about it."""

    report: Report
    event_id: str
    trigger: str
    key: str
    early: bool = False


@functools.lru_cache(maxsize=256)
def _handler(path: str) -> Handler | None:
    try:
        return load_handler(path)
    except HandlerImportError:
        return None  # the task itself fails on it where it matters: when it runs


def event_report(
    task: Task, attempt: int, step: StepSpec, outcome: Outcome, error: str | None, payload: Any
) -> Report:
    """The report an event makes about one waiting attempt."""
    if outcome is not Outcome.SUCCEEDED:
        return Report(task, attempt, outcome, None, error, source="event")
    handler = _handler(step.handler)
    try:
        output = payload if handler is None else handler.check_event_output(payload)
    except ValueError as problem:
        return Report(task, attempt, Outcome.FAILED, None, str(problem), source="event")
    return Report(task, attempt, outcome, output, None, source="event")


async def report(advance: Advance, completing: Sequence[Completing]) -> list[Applied]:
    """Apply the reports, and say in each task's entry which event completed it."""
    applied = await advance.report([c.report for c in completing])
    annotate(completing, applied)
    return applied


def annotate(completing: Sequence[Completing], applied: Sequence[Applied]) -> None:
    """Say in each completed task's own history entry which event completed it."""
    for how, result in zip(completing, applied, strict=True):
        if result.changed and result.entry is not None:
            data = result.entry.data
            data.update(event_id=how.event_id, trigger=how.trigger, key=how.key)
            if how.early:
                data["early"] = True  # the event arrived before the wait


async def complete_by_event(
    advance: Advance, webhook: WebhookSpec, event: Event
) -> tuple[int, int]:
    """Complete the tasks waiting on the event's keys; keep it under the others. (tasks
    completed, keys kept under)."""
    match = match_event(webhook, event.payload)
    if match is None:
        return 0, 0
    keys = [(event.trigger, key) for key in match.keys]
    await advance.tx.lock_wait_keys(keys)
    waiting: dict[str, tuple[Wait, Task]] = {}
    for wait, task in await advance.tx.waiting_on(keys):
        waiting.setdefault(task.id, (wait, task))  # a task waits on one key: once
    infos = await advance.infos(task.run_id for _, task in waiting.values())
    completing = [
        Completing(
            event_report(task, wait.attempt, infos[task.run_id].step(task.step), match.outcome,
                         match.error, event.payload),
            event.id, event.trigger, wait.key,
        )
        for wait, task in waiting.values()
    ]  # fmt: skip
    applied = await report(advance, completing)
    await advance.tx.delete_waits(list(waiting))
    awaited = {wait.key for wait, _ in waiting.values()}
    unmatched = [key for key in match.keys if key not in awaited]
    kept = 0
    if unmatched and webhook.keep_unmatched > 0 and webhook.keep_unmatched_max > 0:
        expires = advance.now + webhook.keep_unmatched
        await advance.tx.keep_events(
            [
                KeptEvent(event.trigger, key, event.id, advance.now, expires,
                          match.outcome.value, match.error)
                for key in unmatched
            ],
            {event.trigger: webhook.keep_unmatched_max},
        )  # fmt: skip
        kept = len(unmatched)
    return sum(result.changed for result in applied), kept


@dataclass(frozen=True, slots=True)
class Registering:
    """A task attempt that just began to await an event."""

    task: Task
    step: StepSpec
    wait: EventWait
    deadline: float | None


async def register(advance: Advance, registering: Sequence[Registering]) -> list[Completing]:
    """Register these waits, except those an event kept for their key completes at once:
    the reports for those (to apply with the rest of the batch)."""
    if not registering:
        return []
    keys = {(r.wait.trigger, r.wait.key) for r in registering}
    await advance.tx.lock_wait_keys(keys)
    first: dict[tuple[str, str], KeptEvent] = {}
    for kept in await advance.tx.kept_for(keys, advance.now):
        first.setdefault(kept.wait_key, kept)  # the earliest, as if it had been waiting
    completing, waits = [], []
    for item in registering:
        task, found = item.task, first.get((item.wait.trigger, item.wait.key))
        if found is None:
            waits.append(Wait(item.wait.trigger, item.wait.key, task.id, task.attempt,
                              advance.now, item.deadline))  # fmt: skip
            continue
        made = event_report(task, task.attempt, item.step, Outcome(found.outcome), found.error,
                            found.payload)  # fmt: skip
        completing.append(Completing(made, found.event_id, found.trigger, found.key, early=True))
    await advance.tx.insert_waits(waits)
    return completing
