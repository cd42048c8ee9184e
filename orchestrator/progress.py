"""Terminal progress: a line per finished task and a summary per finished run."""

from __future__ import annotations

import math
import sys
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, TextIO

from orchestrator.attempts import timing_for
from orchestrator.bus import Subscription
from orchestrator.records import HistoryEntry, Task
from orchestrator.timing import Segment, Timing

if TYPE_CHECKING:  # the client commands print progress without loading the engine
    from orchestrator.engine import Engine
    from orchestrator.store import Store

_MARKS = {
    "task_succeeded": "✓",
    "task_failed": "✗",
    "task_timed_out": "⏱",
    "task_attempt_failed": "↻",
}
_RUN_END = ("run_succeeded", "run_failed", "run_cancelled")
MISSED_PAGE = 1000
WAIT_SHOWN = 0.05  # seconds: shorter waits are left out of the critical path line


@dataclass
class _Counts:
    expected: dict[str, int] = field(default_factory=dict)
    finished: dict[str, int] = field(default_factory=dict)


def _paint(code: str) -> Callable[[str], str]:
    return lambda text: f"\033[{code}m{text}\033[0m"


class Progress:
    """Turns history entries into terminal lines; `summary` closes each run."""

    def __init__(self, out: TextIO = sys.stdout, color: bool | None = None) -> None:
        self.out = out
        use_color = out.isatty() if color is None else color
        self._green = _paint("32") if use_color else str
        self._red = _paint("31") if use_color else str
        self._dim = _paint("2") if use_color else str
        self._bold = _paint("1") if use_color else str
        self._runs: dict[str, _Counts] = {}

    def line(self, entry: HistoryEntry) -> str | None:
        """The line to print for `entry`, or None for entries that are not worth a line."""
        run = entry.run_id or ""
        counts = self._runs.setdefault(run, _Counts())
        data = entry.data
        if entry.type == "run_started":
            return self._bold(f"▶ {data.get('workflow')} {run} started")
        if entry.type == "step_started" and entry.step:
            counts.expected[entry.step] = int(data.get("tasks", 0))
            return self._dim(f"  {entry.step}: {data.get('tasks')} task(s) started at once")
        if entry.type in _MARKS and entry.step:
            return self._task_line(entry, counts)
        if entry.type == "barrier_opened":
            return self._dim(
                f"  ⇥ {entry.step} barrier open ({data.get('succeeded')}/{data.get('expected')})"
            )
        if entry.type == "barrier_failed":
            return self._red(f"  ⇥ {entry.step} barrier failed: {data.get('reason')}")
        return None

    def _task_line(self, entry: HistoryEntry, counts: _Counts) -> str:
        step = entry.step or ""
        item = entry.data.get("item")
        label = f"{step}[{item}]" if item else step
        mark = _MARKS[entry.type]
        if entry.type == "task_attempt_failed":
            return self._dim(
                f"  {mark} {label} attempt {entry.data.get('attempt')} failed: {entry.data.get('error')}"
            )
        counts.finished[step] = counts.finished.get(step, 0) + 1
        ran = _column("ran", entry.data.get("duration"))
        waited = _column("waited", entry.data.get("waited"))
        tally = f"{counts.finished[step]}/{counts.expected.get(step, '?')}"
        text = f"  {mark} {label:<22} {ran}  {waited}  {step} {tally}"
        if entry.type != "task_succeeded":
            return self._red(f"{text}  {entry.data.get('error') or ''}")
        return self._green(text)

    def summary(self, workflow: str, run_id: str, status: str, timing: Timing) -> list[str]:
        """The closing lines of a finished run: every figure the speedup is made of is
        printed, so a reader can redo the division (docs/decisions.md, "Run timing")."""
        self._runs.pop(run_id, None)
        paint = self._green if status == "succeeded" else self._red
        return [paint(self._bold(f"■ {workflow} {run_id} {status}")), *summary_lines(timing)]

    async def follow(self, engine: Engine, subscription: Subscription | None = None) -> None:
        """Print progress for everything the engine does (from `subscription` on, if given),
        until cancelled. Falling behind a burst (a large fan-out publishes faster than a
        terminal prints) drops the subscription; then the missed entries are read from the
        store and following goes on, so no line and no summary is lost."""
        last: int | None = None
        while True:  # one round per time the subscription fell behind
            current = subscription or engine.bus.subscribe()
            subscription = None
            with current:
                if last is not None:
                    async for entry in _missed(engine.store, last):
                        last = await self._show(engine, entry)
                async for entry in current:
                    if last is None or entry.id is None or entry.id > last:
                        last = await self._show(engine, entry)
            if not current.overflowed:
                return

    async def _show(self, engine: Engine, entry: HistoryEntry) -> int | None:
        line = self.line(entry)
        if line is not None:
            self._print(line)
        if entry.type in _RUN_END and entry.run_id:
            await self._print_summary(engine, entry.run_id)
        return entry.id

    async def _print_summary(self, engine: Engine, run_id: str) -> None:
        run = await engine.store.get_run(run_id)
        if run is None:
            return
        tasks: list[Task] = await engine.store.tasks_of_run(run_id)
        timing = await timing_for(engine.store, run, tasks)
        for line in self.summary(run.workflow, run.id, run.status.value, timing):
            self._print(line)

    def _print(self, text: str) -> None:
        print(text, file=self.out, flush=True)


async def _missed(store: Store, after: int) -> AsyncIterator[HistoryEntry]:
    """Entries after `after`, from the store, page by page."""
    while True:
        page = await store.history(after=after, limit=MISSED_PAGE)
        for entry in page:
            yield entry
        if len(page) < MISSED_PAGE or page[-1].id is None:
            return
        after = page[-1].id


def _column(name: str, value: object) -> str:
    width = len(name) + 8
    return f"{name} {value:6.2f}s" if isinstance(value, int | float) else " " * width


def _count(number: int, noun: str) -> str:
    return f"{number} {noun}" + ("" if number == 1 else "s")


def seconds(value: float) -> str:
    """Seconds as the summary prints them: milliseconds below one second."""
    return f"{value:.2f}s" if value >= 1 else f"{value:.3f}s"


def times(value: float) -> str:
    """A speedup: one decimal from 1x up, two significant digits below (0.25x, 0.0031x),
    so a small one never reads "0.0x"."""
    if value >= 1:
        return f"{value:.1f}x"
    if value <= 0:
        return "0x"
    digits = max(2, 1 - math.floor(math.log10(value)))
    return f"{value:.{digits}f}x"


def summary_lines(timing: Timing) -> list[str]:
    """The figures of a run's summary, each with what it counts."""
    wall = f"  wall-clock        {seconds(timing.wall):>10}"
    active, over = seconds(timing.wall), "wall-clock"
    if timing.paused > 0:
        over = "active wall-clock"
        wall += f"  of which {seconds(timing.paused)} stood failed until a retry (not counted)"
        active = f"({seconds(timing.wall)} - {seconds(timing.paused)})"
    retried = timing.attempts - timing.tasks
    counted = _count(timing.tasks, "task") + (
        f", {_count(timing.attempts, 'attempt')} ({retried} retried)" if retried > 0 else ""
    )
    lines = [
        wall,
        f"  sum of run times  {seconds(timing.ran):>10}  {counted}",
        f"  sum of waits      {seconds(timing.waited):>10}  queued for a limit or a free handler"
        " slot, or backing off before a retry",
    ]
    if timing.paced > 0:
        lines.append(
            f"  paced waits       {seconds(timing.paced):>10}  retry backoff and rate-limit gaps,"
            " which running one after another waits too"
        )
        formula = f"(sum of run times + paced waits) / {over}"
        figures = f"({seconds(timing.ran)} + {seconds(timing.paced)}) / {active}"
    else:
        formula = f"sum of run times / {over}"
        figures = f"{seconds(timing.ran)} / {active}"
    lines.append(f"  speedup           {times(timing.speedup):>10}  = {formula} = {figures}")
    if timing.slowest is not None:
        slowest = timing.slowest
        lines.append(f"  slowest task      {seconds(slowest.seconds):>10}  {slowest.label}")
    if timing.critical_path:
        lines.append(f"  critical path   {path_text(timing.critical_path)}")
    return lines


def path_text(path: Iterable[Segment]) -> str:
    """`fetch ran 0.01s → research[17] waited 1.20s → ran 2.93s → ...`; waits under
    WAIT_SHOWN (a dispatch's own few milliseconds) are left out, the API lists every one."""
    parts: list[str] = []
    previous: str | None = None
    for segment in path:
        if segment.kind == "waited" and segment.seconds < WAIT_SHOWN:
            continue
        text = f"{segment.kind} {segment.seconds:.2f}s" + (" (failed)" if segment.failed else "")
        if segment.label != previous:
            text = f"{segment.label} {text}"
            previous = segment.label
        parts.append(text)
    return " → ".join(parts)
