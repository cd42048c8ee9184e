"""The engine's figures, read off what it commits: every counter follows from history entries.

The applier hands each committed transaction's history here, so a figure can never count
what a rollback undid, and the engine's parts carry no metrics calls of their own. Join
latency is the time from a barrier opening (the commit of its last completion) to the
dispatch of the first task of a step that waited on it.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Iterable

from orchestrator.metrics import Metrics
from orchestrator.records import HistoryEntry
from orchestrator.specs import SpecCache

FINISHED = {"task_succeeded", "task_failed", "task_timed_out", "task_cancelled"}
OPEN_JOINS = 4096


class EngineFigures:
    def __init__(
        self,
        metrics: Metrics,
        specs: SpecCache,
        pending: Callable[[], int],
        running: Callable[[], int],
    ) -> None:
        self._metrics = metrics
        self._specs = specs
        metrics.tasks_pending.set_function(pending)
        metrics.tasks_running.set_function(running)
        # (run, dependent step) -> when the barrier it waited on opened.
        self._joins: OrderedDict[tuple[str, str], float] = OrderedDict()

    def committed(self, entries: Iterable[HistoryEntry], seconds: float) -> None:
        """A transaction committed after `seconds`, with these history entries."""
        self._metrics.store_transaction(seconds)
        dispatched = 0
        for entry in entries:
            kind = entry.type
            if kind == "task_dispatched":
                dispatched += 1
                self._dispatched(entry)
            elif kind in FINISHED:
                workflow = self._workflow(entry)
                duration = entry.data.get("duration")
                self._metrics.task_finished(
                    workflow, entry.step or "", kind.removeprefix("task_"),
                    duration if isinstance(duration, int | float) else None,
                )  # fmt: skip
            elif kind == "task_dispatch_failed":
                self._metrics.dispatch_retried()
            elif kind == "barrier_opened":
                self._opened(entry)
        if dispatched:
            self._metrics.dispatched("started", dispatched)

    def _workflow(self, entry: HistoryEntry) -> str:
        info = self._specs.peek(entry.run_id) if entry.run_id else None
        return "" if info is None else info.workflow

    def _opened(self, entry: HistoryEntry) -> None:
        info = self._specs.peek(entry.run_id) if entry.run_id else None
        if info is None or entry.run_id is None or entry.step is None:
            return
        self._metrics.barrier_opened(info.workflow, entry.step)
        for dependent in info.spec.dependents(entry.step):
            self._joins[(entry.run_id, dependent)] = entry.at
            if len(self._joins) > OPEN_JOINS:
                self._joins.popitem(last=False)

    def _dispatched(self, entry: HistoryEntry) -> None:
        if entry.run_id is None or entry.step is None:
            return
        opened = self._joins.pop((entry.run_id, entry.step), None)
        if opened is not None:
            self._metrics.joined(max(0.0, entry.at - opened))
