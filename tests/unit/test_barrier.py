"""The join barrier: every rule at the top of orchestrator/barrier.py, by table and by property."""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field
from fractions import Fraction

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from orchestrator import barrier as b
from orchestrator.barrier import Arrival, BarrierStatus, Effect
from orchestrator.model import JoinPolicy
from orchestrator.states import (
    Ignore,
    Outcome,
    Retry,
    RetryPolicy,
    Settle,
    TaskMove,
    TaskState,
    decide_report,
    next_task_state,
)


def seeded(seed: int) -> random.Random:
    """A seeded generator: reproducible jitter in tests, never used for secrets."""
    return random.Random(seed)  # noqa: S311 - reproducibility, not security


S, F, D = Arrival.SUCCEEDED, Arrival.FAILED, Arrival.DEADLINE
OPENED, FAILED, CANCEL, IGNORED = (
    Effect.OPENED,
    Effect.FAILED,
    Effect.CANCEL_OUTSTANDING,
    Effect.IGNORED,
)
WAITING, OPEN, FAILED_STATUS = BarrierStatus.WAITING, BarrierStatus.OPEN, BarrierStatus.FAILED


def feed(
    policy: JoinPolicy, expected: int, arrivals: list[Arrival]
) -> tuple[b.Barrier, list[tuple[Effect, ...]]]:
    """Create a barrier and feed it `arrivals`, one per second; return it and every effect tuple."""
    barrier, effects = b.create("run_1", "step", expected, policy, now=0.0, deadline_at=None)
    history = [effects]
    for now, arrival in enumerate(arrivals, start=1):
        barrier, effects = b.advance(barrier, arrival, float(now))
        history.append(effects)
    return barrier, history


ALL = JoinPolicy(mode="all")
ALL_COLLECT = JoinPolicy(mode="all", on_failure="collect")
ANY = JoinPolicy(mode="any")
ANY_COLLECT = JoinPolicy(mode="any", on_failure="collect")
Q2 = JoinPolicy(mode="quorum", quorum_count=2)
Q2_COLLECT = JoinPolicy(mode="quorum", quorum_count=2, on_failure="collect")
Q50 = JoinPolicy(mode="quorum", quorum_percent=50.0)
Q50_COLLECT = JoinPolicy(mode="quorum", quorum_percent=50.0, on_failure="collect")
PROCEED = JoinPolicy(mode="all", on_deadline="proceed")
DEADLINE_FAILS = JoinPolicy(mode="all", on_deadline="fail")

# (policy, expected, arrivals, final status, effects after each arrival, excluding create)
TABLE: dict[str, tuple[JoinPolicy, int, list[Arrival], BarrierStatus, list[tuple[Effect, ...]]]] = {
    "all opens on the last success": (ALL, 3, [S, S, S], OPEN, [(), (), (OPENED,)]),
    "all waits while successes are missing": (ALL, 3, [S, S], WAITING, [(), ()]),
    "all fail_fast fails on the first failure and cancels the rest": (
        ALL, 3, [S, F], FAILED_STATUS, [(), (FAILED, CANCEL)],
    ),
    "all fail_fast failing on the last task cancels nothing": (
        ALL, 2, [S, F], FAILED_STATUS, [(), (FAILED,)],
    ),
    "all collect waits for every sibling before failing": (
        ALL_COLLECT, 3, [F, S, S], FAILED_STATUS, [(), (), (FAILED,)],
    ),
    "all collect never cancels": (
        ALL_COLLECT, 3, [F, F, F], FAILED_STATUS, [(), (), (FAILED,)],
    ),
    "any opens on the first success and cancels the rest": (
        ANY, 3, [F, S], OPEN, [(), (OPENED, CANCEL)],
    ),
    "any fail_fast fails only once no success can arrive": (
        ANY, 3, [F, F, F], FAILED_STATUS, [(), (), (FAILED,)],
    ),
    "any collect opens on a late success": (ANY_COLLECT, 3, [F, F, S], OPEN, [(), (), (OPENED,)]),
    "quorum count opens at k successes and cancels the rest": (
        Q2, 4, [S, F, S], OPEN, [(), (), (OPENED, CANCEL)],
    ),
    "quorum count fail_fast fails once k is out of reach": (
        Q2, 4, [F, F, F], FAILED_STATUS, [(), (), (FAILED, CANCEL)],
    ),
    "quorum count collect fails only when nothing is outstanding": (
        Q2_COLLECT, 4, [F, F, F, S], FAILED_STATUS, [(), (), (), (FAILED,)],
    ),
    "quorum count collect opens early without waiting for the rest": (
        Q2_COLLECT, 4, [F, S, S], OPEN, [(), (), (OPENED, CANCEL)],
    ),
    "quorum count above expected needs every task": (
        JoinPolicy(mode="quorum", quorum_count=5), 3, [S, S, S], OPEN, [(), (), (OPENED,)],
    ),
    "quorum percent rounds up (50% of 5 is 3)": (
        Q50, 5, [S, S, S], OPEN, [(), (), (OPENED, CANCEL)],
    ),
    "quorum percent fail_fast fails once the share is out of reach": (
        Q50, 5, [F, F, F], FAILED_STATUS, [(), (), (FAILED, CANCEL)],
    ),
    "quorum percent collect fails when the last sibling is in": (
        Q50_COLLECT, 4, [F, F, S, F], FAILED_STATUS, [(), (), (), (FAILED,)],
    ),
    "deadline proceed opens with what arrived and cancels the rest": (
        PROCEED, 3, [S, D], OPEN, [(), (OPENED, CANCEL)],
    ),
    "deadline proceed opens even with nothing arrived": (
        PROCEED, 2, [D], OPEN, [(OPENED, CANCEL)],
    ),
    "deadline fail fails and cancels the rest": (
        DEADLINE_FAILS, 3, [S, D], FAILED_STATUS, [(), (FAILED, CANCEL)],
    ),
    "an opened barrier ignores later arrivals and deadlines": (
        ANY, 3, [S, S, F, D], OPEN, [(OPENED, CANCEL), (IGNORED,), (IGNORED,), (IGNORED,)],
    ),
    "a failed barrier ignores later arrivals and deadlines": (
        ALL, 3, [F, S, S, D], FAILED_STATUS, [(FAILED, CANCEL), (IGNORED,), (IGNORED,), (IGNORED,)],
    ),
    "a barrier opened at its deadline ignores the stragglers": (
        PROCEED, 2, [D, S, F], OPEN, [(OPENED, CANCEL), (IGNORED,), (IGNORED,)],
    ),
}  # fmt: skip


@pytest.mark.parametrize(
    ("policy", "expected", "arrivals", "status", "effects"), TABLE.values(), ids=TABLE.keys()
)
def test_barrier_rules(
    policy: JoinPolicy,
    expected: int,
    arrivals: list[Arrival],
    status: BarrierStatus,
    effects: list[tuple[Effect, ...]],
) -> None:
    """Each join rule gives the listed effects after each arrival and ends in the listed status."""
    barrier, history = feed(policy, expected, arrivals)
    assert history[0] == ()
    assert history[1:] == effects
    assert barrier.status is status


@pytest.mark.parametrize(
    ("policy", "expected", "required"),
    [
        (ALL, 4, 4),
        (ANY, 4, 1),
        (Q2, 4, 2),
        (JoinPolicy(mode="quorum", quorum_count=9), 4, 4),
        (JoinPolicy(mode="quorum", quorum_percent=80.0), 10, 8),
        (JoinPolicy(mode="quorum", quorum_percent=1.0), 10, 1),
        (JoinPolicy(mode="quorum", quorum_percent=100.0), 7, 7),
    ],
)
def test_create_takes_required_from_policy(
    policy: JoinPolicy, expected: int, required: int
) -> None:
    """A new barrier waits for the policy's required successes, capped at the step's size."""
    barrier, effects = b.create("run_1", "step", expected, policy, now=0.0, deadline_at=5.0)
    assert (barrier.required, barrier.status, effects) == (required, WAITING, ())
    assert (barrier.succeeded, barrier.failed, barrier.outstanding) == (0, 0, expected)
    assert barrier.deadline_at == 5.0


@pytest.mark.parametrize("policy", [ALL, ANY, Q2, Q50, PROCEED], ids=str)
def test_empty_step_opens_at_create(policy: JoinPolicy) -> None:
    """A step with no items opens at once, whatever the policy, with a single OPENED effect."""
    barrier, effects = b.create("run_1", "step", 0, policy, now=7.0, deadline_at=None)
    assert barrier.status is OPEN
    assert effects == (OPENED,)
    assert barrier.decided_at == 7.0
    assert barrier.reason


@pytest.mark.parametrize("arrival", list(Arrival))
@pytest.mark.parametrize("status", [OPEN, FAILED_STATUS])
def test_decided_barrier_ignores_everything(arrival: Arrival, status: BarrierStatus) -> None:
    """An open or failed barrier answers every arrival with IGNORED and stays exactly as it was."""
    before = b.Barrier(
        run_id="run_1",
        step="step",
        expected=3,
        required=3,
        policy=ALL,
        succeeded=1,
        status=status,
        decided_at=1.0,
        reason="decided",
    )
    after, effects = b.advance(before, arrival, now=9.0)
    assert effects == (IGNORED,)
    assert after == before


def test_arrival_beyond_expected_is_ignored() -> None:
    """A waiting barrier with nothing outstanding does not count an extra arrival."""
    full = b.Barrier(
        run_id="run_1", step="step", expected=2, required=2, policy=ALL_COLLECT, succeeded=2
    )
    for arrival in (S, F):
        after, effects = b.advance(full, arrival, now=1.0)
        assert (after, effects) == (full, (IGNORED,))


def test_decision_records_time_and_reason() -> None:
    """Opening or failing stamps the barrier with the decision time and a reason; waiting does not."""
    barrier, _ = b.create("run_1", "step", 2, ALL, now=0.0, deadline_at=None)
    barrier, _ = b.advance(barrier, S, now=3.0)
    assert (barrier.decided_at, barrier.reason) == (None, None)
    barrier, _ = b.advance(barrier, F, now=4.0)
    assert barrier.decided_at == 4.0
    assert barrier.reason is not None
    assert "1 failed" in barrier.reason


def test_counts_follow_arrivals() -> None:
    """Successes and failures are counted separately and outstanding is what remains."""
    barrier, _ = feed(ALL_COLLECT, 5, [S, F, S])
    assert (barrier.succeeded, barrier.failed, barrier.outstanding) == (2, 1, 2)


@pytest.mark.parametrize(
    ("policy", "expected", "arrivals"),
    [
        (ANY, 1, [S]),
        (ANY, 2, [S]),
        (ALL, 1, [F]),
        (ALL, 2, [F]),
        (PROCEED, 2, [D]),
        (PROCEED, 2, [S, D]),
        (DEADLINE_FAILS, 1, [D]),
        (JoinPolicy(on_failure="collect"), 3, [S, F, D]),
    ],
)
def test_cancel_only_when_tasks_are_outstanding(
    policy: JoinPolicy, expected: int, arrivals: list[Arrival]
) -> None:
    """CANCEL_OUTSTANDING accompanies a decision exactly when some task has not yet arrived."""
    barrier, history = feed(policy, expected, arrivals)
    decisive = history[-1]
    assert barrier.status is not WAITING
    assert (CANCEL in decisive) == (barrier.outstanding > 0)


# --- properties: the task state machine in front of the barrier --------------------------------

POLICIES = (
    st.builds(
        JoinPolicy,
        mode=st.sampled_from(["all", "any"]),
        on_failure=st.sampled_from(["fail_fast", "collect"]),
        on_deadline=st.sampled_from(["fail", "proceed"]),
    )
    | st.builds(
        JoinPolicy,
        mode=st.just("quorum"),
        quorum_count=st.integers(1, 8),
        on_failure=st.sampled_from(["fail_fast", "collect"]),
        on_deadline=st.sampled_from(["fail", "proceed"]),
    )
    | st.builds(
        JoinPolicy,
        mode=st.just("quorum"),
        quorum_percent=st.integers(1, 100).map(float),
        on_failure=st.sampled_from(["fail_fast", "collect"]),
        on_deadline=st.sampled_from(["fail", "proceed"]),
    )
)


def required_by_rule(policy: JoinPolicy, expected: int) -> int:
    """Required successes, worked out from the barrier's rules independently of the code."""
    if policy.mode == "all":
        return expected
    if policy.mode == "any":
        return min(1, expected)
    if policy.quorum_count is not None:
        return min(policy.quorum_count, expected)
    assert policy.quorum_percent is not None
    share = Fraction(expected) * Fraction(policy.quorum_percent) / 100
    return min(math.ceil(share), expected)


@dataclass
class Task:
    state: TaskState = TaskState.DISPATCHED
    attempt: int = 1
    history: list[TaskState] = field(default_factory=list)


@dataclass(frozen=True)
class Scenario:
    policy: JoinPolicy
    max_attempts: int
    outcomes: list[list[Outcome]]  # per task, the outcome each attempt would report
    reports: list[tuple[int, int]]  # (task, attempt) in delivery order, duplicates allowed

    def final_outcome(self, task: int) -> Outcome:
        """The outcome that settles a task: its first success, else its last attempt's."""
        for outcome in self.outcomes[task]:
            if outcome is Outcome.SUCCEEDED:
                return outcome
        return self.outcomes[task][-1]


@st.composite
def scenarios(draw: st.DrawFn) -> Scenario:
    size = draw(st.integers(0, 6))
    max_attempts = draw(st.integers(1, 3))
    outcomes = [
        draw(st.lists(st.sampled_from(list(Outcome)), min_size=max_attempts, max_size=max_attempts))
        for _ in range(size)
    ]
    every_report = [
        (task, attempt) for task in range(size) for attempt in range(1, max_attempts + 1)
    ]
    shuffled = draw(st.permutations(every_report))
    extra = draw(st.lists(st.sampled_from(every_report), max_size=12)) if every_report else []
    mixed = draw(st.permutations([*shuffled, *extra]))
    # A sender redelivers until acknowledged: a final in-order pass settles every task.
    reports = [*mixed, *every_report]
    return Scenario(draw(POLICIES), max_attempts, outcomes, reports)


def simulate(
    scenario: Scenario, deadline_before: int | None = None, seed: int = 0
) -> tuple[b.Barrier, list[tuple[int, Effect]], list[Task]]:
    """Deliver the scenario's reports through decide_report into the barrier.

    A DEADLINE arrives just before report number `deadline_before`. Returns the final
    barrier, each OPENED/FAILED effect with the report index it followed (-1 for create, the
    report index itself for the deadline), and the tasks.
    """
    rng = seeded(seed)
    retry = RetryPolicy(max_attempts=scenario.max_attempts, backoff=1.0, backoff_max=10.0)
    size = len(scenario.outcomes)
    barrier, effects = b.create("run_1", "step", size, scenario.policy, 0.0, deadline_at=None)
    decisions = [(-1, e) for e in effects if e in (OPENED, FAILED)]
    tasks = [Task() for _ in range(size)]
    for index in range(len(scenario.reports) + 1):
        now = float(index + 1)
        if index == deadline_before:
            barrier, effects = b.advance(barrier, D, now)
            decisions += [(index, e) for e in effects if e in (OPENED, FAILED)]
        if index == len(scenario.reports):
            break
        task_index, attempt = scenario.reports[index]
        task = tasks[task_index]
        before = (task.state, task.attempt)
        outcome = scenario.outcomes[task_index][attempt - 1]
        decision = decide_report(task.state, task.attempt, attempt, outcome, retry, now, rng)
        if before[0].finished:
            assert isinstance(decision, Ignore), "a finished task heard a report"
        if isinstance(decision, Ignore):
            assert (task.state, task.attempt) == before
            continue
        if isinstance(decision, Retry):
            assert decision.attempt == task.attempt + 1 <= scenario.max_attempts
            task.state = next_task_state(TaskState.PENDING, TaskMove.DISPATCH)
            task.attempt = decision.attempt
            continue
        assert isinstance(decision, Settle)
        task.state = decision.state
        task.history.append(decision.state)
        arrival = S if decision.state is TaskState.SUCCEEDED else F
        barrier, effects = b.advance(barrier, arrival, now)
        decisions += [(index, e) for e in effects if e in (OPENED, FAILED)]
    return barrier, decisions, tasks


EXPECTED_STATE = {
    Outcome.SUCCEEDED: TaskState.SUCCEEDED,
    Outcome.FAILED: TaskState.FAILED,
    Outcome.TIMED_OUT: TaskState.TIMED_OUT,
}


@settings(max_examples=200, deadline=None)
@given(scenario=scenarios(), seed=st.integers(0, 2**32))
def test_any_order_and_duplication_gives_one_decision(scenario: Scenario, seed: int) -> None:
    """Whatever the order or duplication of reports, the barrier decides once, as the counts say."""
    barrier, decisions, tasks = simulate(scenario, seed=seed)
    size = len(scenario.outcomes)
    successes = sum(scenario.final_outcome(t) is Outcome.SUCCEEDED for t in range(size))
    required = required_by_rule(scenario.policy, size)
    opens = successes >= required
    assert barrier.status is (OPEN if opens else FAILED_STATUS)
    assert [effect for _, effect in decisions] == [OPENED if opens else FAILED]
    if opens:
        assert barrier.succeeded == required, "opens on exactly the required-th success"
    elif scenario.policy.on_failure == "collect":
        assert barrier.outstanding == 0, "collect keeps every sibling's result"
    else:
        assert barrier.failed == size - required + 1, "fail_fast fails once out of reach"
    for index, task in enumerate(tasks):
        assert task.history == [EXPECTED_STATE[scenario.final_outcome(index)]]
    assert barrier.succeeded + barrier.failed <= size


@settings(max_examples=200, deadline=None)
@given(scenario=scenarios(), seed=st.integers(0, 2**32), data=st.data())
def test_order_of_reports_does_not_change_the_status(
    scenario: Scenario, seed: int, data: st.DataObject
) -> None:
    """Two different deliveries of the same reports end in the same barrier status."""
    reordered = data.draw(st.permutations(scenario.reports))
    other = Scenario(
        scenario.policy,
        scenario.max_attempts,
        scenario.outcomes,
        [*reordered, *sorted(set(scenario.reports))],
    )
    first, _, _ = simulate(scenario, seed=seed)
    second, _, _ = simulate(other, seed=seed + 1)
    assert first.status is second.status


@settings(max_examples=200, deadline=None)
@given(scenario=scenarios(), seed=st.integers(0, 2**32), data=st.data())
def test_deadline_anywhere_still_gives_one_decision(
    scenario: Scenario, seed: int, data: st.DataObject
) -> None:
    """A DEADLINE at any point still yields exactly one decision: the deadline's own if the
    barrier was still waiting, else the one the reports had already made."""
    undecided, [(decided_at, effect)], _ = simulate(scenario, seed=seed)
    position = data.draw(st.integers(0, len(scenario.reports)))
    barrier, decisions, _ = simulate(scenario, deadline_before=position, seed=seed)
    assert len(decisions) == 1
    if position <= decided_at:
        proceed = scenario.policy.on_deadline == "proceed"
        assert decisions == [(position, OPENED if proceed else FAILED)]
        assert barrier.status is (OPEN if proceed else FAILED_STATUS)
    else:
        assert decisions == [(decided_at, effect)]
        assert barrier.status is undecided.status


@settings(max_examples=50, deadline=None)
@given(scenario=scenarios(), seed=st.integers(0, 2**32))
def test_deadline_before_any_report_decides_by_policy(scenario: Scenario, seed: int) -> None:
    """A deadline that comes before every report decides a non-empty barrier by on_deadline."""
    barrier, decisions, _ = simulate(scenario, deadline_before=0, seed=seed)
    if not scenario.outcomes:
        assert decisions == [(-1, OPENED)]
        return
    proceed = scenario.policy.on_deadline == "proceed"
    assert decisions == [(0, OPENED if proceed else FAILED)]
    assert (barrier.succeeded, barrier.failed) == (0, 0)
