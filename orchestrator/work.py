"""The pieces of work the completion path takes: what each carries, one per task per batch.

Hand-offs, hand-offs that did not get through, reports (a handler's result, a timer, an
operator), verified callbacks, step deadlines and history records. `recording.apply` does
a batch of them in one transaction.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

from orchestrator.advance import Report
from orchestrator.invoke import Handoff, Redispatch
from orchestrator.outbox import Ready
from orchestrator.records import HistoryEntry, Task


@dataclass(eq=False, slots=True)
class Work:
    """One piece of work; `done` is the sender's answer (None: the engine's own work)."""

    done: asyncio.Future[Any] | None = None
    busy_tries: int = 0

    @property
    def task_id(self) -> str | None:
        return None


@dataclass(eq=False, slots=True)
class ReportWork(Work):
    report: Report | None = None
    last_resort: bool = False  # already the failure report of an earlier error

    @property
    def task_id(self) -> str | None:
        return None if self.report is None else self.report.task.id


@dataclass(eq=False, slots=True)
class CallbackWork(Work):
    report: Report | None = None
    webhook_id: str = ""
    body_hash: str = ""

    @property
    def task_id(self) -> str | None:
        return None if self.report is None else self.report.task.id


@dataclass(eq=False, slots=True)
class HandoffWork(Work):
    item: Ready | None = None
    handoff: Handoff | None = None

    @property
    def task_id(self) -> str | None:
        return None if self.item is None else self.item.task.id


@dataclass(eq=False, slots=True)
class RedispatchWork(Work):
    item: Ready | None = None
    failure: Redispatch | None = None

    @property
    def task_id(self) -> str | None:
        return None if self.item is None else self.item.task.id


@dataclass(eq=False, slots=True)
class RecordWork(Work):
    entries: list[HistoryEntry] = field(default_factory=list)


@dataclass(eq=False, slots=True)
class DeadlineWork(Work):
    run_id: str = ""
    step: str = ""


def one_per_task(batch: list[Work]) -> tuple[list[Work], list[Work]]:
    """The batch without second pieces of work for the same task (those go in the next)."""
    seen: set[str] = set()
    now, later = [], []
    for work in batch:
        task_id = work.task_id
        if task_id is not None and task_id in seen:
            later.append(work)
            continue
        if task_id is not None:
            seen.add(task_id)
        now.append(work)
    return now, later


def task_of(work: Work) -> Task | None:
    if isinstance(work, ReportWork | CallbackWork) and work.report is not None:
        return work.report.task
    if isinstance(work, HandoffWork | RedispatchWork) and work.item is not None:
        return work.item.task
    return None
