"""What a transaction decided, as plain data: acted on by the applier once it has committed.

A transaction never starts work, arms a timer or tells a subscriber anything itself; it
fills an Outbox. Only after the commit does `Applier.apply` (applier.py) publish the
history, start handlers, arm and cancel timers and offer ready tasks to the dispatcher,
so a rolled-back transaction leaves nothing behind and needs no compensation.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from orchestrator.barrier import Barrier
from orchestrator.invoke import Context
from orchestrator.limits import LaneLimits
from orchestrator.model import StepSpec
from orchestrator.records import HistoryEntry, Task

StepKey = tuple[str, str]


@dataclass(frozen=True, slots=True)
class Ready:
    """A pending task with what the dispatcher needs to admit and start it."""

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
class Launch:
    """A task marked dispatched by the transaction: its handler starts after the commit."""

    ready: Ready
    context: Context


@dataclass(slots=True)
class Outbox:
    """Everything one transaction asks to be done after it commits."""

    history: list[HistoryEntry] = field(default_factory=list)
    ready: list[Ready] = field(default_factory=list)  # offer to the dispatcher
    launch: list[Launch] = field(default_factory=list)  # start these handlers
    released: list[str] = field(default_factory=list)  # no longer in flight: free slots
    interrupted: list[str] = field(default_factory=list)  # stop these handlers
    owners: dict[str, str | None] = field(default_factory=dict)  # released task -> its owner
    task_deadlines: list[Task] = field(default_factory=list)  # (re)arm, at their due_at
    step_deadlines: list[Barrier] = field(default_factory=list)  # arm, at their deadline_at
    cleared_step_deadlines: list[StepKey] = field(default_factory=list)

    def note(self, type: str, at: float, run_id: str | None, **data: Any) -> HistoryEntry:
        """Add a history entry; `task_id` and `step` in `data` go to their own columns."""
        task_id = data.pop("task_id", None)
        step = data.pop("step", None)
        entry = HistoryEntry(type, at, run_id, task_id, step, data)
        self.history.append(entry)
        return entry

    def release(self, task: Task, interrupt: bool) -> None:
        """The task is no longer in flight; `interrupt` also stops its handler if it runs.
        Its owner (another replica, perhaps) is the one holding its slot and its handler."""
        self.released.append(task.id)
        self.owners[task.id] = task.owner
        if interrupt:
            self.interrupted.append(task.id)

    def foreign(self, replica: str) -> dict[str, tuple[list[str], list[str]]]:
        """Released and interrupted task ids by owner, for owners other than `replica`:
        what the other replicas must be told once this commits."""
        told: dict[str, tuple[list[str], list[str]]] = {}
        interrupted = set(self.interrupted)
        for task_id in self.released:
            owner = self.owners.get(task_id)
            if owner is None or owner == replica:
                continue
            released, stopped = told.setdefault(owner, ([], []))
            released.append(task_id)
            if task_id in interrupted:
                stopped.append(task_id)
        return told
