"""Run figures at scale: waits apart from run times, and a speedup a reader can redo by hand."""

from __future__ import annotations

import asyncio
import io
import random
import re
import statistics
from collections.abc import Callable
from typing import Any

import pytest

from orchestrator import progress
from orchestrator.attempts import timing_for
from orchestrator.engine import Engine
from orchestrator.model import WorkflowSpec
from orchestrator.progress import Progress
from orchestrator.records import Task
from orchestrator.timing import Timing
from tests.engine.conftest import Finished, run_to_end
from tests.summary_check import assert_checkable_by_hand

MakeEngine = Callable[..., Engine]
H = "tests.engine.timing_handlers:"


def fan_out(handler: str, **step: Any) -> dict[str, WorkflowSpec]:
    spec = {"handler": H + handler, "for_each": "event.items", **step}
    return {"wf": WorkflowSpec.model_validate({"steps": {"fan": spec}})}


async def figures(engine: Engine, finished: Finished) -> tuple[list[Task], Timing]:
    run = await engine.store.get_run(finished.run_id)
    assert run is not None
    tasks = await engine.store.tasks_of_run(run.id)
    return tasks, await timing_for(engine.store, run, tasks)


def summary_of(timing: Timing) -> str:
    return "\n".join(Progress(color=False).summary("wf", "run_x", "succeeded", timing))


async def test_a_fan_out_behind_two_handler_slots_keeps_runs_small_and_waits_growing(
    make_engine: MakeEngine,
) -> None:
    """300 do-nothing functions behind max_running_handlers=2: each task's duration is its
    own run, the time it spent waiting for a slot is `waited`, and it grows down the queue."""
    engine = make_engine(fan_out("nothing"), max_running_handlers=2)
    finished = await run_to_end(engine, "wf", {"items": list(range(300))}, within=60)
    assert finished.status == "succeeded"
    tasks, timing = await figures(engine, finished)
    by_start = sorted(tasks, key=lambda task: task.started_at or 0.0)
    waits = [task.waited or 0.0 for task in by_start]
    runs = [task.ran or 0.0 for task in by_start]
    assert statistics.mean(waits[-75:]) > statistics.mean(waits[:75]), "later starts waited longer"
    assert sum(waits) > 10 * sum(runs), "the queue is where the time went, not the handlers"
    assert timing.ran == pytest.approx(sum(runs))
    assert timing.waited == pytest.approx(sum(waits))
    assert timing.paced == 0.0, "a handler slot is no wait when running one after another"
    assert timing.speedup == pytest.approx(timing.ran / timing.wall)
    entries = {entry.task_id: entry.data for entry in finished.of_type("task_succeeded")}
    for task in tasks:
        assert entries[task.id]["duration"] == pytest.approx(task.ran, abs=1e-3)
        assert entries[task.id]["waited"] == pytest.approx(task.waited, abs=1e-3)


async def test_a_rate_limited_step_reads_about_one_x_not_zero(make_engine: MakeEngine) -> None:
    """Six quick tasks at one start per 200 ms: the rate sets the pace either way, so the
    summary counts its gaps as paced waits and does not claim 0.0x."""
    engine = make_engine(fan_out("nothing_async", rate="1/200ms"))
    finished = await run_to_end(engine, "wf", {"items": list(range(6))})
    assert finished.status == "succeeded"
    _, timing = await figures(engine, finished)
    assert timing.wall >= 1.0 - 1e-3, "five gaps of 200 ms between six starts"
    assert timing.paced >= 1.0 - timing.ran - 1e-3
    assert timing.ran / timing.wall < 0.5 < timing.speedup <= 1.0 + 1e-6
    text = summary_of(timing)
    assert "0.0x" not in text
    assert "paced waits" in text
    assert "(sum of run times + paced waits) / wall-clock" in text
    assert_checkable_by_hand(text)


class _FullBackoff(random.Random):
    """Jitter that always picks the longest backoff, so the test knows the wait."""

    def uniform(self, a: float, b: float) -> float:
        return b


async def test_retried_tasks_count_every_attempt_and_their_backoff(make_engine: MakeEngine) -> None:
    """Four tasks fail once and succeed after a 300 ms backoff: both attempts are run time,
    the backoff is paced, and the speedup is not the 0.1x of the last attempts alone."""
    engine = make_engine(fan_out("fail_first", retries=1, backoff="300ms"), rng=_FullBackoff())
    finished = await run_to_end(engine, "wf", {"items": list(range(4))})
    assert finished.status == "succeeded"
    _, timing = await figures(engine, finished)
    assert (timing.tasks, timing.attempts) == (4, 8)
    backoffs = [e.data["not_before"] - e.at for e in finished.of_type("task_retry_scheduled")]
    assert backoffs == pytest.approx([0.3] * 4)
    assert timing.paced == pytest.approx(sum(backoffs))
    assert timing.speedup > 1.0, "four retries backed off side by side"
    text = summary_of(timing)
    assert "4 tasks, 8 attempts (4 retried)" in text
    assert re.search(r"ran [0-9.]+s \(failed\) → waited 0\.[0-9]+s → ran", text)
    assert_checkable_by_hand(text)


class _Lines(io.StringIO):
    """Terminal output that says when a line containing `until` has been written."""

    def __init__(self, until: str) -> None:
        super().__init__()
        self.until = until
        self.seen = asyncio.Event()

    def write(self, text: str) -> int:
        if self.until in text:
            self.seen.set()
        return super().write(text)


async def test_a_large_fan_out_summary_can_be_checked_by_hand(
    make_engine: MakeEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """1000 tasks: the terminal shows every task's run and wait (catching up after falling
    behind), and the summary's speedup is its printed sum of run times over its printed
    wall-clock."""
    engine = make_engine(fan_out("nothing"))
    out = _Lines(until="critical path")
    # A subscription far too small for the burst: progress falls behind and catches up from
    # the store, as it must when 10,000 tasks are dispatched in one transaction.
    small = engine.bus.subscribe(maxsize=50)
    monkeypatch.setattr(progress, "MISSED_PAGE", 100)  # the catching up reads several pages
    following = asyncio.ensure_future(Progress(out, color=False).follow(engine, small))
    try:
        finished = await run_to_end(engine, "wf", {"items": list(range(1000))}, within=60)
        async with asyncio.timeout(10):
            await out.seen.wait()
    finally:
        following.cancel()
    assert small.overflowed
    assert finished.status == "succeeded"
    text = out.getvalue()
    task_lines = [line for line in text.splitlines() if line.startswith("  ✓ fan[")]
    assert len(task_lines) == 1000
    assert all(
        re.search(r"ran +[0-9.]+s  waited +[0-9.]+s  fan \d+/1000", line) for line in task_lines
    )
    summary = text[text.index("■ wf") :]
    assert "1000 tasks" in summary
    assert "= sum of run times / wall-clock = " in summary
    assert "sum of waits" in summary
    assert_checkable_by_hand(summary)


async def test_one_worker_thread_never_runs_more_than_the_wall_clock(
    make_engine: MakeEngine,
) -> None:
    """With a single worker thread only one function runs at a time, so the sum of true run
    times cannot exceed the wall-clock, however many tasks wait their turn."""
    engine = make_engine(fan_out("nothing"), handler_threads=1)
    finished = await run_to_end(engine, "wf", {"items": list(range(200))}, within=60)
    assert finished.status == "succeeded"
    _, timing = await figures(engine, finished)
    assert timing.ran <= timing.wall + 1e-3
