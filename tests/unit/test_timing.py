"""Run timing: waits apart from runs, the speedup and what it compares, the critical path."""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import pytest
from hypothesis import given
from hypothesis import strategies as st

from orchestrator.progress import path_text
from orchestrator.timing import Attempt, Rate, Segment, Timing, critical_path, run_timing
from orchestrator.timing_json import timing_from_json, timing_json


def attempt(
    label: str,
    queued: float,
    started: float,
    finished: float,
    *,
    number: int = 1,
    failed: bool = False,
    backoff: float = 0.0,
) -> Attempt:
    step = label.split("[")[0]
    return Attempt(label, label, step, number, queued, started, finished, failed, backoff)


# fetch -> research (fan-out of 3) -> pick -> draft (fan-out of 2) -> crm
NEEDS = {
    "fetch": [],
    "research": ["fetch"],
    "pick": ["research"],
    "draft": ["pick"],
    "crm": ["draft"],
}
FETCH = attempt("fetch", 0.0, 0.0, 1.0)
R_FAST = attempt("research[0]", 1.0, 1.0, 3.0)
R_SLOW = attempt("research[1]", 1.0, 1.5, 5.0)  # waited half a second for a slot
R_MID = attempt("research[2]", 1.0, 1.2, 4.0)
PICK = attempt("pick", 5.0, 5.0, 6.0)
D_SLOW = attempt("draft[0]", 6.0, 6.0, 9.0)
D_FAST = attempt("draft[1]", 6.0, 6.1, 7.0)
CRM = attempt("crm", 9.0, 9.0, 10.0)
ATTEMPTS = [R_MID, CRM, FETCH, D_FAST, R_FAST, PICK, R_SLOW, D_SLOW]


def labels(path: list[Segment]) -> list[str]:
    return list(dict.fromkeys(segment.label for segment in path))


def test_critical_path_through_fan_out_and_join() -> None:
    """The critical path runs through the slowest task of each fan-out the join waited for."""
    path = critical_path(ATTEMPTS, NEEDS, 0.0)
    assert labels(path) == ["fetch", "research[1]", "pick", "draft[0]", "crm"]


def test_critical_path_shows_each_wait_as_its_own_segment() -> None:
    """A task on the path that waited for a slot shows the wait, then the run."""
    path = critical_path(ATTEMPTS, NEEDS, 0.0)
    research = [s for s in path if s.label == "research[1]"]
    assert [(s.kind, s.start, s.end) for s in research] == [
        ("waited", 1.0, 1.5),
        ("ran", 1.5, 5.0),
    ]
    assert path_text(path) == (
        "fetch ran 1.00s → research[1] waited 0.50s → ran 3.50s → pick ran 1.00s"
        " → draft[0] ran 3.00s → crm ran 1.00s"
    )


def test_run_timing_keeps_waits_apart_from_run_times() -> None:
    """Sum of run times excludes the waits; without paced waits speedup is runs / wall."""
    timing = run_timing(ATTEMPTS, NEEDS, started=0.0, finished=10.5)
    ran = 1.0 + 2.0 + 3.5 + 2.8 + 1.0 + 3.0 + 0.9 + 1.0
    assert timing.wall == 10.5
    assert timing.ran == pytest.approx(ran)
    assert timing.waited == pytest.approx(0.5 + 0.2 + 0.1)
    assert timing.paced == 0.0
    assert timing.speedup == pytest.approx(ran / 10.5)
    assert (timing.tasks, timing.attempts) == (8, 8)
    assert timing.slowest == Segment("research[1]", "research", "ran", 1.5, 5.0)


def test_parallel_fan_out_speeds_up() -> None:
    """Ten 30-second tasks run side by side give a speedup of ten."""
    attempts = [attempt(f"r[{i}]", 0.0, 0.0, 30.0) for i in range(10)]
    timing = run_timing(attempts, {"r": []}, started=0.0, finished=30.0)
    assert timing.speedup == pytest.approx(10.0)
    assert labels(list(timing.critical_path)) == ["r[0]"]


def test_a_handler_slot_wait_is_not_paced() -> None:
    """Four 1 s tasks behind two handler slots: the waits are reported, but one after
    another would not wait for a slot, so the speedup is plain runs / wall (2x)."""
    attempts = [attempt(f"f[{i}]", 0.0, float(i // 2), float(i // 2 + 1)) for i in range(4)]
    timing = run_timing(attempts, {"f": []}, started=0.0, finished=2.0)
    assert (timing.ran, timing.waited, timing.paced) == (4.0, 2.0, 0.0)
    assert timing.speedup == pytest.approx(2.0)


def test_a_retried_task_counts_every_attempt_and_its_backoff() -> None:
    """Failed 1 s, backed off 2 s, then ran 1 s: 2 s of run time, 2 s paced, 4 s one after
    another in 4 s of wall-clock: 1.0x, not the 0.25x of the last attempt alone."""
    first = attempt("t", 0.0, 0.0, 1.0, failed=True)
    second = attempt("t", 1.0, 3.0, 4.0, number=2, backoff=2.0)
    timing = run_timing([second, first], {"t": []}, started=0.0, finished=4.0)
    assert (timing.ran, timing.waited, timing.paced) == (2.0, 2.0, 2.0)
    assert (timing.tasks, timing.attempts) == (1, 2)
    assert timing.speedup == pytest.approx(1.0)
    assert path_text(timing.critical_path) == "t ran 1.00s (failed) → waited 2.00s → ran 1.00s"


def test_a_rate_limit_paces_one_after_another_too() -> None:
    """Five 10 ms tasks at one start per second take 4 s however they are run: the speedup
    is 1.0x, not the 0.01x of run time over wall-clock."""
    attempts = [attempt(f"r[{i}]", 0.0, float(i), i + 0.01) for i in range(5)]
    timing = run_timing(attempts, {"r": []}, 0.0, 4.01, rates={"r": Rate(1, 1.0)})
    assert timing.paced == pytest.approx(4 * 0.99)
    assert timing.sequential == pytest.approx(4.01)
    assert timing.speedup == pytest.approx(1.0)


def test_a_rate_of_several_per_window_paces_each_window() -> None:
    """At two starts per second, six short tasks need three windows: two gaps of about 1 s."""
    attempts = [attempt(f"r[{i}]", 0.0, float(i // 2), i // 2 + 0.1) for i in range(6)]
    timing = run_timing(attempts, {"r": []}, 0.0, 2.1, rates={"r": Rate(2, 1.0)})
    assert timing.paced == pytest.approx(2 * 0.8)
    assert timing.speedup == pytest.approx((0.6 + 1.6) / 2.1)


def test_a_backoff_long_enough_fills_the_rate_window() -> None:
    """A retry that already slept its backoff past the rate window is not paced twice."""
    first = attempt("r[0]", 0.0, 0.0, 0.1, failed=True)
    retry = attempt("r[0]", 0.1, 2.1, 2.2, number=2, backoff=2.0)
    timing = run_timing([first, retry], {"r": []}, 0.0, 2.2, rates={"r": Rate(1, 1.0)})
    assert timing.paced == pytest.approx(2.0)


def test_a_rate_on_another_step_does_not_pace_this_one() -> None:
    """Only the step that declares the rate is paced by it."""
    attempts = [attempt(f"a[{i}]", 0.0, float(i), i + 0.5) for i in range(3)]
    assert run_timing(attempts, {"a": []}, 0.0, 2.5, rates={"b": Rate(1, 1.0)}).paced == 0.0


def test_time_stood_failed_before_an_operator_retry_is_not_counted() -> None:
    """A run that failed, waited an hour for its retry, and finished: the speedup divides by
    the active wall-clock."""
    attempts = [
        attempt("a", 0.0, 0.0, 2.0, failed=True),
        attempt("a", 3602.0, 3602.0, 3604.0, number=2),
    ]
    timing = run_timing(attempts, {"a": []}, 0.0, 3604.0, paused=3600.0)
    assert (timing.wall, timing.active) == (3604.0, 4.0)
    assert timing.speedup == pytest.approx(1.0)


def test_critical_path_ignores_upstream_that_finished_after_it_was_queued() -> None:
    """An upstream task still running when the task was queued is not on its path."""
    early = attempt("a[0]", 0.0, 0.0, 2.0)
    late = attempt("a[1]", 0.0, 0.0, 8.0)  # finished after b was queued: b did not wait for it
    after = attempt("b", 2.0, 3.0, 9.0)
    path = critical_path([early, late, after], {"a": [], "b": ["a"]}, 0.0)
    assert labels(path) == ["a[0]", "b"]


def test_critical_path_picks_the_last_of_several_needs() -> None:
    """With two needs, the path goes back through whichever finished last before the join was queued."""
    left = attempt("left", 0.0, 0.0, 2.0)
    right = attempt("right", 0.0, 0.0, 5.0)
    join = attempt("join", 5.0, 5.0, 6.0)
    needs = {"left": [], "right": [], "join": ["left", "right"]}
    assert labels(critical_path([join, left, right], needs, 0.0)) == ["right", "join"]


def test_critical_path_starts_from_the_last_to_finish() -> None:
    """The path ends with the task that finished last, even if it belongs to an earlier step."""
    root = attempt("root", 0.0, 0.0, 1.0)
    straggler = attempt("side", 1.0, 1.0, 20.0)
    leaf = attempt("leaf", 1.0, 1.0, 2.0)
    needs = {"root": [], "side": ["root"], "leaf": ["root"]}
    assert labels(critical_path([root, leaf, straggler], needs, 0.0)) == ["root", "side"]


def test_empty_attempts() -> None:
    """A run with no finished attempt has no run time, no critical path and no slowest task."""
    timing = run_timing([], NEEDS, started=5.0, finished=7.0)
    assert timing == Timing(wall=2.0, ran=0.0)
    assert timing.slowest is None
    assert critical_path([], NEEDS, 5.0) == []


def test_zero_wall_clock_has_speedup_one() -> None:
    """A run that took no time reports a speedup of 1 rather than dividing by zero."""
    assert run_timing([], {}, started=3.0, finished=3.0).speedup == 1.0


def test_wall_never_negative() -> None:
    """A finish before the start (clock skew) counts as zero wall time."""
    assert run_timing([], {}, started=5.0, finished=4.0).wall == 0.0


def test_a_start_before_its_queue_time_counts_as_no_wait() -> None:
    """Clock skew between a worker thread and the loop never makes a negative wait or run."""
    skewed = attempt("a", 1.0, 0.999, 0.998)
    assert (skewed.waited, skewed.ran) == (0.0, 0.0)
    path = critical_path([skewed], {"a": []}, 1.0)
    assert all(segment.seconds >= 0 for segment in path)


# -- properties of runs as the engine makes them ----------------------------------------------


@dataclass
class Simulated:
    attempts: list[Attempt]
    needs: dict[str, list[str]]
    finished: float


durations = st.floats(min_value=0.0, max_value=5.0, allow_nan=False)


@st.composite
def runs(draw: st.DrawFn) -> Simulated:
    """Layers of steps, each needing some of the steps before it; a step's tasks are queued
    when the last task of its needs finishes, wait, and run (some after a failed attempt
    and a backoff)."""
    needs: dict[str, list[str]] = {}
    done: dict[str, float] = {}
    attempts: list[Attempt] = []
    for index in range(draw(st.integers(1, 5))):
        step = f"s{index}"
        earlier = list(needs)
        needs[step] = draw(st.lists(st.sampled_from(earlier), unique=True)) if earlier else []
        opened = max((done[need] for need in needs[step]), default=0.0)
        finish = opened
        for item in range(draw(st.integers(1, 4))):
            queued, number = opened, 1
            label = f"{step}[{item}]"
            if draw(st.booleans()):
                started = queued + draw(durations)
                ended = started + draw(durations)
                attempts.append(Attempt(label, label, step, 1, queued, started, ended, True))
                backoff = draw(durations)
                queued, number = ended, 2
            else:
                backoff = 0.0
            started = queued + backoff + draw(durations)
            ended = started + draw(durations)
            attempts.append(
                Attempt(label, label, step, number, queued, started, ended, backoff=backoff)
            )
            finish = max(finish, ended)
        done[step] = finish
    return Simulated(attempts, needs, max(done.values()) + draw(durations))


@given(runs())
def test_the_critical_path_is_contiguous_from_the_start_to_the_last_finish(run: Simulated) -> None:
    """Segments follow each other without gaps or overlaps, from the run's start to the
    last finish, so the path is never longer than the wall-clock."""
    timing = run_timing(run.attempts, run.needs, 0.0, run.finished)
    path = timing.critical_path
    assert path[0].start == 0.0
    assert path[-1].end == max(attempt.finished for attempt in run.attempts)
    for before, after in itertools.pairwise(path):
        assert before.end == after.start
    assert all(segment.seconds >= 0 for segment in path)
    assert sum(segment.seconds for segment in path) <= timing.wall + 1e-9


@given(runs())
def test_figures_add_up_as_the_summary_says(run: Simulated) -> None:
    """Speedup is (runs + paced waits) / wall; backoff is the only pacing without a rate;
    the path's run segments are real run time."""
    timing = run_timing(run.attempts, run.needs, 0.0, run.finished)
    assert timing.ran == pytest.approx(sum(a.finished - a.started for a in run.attempts))
    assert timing.paced == pytest.approx(sum(a.backoff for a in run.attempts))
    assert timing.paced <= timing.waited + 1e-9
    if timing.wall > 0:
        assert timing.speedup == pytest.approx((timing.ran + timing.paced) / timing.wall)
    path_ran = sum(s.seconds for s in timing.critical_path if s.kind == "ran")
    assert path_ran <= timing.ran + 1e-9


@given(
    st.lists(st.tuples(durations, st.floats(0.0, 2.0)), min_size=1, max_size=8),
    st.integers(1, 3),
    st.floats(min_value=0.1, max_value=3.0),
)
def test_a_run_that_really_went_one_after_another_has_speedup_one(
    plan: list[tuple[float, float]], count: int, per: float
) -> None:
    """A rate-limited step run by a single slot, each task sleeping its backoff first: the
    wall-clock is exactly what "one after another" means, so the speedup is 1.0x."""
    rate = Rate(count, per)
    clock, starts, attempts = 0.0, list[float](), []
    for index, (ran, backoff) in enumerate(plan):
        clock += backoff
        if len(starts) >= count:
            clock = max(clock, starts[-count] + per)
        starts.append(clock)
        attempts.append(
            Attempt(f"t{index}", f"s[{index}]", "s", 1, 0.0, clock, clock + ran, backoff=backoff)
        )
        clock += ran
    timing = run_timing(attempts, {"s": []}, 0.0, clock, rates={"s": rate})
    assert timing.sequential == pytest.approx(clock)
    if clock > 1e-6:
        assert timing.speedup == pytest.approx(1.0)


def test_the_api_shape_of_a_timing_reads_back_as_the_same_timing() -> None:
    """What `show` and `fire --wait` print from the API is the timing the server computed."""
    first = attempt("t", 0.0, 0.0, 1.0, failed=True)
    second = attempt("t", 1.0, 3.0, 4.0, number=2, backoff=2.0)
    timing = run_timing([first, second], {"t": []}, 0.0, 5.0, paused=0.5)
    assert timing_from_json(timing_json(timing)) == timing
    assert timing_from_json(timing_json(Timing(wall=1.0, ran=0.0))).slowest is None
