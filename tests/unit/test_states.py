"""Task and run state machines: every (state, move) pair, report decisions and retry backoff."""

from __future__ import annotations

import itertools
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from orchestrator.states import (
    FINISHED_TASK_STATES,
    RUN_TRANSITIONS,
    Ignore,
    IllegalMove,
    Outcome,
    Retry,
    RetryPolicy,
    RunMove,
    RunState,
    Settle,
    TaskMove,
    TaskState,
    backoff_delay,
    decide_report,
    next_run_state,
    next_task_state,
)


def seeded(seed: int) -> random.Random:
    """A seeded generator: reproducible jitter in tests, never used for secrets."""
    return random.Random(seed)  # noqa: S311 - reproducibility, not security


# The legal run moves, written out from the rules at the top of states.py. (Task moves are
# pinned by behaviour, over random event sequences, in test_task_moves.py.)
LEGAL_RUN_MOVES = {
    (RunState.RUNNING, RunMove.COMPLETE): RunState.SUCCEEDED,
    (RunState.RUNNING, RunMove.FAIL): RunState.FAILED,
    (RunState.RUNNING, RunMove.CANCEL): RunState.CANCELLED,
    (RunState.FAILED, RunMove.RETRY): RunState.RUNNING,
    (RunState.CANCELLED, RunMove.RETRY): RunState.RUNNING,
}
RUN_PAIRS = list(itertools.product(RunState, RunMove))


def test_run_table_is_the_documented_one() -> None:
    """RUN_TRANSITIONS holds exactly the legal run moves the rules describe."""
    assert RUN_TRANSITIONS == LEGAL_RUN_MOVES


@pytest.mark.parametrize(("state", "move"), RUN_PAIRS, ids=[f"{s}-{m}" for s, m in RUN_PAIRS])
def test_every_run_move(state: RunState, move: RunMove) -> None:
    """A legal run move gives the table's state; any other raises IllegalMove naming both."""
    if (state, move) in LEGAL_RUN_MOVES:
        assert next_run_state(state, move) is LEGAL_RUN_MOVES[(state, move)]
    else:
        with pytest.raises(IllegalMove, match=f"cannot {move} a run that is {state}"):
            next_run_state(state, move)


@pytest.mark.parametrize("state", sorted(FINISHED_TASK_STATES))
@pytest.mark.parametrize("move", [m for m in TaskMove if m is not TaskMove.RETRY])
def test_finished_task_only_leaves_by_retry(state: TaskState, move: TaskMove) -> None:
    """A finished task refuses every move but an operator retry."""
    with pytest.raises(IllegalMove):
        next_task_state(state, move)


def test_succeeded_task_cannot_be_retried() -> None:
    """A task that succeeded is final even for an operator retry."""
    with pytest.raises(IllegalMove):
        next_task_state(TaskState.SUCCEEDED, TaskMove.RETRY)


def test_finished_flags() -> None:
    """Exactly succeeded, failed, timed_out and cancelled tasks, and every non-running run, are finished."""
    assert {s for s in TaskState if s.finished} == {
        TaskState.SUCCEEDED,
        TaskState.FAILED,
        TaskState.TIMED_OUT,
        TaskState.CANCELLED,
    }
    assert {s for s in RunState if s.finished} == {
        RunState.SUCCEEDED,
        RunState.FAILED,
        RunState.CANCELLED,
    }


def test_illegal_move_is_a_value_error() -> None:
    """IllegalMove is a ValueError, so callers that guard on ValueError catch it."""
    assert issubclass(IllegalMove, ValueError)


# --- decide_report ------------------------------------------------------------------------------

THREE_TRIES = RetryPolicy(max_attempts=3, backoff=2.0, backoff_max=300.0)
NOW = 1000.0


def decide(
    state: TaskState,
    attempt: int,
    reported: int,
    outcome: Outcome,
    policy: RetryPolicy = THREE_TRIES,
    seed: int = 0,
) -> Settle | Retry | Ignore:
    return decide_report(state, attempt, reported, outcome, policy, NOW, seeded(seed))


@pytest.mark.parametrize("attempt", [1, 2, 3])
def test_success_settles(attempt: int) -> None:
    """A success for the dispatched attempt settles the task as succeeded, on any attempt."""
    assert decide(TaskState.DISPATCHED, attempt, attempt, Outcome.SUCCEEDED) == Settle(
        TaskState.SUCCEEDED
    )


@pytest.mark.parametrize(
    ("outcome", "failed_as"),
    [(Outcome.FAILED, TaskState.FAILED), (Outcome.TIMED_OUT, TaskState.TIMED_OUT)],
)
@pytest.mark.parametrize("attempt", [1, 2])
@pytest.mark.parametrize("seed", range(20))
def test_failure_with_attempts_left_retries(
    outcome: Outcome, failed_as: TaskState, attempt: int, seed: int
) -> None:
    """A failed attempt with attempts left retries as attempt + 1, not before now + backoff."""
    decision = decide(TaskState.DISPATCHED, attempt, attempt, outcome, seed=seed)
    assert isinstance(decision, Retry)
    assert decision.attempt == attempt + 1
    assert decision.failed_as is failed_as
    ceiling = THREE_TRIES.backoff * 2 ** (attempt - 1)
    assert NOW <= decision.not_before <= NOW + ceiling


def test_retry_not_before_is_jittered() -> None:
    """Different random draws give different retry times, so a fanned-out step does not retry in lockstep."""
    times = set()
    for seed in range(10):
        decision = decide(TaskState.DISPATCHED, 1, 1, Outcome.FAILED, seed=seed)
        assert isinstance(decision, Retry)
        times.add(decision.not_before)
    assert len(times) == 10


@pytest.mark.parametrize(
    ("outcome", "state"),
    [(Outcome.FAILED, TaskState.FAILED), (Outcome.TIMED_OUT, TaskState.TIMED_OUT)],
)
def test_last_attempt_failure_settles(outcome: Outcome, state: TaskState) -> None:
    """The last attempt's failure is final and reaches the barrier."""
    assert decide(TaskState.DISPATCHED, 3, 3, outcome) == Settle(state)


def test_single_attempt_policy_settles_first_failure() -> None:
    """Without retries the first failure is final."""
    policy = RetryPolicy(max_attempts=1)
    assert decide(TaskState.DISPATCHED, 1, 1, Outcome.FAILED, policy) == Settle(TaskState.FAILED)


def test_attempt_past_the_limit_settles() -> None:
    """An attempt beyond max_attempts (after an operator retry) settles on failure instead of retrying."""
    assert decide(TaskState.DISPATCHED, 4, 4, Outcome.FAILED) == Settle(TaskState.FAILED)


@pytest.mark.parametrize("reported", [1, 3])
@pytest.mark.parametrize("outcome", list(Outcome))
def test_report_for_another_attempt_is_ignored(reported: int, outcome: Outcome) -> None:
    """A report for any attempt but the one in flight is ignored with both attempt numbers."""
    decision = decide(TaskState.DISPATCHED, 2, reported, outcome)
    assert isinstance(decision, Ignore)
    assert str(reported) in decision.reason
    assert "attempt 2" in decision.reason


@pytest.mark.parametrize("state", sorted(FINISHED_TASK_STATES))
@pytest.mark.parametrize("outcome", list(Outcome))
def test_finished_task_ignores_reports(state: TaskState, outcome: Outcome) -> None:
    """A finished task ignores every report, even one for its current attempt."""
    decision = decide(state, 1, 1, outcome)
    assert isinstance(decision, Ignore)
    assert str(state) in decision.reason


def test_pending_task_ignores_a_timeout() -> None:
    """A pending task has no deadline running, so a timeout report for it is ignored."""
    decision = decide(TaskState.PENDING, 2, 2, Outcome.TIMED_OUT)
    assert isinstance(decision, Ignore)
    assert "pending" in decision.reason


@pytest.mark.parametrize("outcome", [Outcome.SUCCEEDED, Outcome.FAILED])
def test_pending_attempt_accepts_its_own_result(outcome: Outcome) -> None:
    """A result for the current attempt counts while it waits to be re-dispatched (hand-off in doubt)."""
    decision = decide(TaskState.PENDING, 2, 2, outcome)
    assert not isinstance(decision, Ignore)


@pytest.mark.parametrize("outcome", [Outcome.SUCCEEDED, Outcome.FAILED])
def test_pending_task_ignores_another_attempts_result(outcome: Outcome) -> None:
    """A pending task still ignores a result for an attempt it is not on."""
    assert isinstance(decide(TaskState.PENDING, 2, 1, outcome), Ignore)


# --- backoff ------------------------------------------------------------------------------------


@settings(max_examples=200, deadline=None)
@given(
    attempt=st.integers(1, 40),
    base=st.floats(0.001, 100.0),
    cap=st.floats(0.001, 1000.0),
    seed=st.integers(0, 2**32),
)
def test_backoff_within_bounds(attempt: int, base: float, cap: float, seed: int) -> None:
    """The delay after attempt n lies in [0, min(cap, base * 2^(n-1))]."""
    delay = backoff_delay(attempt, base, cap, seeded(seed))
    assert 0.0 <= delay <= min(cap, base * 2 ** (attempt - 1))


def test_backoff_spans_the_whole_jitter_range() -> None:
    """Full jitter: over many draws the delay covers the range from near 0 to near its ceiling."""
    rng = seeded(42)
    delays = [backoff_delay(3, 1.0, 300.0, rng) for _ in range(2000)]
    assert min(delays) < 0.1
    assert 3.9 < max(delays) <= 4.0


def test_backoff_is_capped() -> None:
    """A late attempt never waits longer than the cap, however large base * 2^(n-1) grows."""
    rng = seeded(7)
    delays = [backoff_delay(30, 1.0, 10.0, rng) for _ in range(2000)]
    assert max(delays) <= 10.0
    assert max(delays) > 9.9


def test_backoff_grows_with_attempts() -> None:
    """Each further attempt doubles the ceiling of the delay until the cap."""
    ceilings = []
    for attempt in (1, 2, 3, 4):
        rng = seeded(1)
        ceilings.append(max(backoff_delay(attempt, 1.0, 300.0, rng) for _ in range(2000)))
    for lower, higher in itertools.pairwise(ceilings):
        assert higher > 1.9 * lower


def test_backoff_is_deterministic_for_a_seed() -> None:
    """The same seeded generator gives the same delay: the clock and randomness are inputs."""
    assert backoff_delay(2, 1.5, 60.0, seeded(3)) == backoff_delay(2, 1.5, 60.0, seeded(3))
