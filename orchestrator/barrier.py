"""The join barrier of a step as a pure state machine: advance(barrier, arrival, now).

Rules:

* A barrier counts the finished tasks of one step: `succeeded`, and `failed` (failed,
  timed out or cancelled). `outstanding` = expected - succeeded - failed.
* `required` successes come from the policy: all -> expected, any -> 1, quorum -> k or
  ceil(p% of expected), never more than expected. A step with no items opens at once.
* It opens when succeeded >= required. Outstanding tasks are then cancelled: the join
  proceeds without them and reports them as not arrived.
* It fails when required can no longer be reached: at once under `fail_fast` (outstanding
  tasks are cancelled), or once nothing is outstanding under `collect` (every sibling's
  result is kept, so a retry re-runs only what failed).
* At the step's deadline a waiting barrier opens with what has arrived (`proceed`) or fails
  (`fail`), and its outstanding tasks are cancelled.
* An open or failed barrier never changes again: later arrivals are ignored, so it opens
  or fails exactly once whatever the order or duplication of arrivals.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from enum import StrEnum

from orchestrator.model import JoinPolicy


class BarrierStatus(StrEnum):
    WAITING = "waiting"
    OPEN = "open"
    FAILED = "failed"


class Arrival(StrEnum):
    """What the barrier hears: a task finished well or badly, or the step's deadline passed."""

    SUCCEEDED = "succeeded"
    FAILED = "failed"
    DEADLINE = "deadline"


class Effect(StrEnum):
    OPENED = "opened"
    FAILED = "failed"
    CANCEL_OUTSTANDING = "cancel_outstanding"
    IGNORED = "ignored"


@dataclass(frozen=True, slots=True)
class Barrier:
    run_id: str
    step: str
    expected: int
    required: int
    policy: JoinPolicy
    succeeded: int = 0
    failed: int = 0
    status: BarrierStatus = BarrierStatus.WAITING
    deadline_at: float | None = None
    decided_at: float | None = None
    reason: str | None = None

    @property
    def outstanding(self) -> int:
        return self.expected - self.succeeded - self.failed


def create(
    run_id: str, step: str, expected: int, policy: JoinPolicy, now: float, deadline_at: float | None
) -> tuple[Barrier, tuple[Effect, ...]]:
    """A new barrier for `expected` tasks; it is already open when nothing is required."""
    barrier = Barrier(
        run_id=run_id,
        step=step,
        expected=expected,
        required=policy.required(expected),
        policy=policy,
        deadline_at=deadline_at,
    )
    if barrier.required == 0:
        return _open(barrier, now, "nothing to wait for"), (Effect.OPENED,)
    return barrier, ()


def advance(barrier: Barrier, arrival: Arrival, now: float) -> tuple[Barrier, tuple[Effect, ...]]:
    """The barrier after `arrival`, and what the caller must do about it."""
    if barrier.status is not BarrierStatus.WAITING:
        return barrier, (Effect.IGNORED,)
    if arrival is Arrival.DEADLINE:
        return _on_deadline(barrier, now)
    if barrier.outstanding <= 0:
        return barrier, (Effect.IGNORED,)
    if arrival is Arrival.SUCCEEDED:
        barrier = replace(barrier, succeeded=barrier.succeeded + 1)
    else:
        barrier = replace(barrier, failed=barrier.failed + 1)
    return _decide(barrier, now)


def _decide(barrier: Barrier, now: float) -> tuple[Barrier, tuple[Effect, ...]]:
    if barrier.succeeded >= barrier.required:
        return _open(barrier, now, "required successes arrived"), _with_cancel(
            barrier, Effect.OPENED
        )
    reachable = barrier.succeeded + barrier.outstanding >= barrier.required
    if reachable:
        return barrier, ()
    if barrier.policy.on_failure == "fail_fast":
        reason = (
            f"{barrier.failed} failed; {barrier.required} required successes can no longer arrive"
        )
        return _fail(barrier, now, reason), _with_cancel(barrier, Effect.FAILED)
    if barrier.outstanding == 0:
        reason = f"{barrier.succeeded} of {barrier.required} required successes arrived"
        return _fail(barrier, now, reason), (Effect.FAILED,)
    return barrier, ()


def _on_deadline(barrier: Barrier, now: float) -> tuple[Barrier, tuple[Effect, ...]]:
    if barrier.policy.on_deadline == "proceed":
        reason = f"deadline passed; proceeding with {barrier.succeeded} of {barrier.expected}"
        return _open(barrier, now, reason), _with_cancel(barrier, Effect.OPENED)
    reason = f"deadline passed with {barrier.succeeded} of {barrier.required} required successes"
    return _fail(barrier, now, reason), _with_cancel(barrier, Effect.FAILED)


def _with_cancel(barrier: Barrier, effect: Effect) -> tuple[Effect, ...]:
    if barrier.outstanding > 0:
        return (effect, Effect.CANCEL_OUTSTANDING)
    return (effect,)


def _open(barrier: Barrier, now: float, reason: str) -> Barrier:
    return replace(barrier, status=BarrierStatus.OPEN, decided_at=now, reason=reason)


def _fail(barrier: Barrier, now: float, reason: str) -> Barrier:
    return replace(barrier, status=BarrierStatus.FAILED, decided_at=now, reason=reason)
