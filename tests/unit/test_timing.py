"""Run timing: wall clock, busy time, speedup and the critical path through fan-outs and joins."""

from __future__ import annotations

import pytest

from orchestrator.timing import Span, Timing, critical_path, run_timing

# fetch -> research (fan-out of 3) -> pick -> draft (fan-out of 2) -> crm
NEEDS = {
    "fetch": [],
    "research": ["fetch"],
    "pick": ["research"],
    "draft": ["pick"],
    "crm": ["draft"],
}
FETCH = Span("fetch", "fetch", 0.0, 1.0)
R_FAST = Span("research[0]", "research", 1.0, 3.0)
R_SLOW = Span("research[1]", "research", 1.0, 5.0)
R_MID = Span("research[2]", "research", 1.2, 4.0)
PICK = Span("pick", "pick", 5.0, 6.0)
D_SLOW = Span("draft[0]", "draft", 6.0, 9.0)
D_FAST = Span("draft[1]", "draft", 6.1, 7.0)
CRM = Span("crm", "crm", 9.0, 10.0)
SPANS = [R_MID, CRM, FETCH, D_FAST, R_FAST, PICK, R_SLOW, D_SLOW]


def test_critical_path_through_fan_out_and_join() -> None:
    """The critical path runs through the slowest task of each fan-out the join waited for."""
    assert critical_path(SPANS, NEEDS) == [FETCH, R_SLOW, PICK, D_SLOW, CRM]


def test_run_timing_wall_busy_speedup() -> None:
    """Wall is finished - started, busy sums task durations, speedup is busy / wall."""
    timing = run_timing(SPANS, NEEDS, started=0.0, finished=10.5)
    busy = 1.0 + 2.0 + 4.0 + 2.8 + 1.0 + 3.0 + 0.9 + 1.0
    assert timing.wall == 10.5
    assert timing.busy == pytest.approx(busy)
    assert timing.speedup == pytest.approx(busy / 10.5)
    assert timing.critical_path == [FETCH, R_SLOW, PICK, D_SLOW, CRM]
    assert timing.slowest == R_SLOW


def test_parallel_fan_out_speeds_up() -> None:
    """Ten 30-second tasks run side by side give a speedup of ten."""
    spans = [Span(f"r{i}", "research", 0.0, 30.0) for i in range(10)]
    timing = run_timing(spans, {"research": []}, started=0.0, finished=30.0)
    assert timing.speedup == pytest.approx(10.0)
    assert len(timing.critical_path) == 1


def test_critical_path_ignores_upstream_that_finished_after_start() -> None:
    """An upstream task that was still running when the task started is not on its path."""
    early = Span("a0", "a", 0.0, 2.0)
    late = Span("a1", "a", 0.0, 8.0)  # finished after b started: b did not wait for it
    after = Span("b", "b", 3.0, 9.0)
    assert critical_path([early, late, after], {"a": [], "b": ["a"]}) == [early, after]


def test_critical_path_picks_the_last_of_several_needs() -> None:
    """With two needs, the path goes back through whichever finished last before the join started."""
    left = Span("left", "left", 0.0, 2.0)
    right = Span("right", "right", 0.0, 5.0)
    join = Span("join", "join", 5.0, 6.0)
    needs = {"left": [], "right": [], "join": ["left", "right"]}
    assert critical_path([join, left, right], needs) == [right, join]


def test_critical_path_starts_from_the_last_to_finish() -> None:
    """The path ends with the task that finished last, even if it belongs to an earlier step."""
    root = Span("root", "root", 0.0, 1.0)
    straggler = Span("side", "side", 1.0, 20.0)
    leaf = Span("leaf", "leaf", 1.0, 2.0)
    needs = {"root": [], "side": ["root"], "leaf": ["root"]}
    assert critical_path([root, leaf, straggler], needs) == [root, straggler]


def test_empty_spans() -> None:
    """A run with no task spans has no busy time, no critical path and no slowest task."""
    timing = run_timing([], NEEDS, started=5.0, finished=7.0)
    assert timing == Timing(wall=2.0, busy=0.0, critical_path=[])
    assert timing.slowest is None
    assert critical_path([], NEEDS) == []


def test_zero_wall_clock_has_speedup_one() -> None:
    """A run that took no time reports a speedup of 1 rather than dividing by zero."""
    assert run_timing([], {}, started=3.0, finished=3.0).speedup == 1.0


def test_wall_never_negative() -> None:
    """A finish before the start (clock skew) counts as zero wall time."""
    assert run_timing([], {}, started=5.0, finished=4.0).wall == 0.0


def test_spans_may_be_any_iterable() -> None:
    """run_timing accepts a generator of spans and still uses every span for both sums and path."""
    timing = run_timing(iter(SPANS), NEEDS, started=0.0, finished=10.0)
    assert timing.busy == pytest.approx(sum(span.duration for span in SPANS))
    assert timing.critical_path[-1] == CRM
