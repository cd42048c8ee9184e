"""Task and run state machines: pure decisions, no I/O.

Rules:

* A task moves only along TASK_TRANSITIONS, and every write of a task's state is built by
  `orchestrator.task_moves` from this table: a move not in it raises IllegalMove, a bug.
  Finished states (succeeded, failed, timed_out, cancelled) never change, except that an
  operator retry returns failed, timed_out or cancelled to pending with attempt + 1.
* pending -> dispatched when the dispatcher starts the attempt. A dispatched attempt that a
  restart interrupted, or whose hand-off did not get through, is requeued: back to pending
  with the same attempt (at-least-once, same idempotency key). Handing off to a service
  (await) and a heartbeat (extend) keep it dispatched. A replica that takes over the
  tasks of one that died claims them: a pending task stays pending, a task awaiting its
  callback stays dispatched (a dispatched one whose handler ran there is requeued).
* A report (succeeded / failed / timed_out) counts only for the current attempt while it is
  dispatched. A succeeded or failed report also counts while that attempt is pending again
  after a hand-off whose outcome was in doubt (a timeout may mean the service did get the
  job and calls back). Anything else is ignored with a reason: the caller records it in
  history and changes nothing.
* A failed or timed-out attempt with attempts left backs off: pending with attempt + 1 and
  a not-before time from exponential backoff with full jitter; it does not reach the
  barrier. The last attempt's failure is final and does.
* A run is running until a barrier fails (failed), every step's barrier is open
  (succeeded) or an operator cancels it (cancelled). A finished run never changes, except
  that an operator retry returns a failed or cancelled run to running.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from enum import StrEnum


class TaskState(StrEnum):
    PENDING = "pending"
    DISPATCHED = "dispatched"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    TIMED_OUT = "timed_out"
    CANCELLED = "cancelled"

    @property
    def finished(self) -> bool:
        return self in FINISHED_TASK_STATES


FINISHED_TASK_STATES = frozenset(
    {TaskState.SUCCEEDED, TaskState.FAILED, TaskState.TIMED_OUT, TaskState.CANCELLED}
)


class TaskMove(StrEnum):
    DISPATCH = "dispatch"  # the dispatcher starts the attempt
    AWAIT = "await"  # the handler handed the work to a service: wait for its callback
    EXTEND = "extend"  # a heartbeat pushes the deadline of an awaited attempt
    REQUEUE = "requeue"  # interrupted or not handed off: the same attempt again, later
    SUCCEED = "succeed"
    FAIL = "fail"
    TIME_OUT = "time_out"
    BACK_OFF = "back_off"  # the attempt failed with attempts left: the next one, later
    CANCEL = "cancel"
    RETRY = "retry"  # an operator re-runs a finished task: a new attempt
    CLAIM = "claim"  # another replica takes over a task whose owner died


TASK_TRANSITIONS: dict[tuple[TaskState, TaskMove], TaskState] = {
    (TaskState.PENDING, TaskMove.DISPATCH): TaskState.DISPATCHED,
    (TaskState.PENDING, TaskMove.SUCCEED): TaskState.SUCCEEDED,
    (TaskState.PENDING, TaskMove.FAIL): TaskState.FAILED,
    (TaskState.PENDING, TaskMove.BACK_OFF): TaskState.PENDING,
    (TaskState.PENDING, TaskMove.CANCEL): TaskState.CANCELLED,
    (TaskState.PENDING, TaskMove.CLAIM): TaskState.PENDING,
    (TaskState.DISPATCHED, TaskMove.AWAIT): TaskState.DISPATCHED,
    (TaskState.DISPATCHED, TaskMove.EXTEND): TaskState.DISPATCHED,
    (TaskState.DISPATCHED, TaskMove.REQUEUE): TaskState.PENDING,
    (TaskState.DISPATCHED, TaskMove.SUCCEED): TaskState.SUCCEEDED,
    (TaskState.DISPATCHED, TaskMove.FAIL): TaskState.FAILED,
    (TaskState.DISPATCHED, TaskMove.TIME_OUT): TaskState.TIMED_OUT,
    (TaskState.DISPATCHED, TaskMove.BACK_OFF): TaskState.PENDING,
    (TaskState.DISPATCHED, TaskMove.CANCEL): TaskState.CANCELLED,
    (TaskState.DISPATCHED, TaskMove.CLAIM): TaskState.DISPATCHED,
    (TaskState.FAILED, TaskMove.RETRY): TaskState.PENDING,
    (TaskState.TIMED_OUT, TaskMove.RETRY): TaskState.PENDING,
    (TaskState.CANCELLED, TaskMove.RETRY): TaskState.PENDING,
}


class IllegalMove(ValueError):
    """A move that TASK_TRANSITIONS does not allow from the task's state."""


def next_task_state(state: TaskState, move: TaskMove) -> TaskState:
    """The state `move` leads to from `state`, or IllegalMove."""
    try:
        return TASK_TRANSITIONS[(state, move)]
    except KeyError:
        raise IllegalMove(f"cannot {move} a task that is {state}") from None


class Outcome(StrEnum):
    """What a report says about one attempt."""

    SUCCEEDED = "succeeded"
    FAILED = "failed"
    TIMED_OUT = "timed_out"


OUTCOME_MOVES = {
    Outcome.SUCCEEDED: TaskMove.SUCCEED,
    Outcome.FAILED: TaskMove.FAIL,
    Outcome.TIMED_OUT: TaskMove.TIME_OUT,
}


@dataclass(frozen=True, slots=True)
class Settle:
    """Apply the report: the task finishes in `state` and the barrier hears of it."""

    state: TaskState


@dataclass(frozen=True, slots=True)
class Retry:
    """The attempt failed with attempts left: back to pending, not before `not_before`."""

    attempt: int
    not_before: float
    failed_as: TaskState


@dataclass(frozen=True, slots=True)
class Ignore:
    """The report changes nothing; `reason` goes to history."""

    reason: str


Decision = Settle | Retry | Ignore


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    max_attempts: int = 1
    backoff: float = 1.0
    backoff_max: float = 300.0


def decide_report(
    state: TaskState,
    attempt: int,
    reported_attempt: int,
    outcome: Outcome,
    policy: RetryPolicy,
    now: float,
    rng: random.Random,
) -> Decision:
    """What a report of `outcome` for `reported_attempt` does to a task in `state`."""
    if state.finished:
        return Ignore(f"task already {state}")
    if reported_attempt != attempt:
        return Ignore(f"report for attempt {reported_attempt}, task is on attempt {attempt}")
    if (state, OUTCOME_MOVES[outcome]) not in TASK_TRANSITIONS:
        return Ignore(f"task is {state}, not dispatched")
    finished = next_task_state(state, OUTCOME_MOVES[outcome])
    if outcome is Outcome.SUCCEEDED or attempt >= policy.max_attempts:
        return Settle(finished)
    delay = backoff_delay(attempt, policy.backoff, policy.backoff_max, rng)
    return Retry(attempt=attempt + 1, not_before=now + delay, failed_as=finished)


def backoff_delay(attempt: int, base: float, cap: float, rng: random.Random) -> float:
    """Full-jitter exponential backoff after `attempt` failed: uniform in [0, min(cap, base*2^(n-1))].

    Full jitter spreads retries of a fanned-out step so they do not hit a recovering
    service all at once.
    """
    ceiling = min(cap, base * (2 ** max(0, attempt - 1)))
    return rng.uniform(0.0, ceiling)


class RunState(StrEnum):
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def finished(self) -> bool:
        return self is not RunState.RUNNING


class RunMove(StrEnum):
    COMPLETE = "complete"
    FAIL = "fail"
    CANCEL = "cancel"
    RETRY = "retry"


RUN_TRANSITIONS: dict[tuple[RunState, RunMove], RunState] = {
    (RunState.RUNNING, RunMove.COMPLETE): RunState.SUCCEEDED,
    (RunState.RUNNING, RunMove.FAIL): RunState.FAILED,
    (RunState.RUNNING, RunMove.CANCEL): RunState.CANCELLED,
    (RunState.FAILED, RunMove.RETRY): RunState.RUNNING,
    (RunState.CANCELLED, RunMove.RETRY): RunState.RUNNING,
}


def next_run_state(state: RunState, move: RunMove) -> RunState:
    """The state `move` leads to from `state`, or IllegalMove."""
    try:
        return RUN_TRANSITIONS[(state, move)]
    except KeyError:
        raise IllegalMove(f"cannot {move} a run that is {state}") from None
