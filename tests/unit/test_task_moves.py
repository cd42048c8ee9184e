"""The task transition table, pinned by behaviour: random event sequences through task_moves.

A driver plays what the engine does for each event (dispatch, hand-off, heartbeat, restart,
reports for this or another attempt, cancel, operator retry): reports go through
`decide_report`, everything else through the `task_moves` builder, which refuses a move the
table does not allow. The properties hold over every sequence hypothesis finds.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from orchestrator import task_moves
from orchestrator.records import Task
from orchestrator.states import (
    TASK_TRANSITIONS,
    Ignore,
    IllegalMove,
    Outcome,
    Retry,
    RetryPolicy,
    TaskMove,
    TaskState,
    decide_report,
)
from orchestrator.task_moves import TaskWrite

POLICY = RetryPolicy(max_attempts=3, backoff=1.0, backoff_max=10.0)

EVENTS = st.one_of(
    st.tuples(st.just("dispatch")),
    st.tuples(st.just("hand_off")),
    st.tuples(st.just("heartbeat")),
    st.tuples(st.just("restart")),
    st.tuples(st.just("handoff_failed")),
    st.tuples(st.just("report"), st.sampled_from(list(Outcome)), st.integers(-1, 1)),
    st.tuples(st.just("cancel")),
    st.tuples(st.just("operator_retry")),
    st.tuples(st.just("claim")),
)


FRESH = Task("tsk_1", "run_1", "step", "", None, queued_at=1000.0)  # as a step creates it


@dataclass
class Life:
    """One task driven through events; what happened to it, for the properties."""

    task: Task = field(default_factory=lambda: FRESH)
    now: float = 1000.0
    rng: random.Random = field(default_factory=lambda: random.Random(0))  # noqa: S311 - jitter
    writes: list[TaskWrite] = field(default_factory=list)
    refused: list[tuple[TaskState, str]] = field(default_factory=list)
    settled_attempts: list[int] = field(default_factory=list)

    def play(self, event: tuple[object, ...]) -> None:
        self.now += 1.0
        kind = str(event[0])
        try:
            write = self._write(kind, event)
        except IllegalMove:
            self.refused.append((self.task.state, kind))
            return
        if write is None:
            return
        assert (write.expected_state, write.expected_attempt) == (
            self.task.state,
            self.task.attempt,
        )
        assert (write.expected_state, write.move) in TASK_TRANSITIONS
        self.writes.append(write)
        if write.task.state.finished and not self.task.state.finished:
            self.settled_attempts.append(write.task.attempt)
        self.task = write.task

    def _write(self, kind: str, event: tuple[object, ...]) -> TaskWrite | None:
        task, now = self.task, self.now
        if kind == "dispatch":
            return task_moves.dispatch(task, now, timeout=30.0)
        if kind == "hand_off":
            return task_moves.await_callback(task, now, window=60.0)
        if kind == "heartbeat":
            return task_moves.extend(task, now)
        if kind == "restart":
            return task_moves.requeue(task, now)
        if kind == "handoff_failed":
            return task_moves.requeue(
                task, now, not_before=now + 5.0, tries=task.dispatch_tries + 1
            )
        if kind == "cancel":
            return task_moves.cancel(task, now, "run cancelled")
        if kind == "operator_retry":
            return task_moves.retry(task, now)
        if kind == "claim":
            return task_moves.claim(task, "rep_other")
        outcome, offset = event[1], event[2]
        assert isinstance(outcome, Outcome)
        assert isinstance(offset, int)
        decision = decide_report(
            task.state, task.attempt, task.attempt + offset, outcome, POLICY, now, self.rng
        )
        if isinstance(decision, Ignore):
            return None
        if isinstance(decision, Retry):
            return task_moves.back_off(task, decision.attempt, decision.not_before, now, "boom")
        return task_moves.settle(task, outcome, now, output={"ok": True})


def lives(events: list[tuple[object, ...]]) -> Life:
    life = Life()
    for event in events:
        life.play(event)
    return life


@settings(max_examples=300, deadline=None)
@given(st.lists(EVENTS, max_size=40))
def test_every_write_is_a_move_of_the_table(events: list[tuple[object, ...]]) -> None:
    """Each write starts from the task as it was and follows a (state, move) of the table."""
    life = lives(events)
    for before, after in zip(
        [FRESH, *[w.task for w in life.writes]],
        life.writes,
        strict=False,
    ):
        assert after.expected_state is before.state
        assert TASK_TRANSITIONS[(after.expected_state, after.move)] is after.task.state


@settings(max_examples=300, deadline=None)
@given(st.lists(EVENTS, max_size=40))
def test_a_finished_task_changes_only_by_an_operator_retry(
    events: list[tuple[object, ...]],
) -> None:
    """From a finished state, every event but an operator retry is refused or ignored."""
    life = lives(events)
    for write in life.writes:
        if write.expected_state.finished:
            assert write.move is TaskMove.RETRY
            assert write.expected_state is not TaskState.SUCCEEDED, "success is final"
    for state, kind in life.refused:
        if state.finished and kind == "operator_retry":
            assert state is TaskState.SUCCEEDED


@settings(max_examples=300, deadline=None)
@given(st.lists(EVENTS, max_size=40))
def test_attempts_only_grow_by_one_through_backoff_or_retry(
    events: list[tuple[object, ...]],
) -> None:
    """The attempt never goes back; it goes up by exactly one, on a back-off or an operator retry."""
    life = lives(events)
    for write in life.writes:
        if write.task.attempt != write.expected_attempt:
            assert write.task.attempt == write.expected_attempt + 1
            assert write.move in (TaskMove.BACK_OFF, TaskMove.RETRY)


@settings(max_examples=300, deadline=None)
@given(st.lists(EVENTS, max_size=40))
def test_each_attempt_settles_at_most_once(events: list[tuple[object, ...]]) -> None:
    """However reports, duplicates and late ones interleave, an attempt finishes at most once."""
    life = lives(events)
    assert len(life.settled_attempts) == len(set(life.settled_attempts))


@settings(max_examples=300, deadline=None)
@given(st.lists(EVENTS, max_size=40))
def test_the_clocks_of_a_task_follow_its_state(events: list[tuple[object, ...]]) -> None:
    """Dispatched: started and not finished. Finished: a finish time and no deadline. Pending:
    not started, queued since the last time it became ready."""
    life = lives(events)
    for write in life.writes:
        task = write.task
        if task.state is TaskState.DISPATCHED:
            assert task.started_at is not None
            assert task.finished_at is None
        elif task.state.finished:
            assert task.finished_at is not None
            assert task.due_at is None
        else:
            assert task.started_at is None
            if write.move is not TaskMove.CANCEL:
                assert task.queued_at is not None


@settings(max_examples=200, deadline=None)
@given(st.lists(EVENTS, max_size=40))
def test_a_requeue_keeps_the_attempt_and_its_idempotency_key(
    events: list[tuple[object, ...]],
) -> None:
    """An interrupted or undelivered attempt runs again as the same attempt (at-least-once)."""
    for write in lives(events).writes:
        if write.move is TaskMove.REQUEUE:
            assert write.task.attempt == write.expected_attempt
            assert write.task.state is TaskState.PENDING


def test_random_sequences_reach_every_move_of_the_table() -> None:
    """The events above exercise every (state, move) the table allows: none is dead."""
    seen: set[tuple[TaskState, TaskMove]] = set()
    rng = random.Random(7)  # noqa: S311 - reproducible sequences
    kinds: list[tuple[object, ...]] = [
        ("dispatch",), ("hand_off",), ("heartbeat",), ("restart",), ("handoff_failed",),
        ("cancel",), ("operator_retry",), ("claim",),
        *[("report", outcome, offset) for outcome in Outcome for offset in (-1, 0, 0, 0, 1)],
    ]  # fmt: skip
    for _ in range(400):
        life = Life()
        for _ in range(30):
            life.play(rng.choice(kinds))
        seen |= {(w.expected_state, w.move) for w in life.writes}
    assert seen == set(TASK_TRANSITIONS)


@pytest.mark.parametrize("state", [TaskState.SUCCEEDED, TaskState.DISPATCHED])
def test_a_move_outside_the_table_raises(state: TaskState) -> None:
    """Asking for a move the table does not allow is a bug: IllegalMove names it."""
    task = Task("tsk_1", "run_1", "step", "", None, state=state)
    with pytest.raises(IllegalMove, match=f"cannot retry a task that is {state}"):
        task_moves.retry(task, 0.0)
