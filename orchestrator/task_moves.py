"""Every write of a task's state, built from the transition table: the only way to make one.

Each function takes the task as it was read and returns a `TaskWrite`: the task as it will
be, and the state and attempt the stored row must still have for the write to apply (the
store's conditional update decides races, not an in-memory check). A move that leaves the
task ready to start, or starts it, names its new `owner`: the replica whose dispatcher
holds it from then on. A move that
TASK_TRANSITIONS does not allow raises IllegalMove: it is a bug, never an input error.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from orchestrator.records import Task
from orchestrator.states import OUTCOME_MOVES, Outcome, TaskMove, TaskState, next_task_state


@dataclass(frozen=True, slots=True)
class TaskWrite:
    """`task` as it will be stored, if the stored row is still `expected_state` at
    `expected_attempt`."""

    task: Task
    expected_state: TaskState
    expected_attempt: int
    move: TaskMove


def _moved(task: Task, move: TaskMove, **changes: Any) -> TaskWrite:
    state = next_task_state(task.state, move)
    if changes.get("owner") is None:
        changes.pop("owner", None)  # no new owner named: the task keeps its own
    return TaskWrite(task.replace(state=state, **changes), task.state, task.attempt, move)


def dispatch(task: Task, now: float, timeout: float | None, owner: str | None = None) -> TaskWrite:
    """The dispatcher of replica `owner` starts the attempt; `timeout` (if any) sets its
    deadline."""
    return _moved(
        task,
        TaskMove.DISPATCH,
        owner=owner,
        started_at=now,
        due_at=None if timeout is None else now + timeout,
        awaiting=False,
    )


def await_callback(task: Task, now: float, window: float | None) -> TaskWrite:
    """The handler handed the work off: wait for the callback, timing out after `window`."""
    return _moved(
        task,
        TaskMove.AWAIT,
        awaiting=True,
        wait_window=window,
        due_at=None if window is None else now + window,
    )


def await_event(task: Task, now: float, window: float | None) -> TaskWrite:
    """The handler waits for an inbound event's key: the same move as awaiting a callback
    (the task stays dispatched and awaiting; its wait is a row of its own)."""
    return await_callback(task, now, window)


def extend(task: Task, now: float) -> TaskWrite:
    """A heartbeat: the deadline moves `wait_window` past now."""
    window = task.wait_window
    return _moved(task, TaskMove.EXTEND, due_at=None if window is None else now + window)


def requeue(
    task: Task,
    now: float,
    not_before: float | None = None,
    tries: int | None = None,
    owner: str | None = None,
) -> TaskWrite:
    """The same attempt again: after a restart (at once), or after a failed hand-off
    (`not_before`, with `tries` failed hand-offs so far)."""
    return _moved(
        task,
        TaskMove.REQUEUE,
        owner=owner,
        due_at=not_before,
        started_at=None,
        awaiting=False,
        queued_at=now,
        dispatch_tries=task.dispatch_tries if tries is None else tries,
    )


def settle(
    task: Task,
    outcome: Outcome,
    now: float,
    output: Any = None,
    error: str | None = None,
    began: float | None = None,
    ended: float | None = None,
) -> TaskWrite:
    """A final report: the attempt ends `outcome`. For a local handler, `began` is when it
    really started (a worker thread may have been busy) and `ended` when it returned (its
    result may wait a moment to be recorded): the run is what lies between."""
    started = task.started_at if began is None else max(began, task.started_at or began)
    finished = now if ended is None else min(now, max(ended, started or ended))
    return _moved(
        task,
        OUTCOME_MOVES[outcome],
        finished_at=finished,
        due_at=None,
        output=output,
        error=error,
        started_at=started,
    )


def back_off(
    task: Task,
    attempt: int,
    not_before: float,
    now: float,
    error: str | None,
    owner: str | None = None,
) -> TaskWrite:
    """The attempt failed with attempts left: `attempt` starts no sooner than `not_before`."""
    return _moved(
        task,
        TaskMove.BACK_OFF,
        owner=owner,
        attempt=attempt,
        due_at=not_before,
        started_at=None,
        error=error,
        awaiting=False,
        dispatch_tries=0,
        queued_at=now,
    )


def cancel(task: Task, now: float, reason: str) -> TaskWrite:
    """The task will not run (any more): its run stopped, or its barrier decided early."""
    return _moved(task, TaskMove.CANCEL, finished_at=now, due_at=None, error=reason)


def retry(task: Task, now: float, owner: str | None = None) -> TaskWrite:
    """An operator re-runs a finished task: a new attempt, so a new callback token."""
    return _moved(
        task,
        TaskMove.RETRY,
        owner=owner,
        attempt=task.attempt + 1,
        due_at=None,
        started_at=None,
        finished_at=None,
        output=None,
        error=None,
        awaiting=False,
        dispatch_tries=0,
        wait_window=None,
        queued_at=now,
    )


def claim(task: Task, owner: str) -> TaskWrite:
    """Replica `owner` takes over a task whose owner died: still pending, or still awaiting
    its callback (a task whose handler was running there is requeued instead)."""
    return _moved(task, TaskMove.CLAIM, owner=owner)
