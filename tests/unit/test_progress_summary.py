"""The terminal summary: every figure the speedup is made of, in words a reader can check."""

from __future__ import annotations

import re

import pytest

from orchestrator.progress import Progress, summary_lines, times
from orchestrator.records import HistoryEntry
from orchestrator.timing import Segment, Timing


@pytest.mark.parametrize(
    ("speedup", "shown"),
    [(1184.44, "1184.4x"), (1.0, "1.0x"), (0.9995, "1.00x"), (0.25, "0.25x"),
     (0.031, "0.031x"), (0.0031, "0.0031x"), (0.0, "0x")],
)  # fmt: skip
def test_a_speedup_keeps_two_significant_digits_below_one(speedup: float, shown: str) -> None:
    """A small speedup is printed with enough digits to check, never as 0.0x."""
    assert times(speedup) == shown


def test_time_stood_failed_is_named_and_taken_off_the_wall_clock() -> None:
    """A run retried by an operator: the pause is printed with the wall-clock, and the
    speedup's division shows it subtracted."""
    timing = Timing(wall=3604.0, ran=4.0, waited=0.0, paused=3600.0, tasks=1, attempts=2)
    text = "\n".join(summary_lines(timing))
    assert "3604.00s  of which 3600.00s stood failed until a retry (not counted)" in text
    assert "= sum of run times / active wall-clock = 4.00s / (3604.00s - 3600.00s)" in text
    assert "1 task, 2 attempts (1 retried)" in text
    assert re.search(r"^  speedup +1\.0x  =", text, re.MULTILINE)


def test_a_summary_without_finished_tasks_has_no_path_lines() -> None:
    """Nothing finished: the sums are zero and no slowest task or critical path is claimed."""
    lines = summary_lines(Timing(wall=1.0, ran=0.0))
    assert not [line for line in lines if "slowest" in line or "critical path" in line]


def test_a_failed_task_line_shows_its_run_wait_and_error() -> None:
    """A failed task's line has the same run and wait columns, then the error."""
    progress = Progress(color=False)
    progress.line(HistoryEntry("step_started", 0.0, "run_1", step="a", data={"tasks": 2}))
    entry = HistoryEntry(
        "task_failed", 1.0, "run_1", "tsk_1", "a",
        {"item": "0", "duration": 0.25, "waited": 1.5, "error": "boom"},
    )  # fmt: skip
    assert progress.line(entry) == (
        "  ✗ a[0]                   ran   0.25s  waited   1.50s  a 1/2  boom"
    )


def test_a_slowest_task_is_named_with_its_run() -> None:
    """The slowest task line gives the longest single run and its task."""
    slowest = Segment("research[2]", "research", "ran", 1.0, 4.02)
    text = "\n".join(
        summary_lines(Timing(wall=5.0, ran=10.0, tasks=3, attempts=3, slowest=slowest))
    )
    assert "slowest task           3.02s  research[2]" in text
