"""A run's task attempts as timed spans, read from its task records and, for a task that
was retried or re-sent, from its history.

A task record holds only its current attempt (queued_at, started_at, finished_at). The
earlier attempts of a retried task live in history alone: `task_dispatched` starts one,
`task_attempt_failed` (automatic retry) or a final entry such as `task_failed` (before an
operator's retry) ends it; `task_retry_scheduled` and `task_dispatch_failed` say how long
the next try was held back. An earlier attempt's run is counted from its dispatch (a local
handler may have begun a little later, waiting for a worker thread). History pruned by
retention leaves only the current attempts.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from orchestrator.records import HistoryEntry, Run, Task
from orchestrator.states import TaskState
from orchestrator.store import Store
from orchestrator.timing import Attempt, Rate, Timing, run_timing

PAGE = 1000
MAX_PAGES = 1000  # a million entries: past any run the admin API can show
_ATTEMPT_ENDS = ("task_attempt_failed", "task_failed", "task_timed_out", "task_cancelled")
_RUN_STOPS = ("run_failed", "run_cancelled")
TIMING_HISTORY = (
    "step_started", "task_dispatched", "task_dispatch_failed", "task_requeued",
    "task_retry_scheduled", "task_retried", *_ATTEMPT_ENDS, *_RUN_STOPS, "run_retried",
)  # fmt: skip


@dataclass(frozen=True, slots=True)
class RunAttempts:
    """Every finished attempt of a run's tasks, and how long the run stood failed or
    cancelled before operators retried it."""

    attempts: list[Attempt]
    paused: float = 0.0
    earlier: dict[str, list[Attempt]] = field(default_factory=dict)


def needs_history(task: Task) -> bool:
    """Whether the record alone misses some of the task's time: an earlier attempt, or a
    hand-off that was sent again (the record keeps the last send's queue time)."""
    return task.attempt > 1 or task.dispatch_tries > 0


async def read_attempts(store: Store, tasks: list[Task], run_id: str) -> RunAttempts:
    """The attempts of `tasks` (all of one run), reading history only if one was retried."""
    if not any(needs_history(task) for task in tasks):
        return attempts_of(tasks, [])
    return attempts_of(tasks, await _timing_history(store, run_id))


async def _timing_history(store: Store, run_id: str) -> list[HistoryEntry]:
    entries: list[HistoryEntry] = []
    after = 0
    for _ in range(MAX_PAGES):
        page = await store.history(after=after, run_id=run_id, types=TIMING_HISTORY, limit=PAGE)
        entries += page
        if len(page) < PAGE or page[-1].id is None:
            break
        after = page[-1].id
    return entries


def attempts_of(tasks: Iterable[Task], history: Iterable[HistoryEntry]) -> RunAttempts:
    """Pure: the finished attempts of `tasks`, the earlier ones replayed from `history`
    (the run's entries of TIMING_HISTORY types, oldest first)."""
    created: dict[str, float] = {}
    by_task: dict[str, list[HistoryEntry]] = {}
    run_level: list[HistoryEntry] = []
    for entry in history:
        if entry.type == "step_started" and entry.step is not None:
            created.setdefault(entry.step, entry.at)
        elif entry.task_id is not None:
            by_task.setdefault(entry.task_id, []).append(entry)
        else:
            run_level.append(entry)
    attempts: list[Attempt] = []
    earlier: dict[str, list[Attempt]] = {}
    for task in tasks:
        replay = _Replay(task, created.get(task.step))
        if needs_history(task):
            for entry in by_task.get(task.id, ()):
                replay.see(entry)
        if replay.earlier:
            earlier[task.id] = replay.earlier
        attempts += replay.earlier
        final = replay.final()
        if final is not None:
            attempts.append(final)
    return RunAttempts(attempts, paused_of(run_level), earlier)


def paused_of(entries: Iterable[HistoryEntry]) -> float:
    """Seconds between each time the run stopped (failed, cancelled) and its next retry."""
    paused, stopped = 0.0, None
    for entry in entries:
        if entry.type in _RUN_STOPS:
            stopped = entry.at
        elif entry.type == "run_retried" and stopped is not None:
            paused += max(0.0, entry.at - stopped)
            stopped = None
    return paused


class _Replay:
    """One task's history, replayed: its earlier attempts, and when and how its current
    attempt first became ready."""

    def __init__(self, task: Task, created: float | None) -> None:
        self.task = task
        self.earlier: list[Attempt] = []
        self.queued = created
        self.number = 1
        self.started: float | None = None
        self.backoff = 0.0

    def see(self, entry: HistoryEntry) -> None:
        data = entry.data
        if isinstance(data.get("attempt"), int) and entry.type != "task_retry_scheduled":
            self.number = data["attempt"]
        if entry.type == "task_dispatched":
            self.started = entry.at
        elif entry.type == "task_requeued":
            self.started = None
        elif entry.type == "task_dispatch_failed":
            self.started = None
            self.backoff += _delay(entry, "retry_at")
        elif entry.type == "task_retry_scheduled":
            self.backoff += _delay(entry, "not_before")
        elif entry.type == "task_retried":
            self._next(entry.at, data.get("attempt"))
        elif entry.type in _ATTEMPT_ENDS:
            self._ended(entry)

    def _ended(self, entry: HistoryEntry) -> None:
        if self.number >= self.task.attempt:
            return  # the current attempt: its record says more than its history
        duration = entry.data.get("duration")
        began = entry.at - duration if isinstance(duration, int | float) else self.started
        if began is not None:
            queued = began if self.queued is None else min(self.queued, began)
            self.earlier.append(
                Attempt(
                    self.task.id, self.task.label, self.task.step, self.number,
                    queued, began, entry.at, failed=True, backoff=self.backoff,
                )
            )  # fmt: skip
        if entry.type == "task_attempt_failed":
            self._next(entry.at, self.number + 1)

    def _next(self, queued: float, number: Any) -> None:
        self.queued = queued
        self.number = number if isinstance(number, int) else self.number + 1
        self.started = None
        self.backoff = 0.0

    def final(self) -> Attempt | None:
        task = self.task
        if task.started_at is None or task.finished_at is None:
            return None
        queued = task.queued_at if task.queued_at is not None else task.started_at
        if needs_history(task) and self.queued is not None:
            queued = min(queued, self.queued)
        return Attempt(
            task.id, task.label, task.step, task.attempt, min(queued, task.started_at),
            task.started_at, task.finished_at, failed=task.state is not TaskState.SUCCEEDED,
            backoff=self.backoff if needs_history(task) else 0.0,
        )  # fmt: skip


def _delay(entry: HistoryEntry, key: str) -> float:
    until = entry.data.get(key)
    return max(0.0, until - entry.at) if isinstance(until, int | float) else 0.0


def step_graph(spec: Mapping[str, Any]) -> tuple[dict[str, list[str]], dict[str, Rate]]:
    """The needs and the rate limits of a workflow spec as a run stored it."""
    needs: dict[str, list[str]] = {}
    rates: dict[str, Rate] = {}
    for name, step in spec.get("steps", {}).items():
        needs[name] = list(step.get("needs") or ())
        rate = step.get("rate")
        if isinstance(rate, Mapping):
            rates[name] = Rate(int(rate["count"]), float(rate["per"]))
    return needs, rates


def timing_of(run: Run, found: RunAttempts, now: float | None = None) -> Timing:
    """The run's timing from its attempts; a running run counts up to its last finish (or
    `now`, if nothing finished yet)."""
    needs, rates = step_graph(run.spec)
    finishes = [attempt.finished for attempt in found.attempts]
    end = run.finished_at or max(finishes, default=now or run.created_at)
    return run_timing(found.attempts, needs, run.created_at, end, rates, found.paused)


async def timing_for(store: Store, run: Run, tasks: list[Task]) -> Timing:
    """The run's timing, read from the store."""
    return timing_of(run, await read_attempts(store, tasks, run.id))
