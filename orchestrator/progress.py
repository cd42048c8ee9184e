"""Terminal progress: a line per finished task and a summary per finished run."""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TextIO

from orchestrator.admin import timing_of
from orchestrator.engine import Engine
from orchestrator.records import HistoryEntry, Task
from orchestrator.timing import Timing

_MARKS = {
    "task_succeeded": "✓",
    "task_failed": "✗",
    "task_timed_out": "⏱",
    "task_attempt_failed": "↻",
}
_RUN_END = ("run_succeeded", "run_failed", "run_cancelled")


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
        duration = entry.data.get("duration")
        took = f"{duration:6.2f}s" if isinstance(duration, int | float) else "       "
        tally = f"{counts.finished[step]}/{counts.expected.get(step, '?')}"
        text = f"  {mark} {label:<22} {took}  {step} {tally}"
        if entry.type != "task_succeeded":
            return self._red(f"{text}  {entry.data.get('error') or ''}")
        return self._green(text)

    def summary(self, workflow: str, run_id: str, status: str, timing: Timing) -> list[str]:
        """The closing lines of a finished run."""
        self._runs.pop(run_id, None)
        paint = self._green if status == "succeeded" else self._red
        lines = [
            paint(self._bold(f"■ {workflow} {run_id} {status}")),
            f"  wall-clock      {timing.wall:8.2f}s",
            f"  sum of tasks    {timing.busy:8.2f}s",
            f"  speedup         {timing.speedup:8.1f}x  (vs. running the tasks one after another)",
        ]
        slowest = timing.slowest
        if slowest is not None:
            lines.append(f"  slowest task    {slowest.duration:8.2f}s  {slowest.label}")
            chain = " → ".join(
                f"{span.label} {span.duration:.2f}s" for span in timing.critical_path
            )
            lines.append(f"  critical path   {chain}")
        return lines

    async def follow(self, engine: Engine) -> None:
        """Print progress for everything the engine does, until cancelled."""
        with engine.bus.subscribe() as subscription:
            async for entry in subscription:
                line = self.line(entry)
                if line is not None:
                    self._print(line)
                if entry.type in _RUN_END and entry.run_id:
                    await self._print_summary(engine, entry.run_id)

    async def _print_summary(self, engine: Engine, run_id: str) -> None:
        run = await engine.store.get_run(run_id)
        if run is None:
            return
        tasks: list[Task] = await engine.store.tasks_of_run(run_id)
        for line in self.summary(run.workflow, run.id, run.status.value, timing_of(run, tasks)):
            self._print(line)

    def _print(self, text: str) -> None:
        print(text, file=self.out, flush=True)
