"""A run's attempts from its task records and, for retried tasks, their history."""

from __future__ import annotations

from typing import Any

from orchestrator.attempts import attempts_of, needs_history, paused_of, step_graph
from orchestrator.records import HistoryEntry, Task
from orchestrator.states import TaskState
from orchestrator.timing import Attempt, Rate

RUN = "run_1"


def entry(type: str, at: float, task: str | None = "tsk_1", **data: Any) -> HistoryEntry:
    return HistoryEntry(type, at, RUN, task, "fetch", data)


def task(**changes: Any) -> Task:
    base = Task("tsk_1", RUN, "fetch", "", None, state=TaskState.SUCCEEDED)
    return base.replace(**changes)


def test_a_task_never_retried_is_its_record_alone() -> None:
    """One attempt: queued, started and finished as its record says; no history is read."""
    done = task(queued_at=1.0, started_at=1.5, finished_at=2.0)
    assert not needs_history(done)
    found = attempts_of([done], [])
    assert found.attempts == [Attempt("tsk_1", "fetch", "fetch", 1, 1.0, 1.5, 2.0)]
    assert (found.paused, found.earlier) == (0.0, {})


def test_an_automatic_retry_replays_the_failed_attempt_and_its_backoff() -> None:
    """The failed attempt ran from its dispatch to its failure; the retry's wait holds the
    backoff that task_retry_scheduled announced."""
    history = [
        entry("step_started", 0.0, task=None, tasks=1),
        entry("task_dispatched", 0.1, attempt=1),
        entry("task_attempt_failed", 1.1, attempt=1, error="boom"),
        entry("task_retry_scheduled", 1.1, attempt=2, not_before=3.1),
        entry("task_dispatched", 3.2, attempt=2),
    ]
    retried = task(attempt=2, queued_at=1.1, started_at=3.25, finished_at=4.0)
    found = attempts_of([retried], history)
    first = Attempt("tsk_1", "fetch", "fetch", 1, 0.0, 0.1, 1.1, failed=True)
    final = Attempt("tsk_1", "fetch", "fetch", 2, 1.1, 3.25, 4.0, backoff=2.0)
    assert found.attempts == [first, final]
    assert found.earlier == {"tsk_1": [first]}


def test_an_operator_retry_takes_the_earlier_run_from_its_final_entry_and_pauses_the_run() -> None:
    """task_failed carries the run's duration; the hours the run stood failed are a pause."""
    history = [
        entry("step_started", 0.0, task=None),
        entry("task_dispatched", 1.0, attempt=1),
        entry("task_failed", 2.0, attempt=1, duration=0.5, waited=1.5),
        entry("run_failed", 2.0, task=None),
        entry("task_retried", 7202.0, attempt=2, was="failed"),
        entry("run_retried", 7202.0, task=None),
        entry("task_dispatched", 7202.1, attempt=2),
    ]
    retried = task(attempt=2, queued_at=7202.0, started_at=7202.1, finished_at=7203.0)
    found = attempts_of([retried], history)
    assert found.attempts[0] == Attempt("tsk_1", "fetch", "fetch", 1, 0.0, 1.5, 2.0, failed=True)
    assert found.attempts[1].queued == 7202.0
    assert found.paused == 7200.0


def test_a_resent_hand_off_waits_from_the_first_queue_with_the_retry_after() -> None:
    """Two hand-offs that did not get through: the attempt waited from its creation, and the
    services' Retry-After is its backoff; the failed sends are not run time."""
    history = [
        entry("step_started", 0.0, task=None),
        entry("task_dispatched", 0.0, attempt=1),
        entry("task_dispatch_failed", 0.1, attempt=1, retry_at=0.5, tries=1),
        entry("task_dispatched", 0.5, attempt=1),
        entry("task_dispatch_failed", 0.6, attempt=1, retry_at=1.0, tries=2),
        entry("task_dispatched", 1.0, attempt=1),
    ]
    sent = task(dispatch_tries=2, queued_at=0.6, started_at=1.0, finished_at=3.0)
    assert needs_history(sent)
    (only,) = attempts_of([sent], history).attempts
    assert (only.queued, only.started, only.backoff) == (0.0, 1.0, 0.8)


def test_attempts_that_never_started_are_not_spans() -> None:
    """A task cancelled while pending has no attempt; nor has an earlier attempt cancelled
    before its dispatch."""
    history = [
        entry("step_started", 0.0, task=None),
        entry("task_cancelled", 1.0, reason="run cancelled"),
        entry("task_retried", 5.0, attempt=2),
    ]
    pending_cancelled = task(state=TaskState.CANCELLED, queued_at=0.0, finished_at=1.0)
    assert attempts_of([pending_cancelled], []).attempts == []
    retried = task(attempt=2, queued_at=5.0, started_at=5.0, finished_at=6.0)
    assert [a.number for a in attempts_of([retried], history).attempts] == [2]


def test_pruned_history_leaves_the_current_attempt() -> None:
    """Retention pruned the details: the current attempt still counts, as its record says."""
    retried = task(attempt=3, queued_at=4.0, started_at=4.5, finished_at=5.0)
    (only,) = attempts_of([retried], []).attempts
    assert (only.number, only.queued, only.backoff) == (3, 4.0, 0.0)


def test_a_failed_final_attempt_is_marked_failed() -> None:
    """A task that ended failed (or timed out) shows as a failed attempt."""
    failed = task(state=TaskState.TIMED_OUT, queued_at=0.0, started_at=0.0, finished_at=9.0)
    assert attempts_of([failed], []).attempts[0].failed


def test_pauses_add_up_over_several_retries() -> None:
    """Each stop (failed, cancelled) until the next retry is a pause; a stop never retried is not."""
    run_level = [
        entry("run_failed", 10.0, task=None),
        entry("run_retried", 20.0, task=None),
        entry("run_cancelled", 30.0, task=None),
        entry("run_retried", 35.0, task=None),
        entry("run_failed", 40.0, task=None),
    ]
    assert paused_of(run_level) == 15.0


def test_step_graph_reads_needs_and_rates_from_the_stored_spec() -> None:
    """A run's stored spec gives the needs of each step and the rate limits that pace it."""
    spec = {
        "steps": {
            "a": {"needs": [], "rate": {"count": 5, "per": 1.0}},
            "b": {"needs": ["a"], "rate": None},
        }
    }
    assert step_graph(spec) == ({"a": [], "b": ["a"]}, {"a": Rate(5, 1.0)})


def test_a_restart_requeue_drops_the_interrupted_dispatch() -> None:
    """An attempt re-dispatched after a restart ran from its last dispatch, not its first."""
    history = [
        entry("step_started", 0.0, task=None),
        entry("task_dispatched", 0.5, attempt=1),
        entry("task_requeued", 3.0, attempt=1, reason="restarted"),
        entry("task_dispatched", 3.1, attempt=1),
        entry("task_attempt_failed", 4.0, attempt=1, error="boom"),
    ]
    retried = task(attempt=2, queued_at=4.0, started_at=4.0, finished_at=5.0)
    first = attempts_of([retried], history).attempts[0]
    assert (first.queued, first.started, first.finished) == (0.0, 3.1, 4.0)


def test_the_current_attempt_comes_from_its_record_even_when_history_ends_it() -> None:
    """A retried task that failed again: its last attempt is its record, not a second copy."""
    history = [
        entry("step_started", 0.0, task=None),
        entry("task_dispatched", 0.0, attempt=1),
        entry("task_attempt_failed", 1.0, attempt=1),
        entry("task_dispatched", 1.0, attempt=2),
        entry("task_failed", 2.0, attempt=2, duration=1.0, waited=0.0),
    ]
    failed = task(state=TaskState.FAILED, attempt=2, queued_at=1.0, started_at=1.0, finished_at=2.0)
    found = attempts_of([failed], history).attempts
    assert [(a.number, a.failed) for a in found] == [(1, True), (2, True)]
