"""A run's timing: wall-clock, the sum of task durations, the speedup, and the critical path.

Pure: it reads finished task spans and the step graph, nothing else.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Span:
    label: str
    step: str
    started: float
    finished: float

    @property
    def duration(self) -> float:
        return self.finished - self.started


@dataclass(frozen=True, slots=True)
class Timing:
    wall: float
    busy: float
    critical_path: list[Span]

    @property
    def speedup(self) -> float:
        """How much faster than running the same tasks one after another."""
        return self.busy / self.wall if self.wall > 0 else 1.0

    @property
    def slowest(self) -> Span | None:
        return max(self.critical_path, key=lambda span: span.duration, default=None)


def run_timing(
    spans: Iterable[Span], needs: Mapping[str, Iterable[str]], started: float, finished: float
) -> Timing:
    """Timing of a run from `started` to `finished` whose tasks ran as `spans`."""
    spans = list(spans)
    return Timing(
        wall=max(0.0, finished - started),
        busy=sum(span.duration for span in spans),
        critical_path=critical_path(spans, needs),
    )


def critical_path(spans: list[Span], needs: Mapping[str, Iterable[str]]) -> list[Span]:
    """The chain that set the wall-clock: from the last task to finish, back through the
    upstream task that finished last before each one started."""
    if not spans:
        return []
    current = max(spans, key=lambda span: span.finished)
    path = [current]
    while True:
        upstream = set(needs.get(current.step, ()))
        before = [
            span
            for span in spans
            if span.step in upstream and span.finished <= current.started + 1e-9
        ]
        if not before:
            return list(reversed(path))
        current = max(before, key=lambda span: span.finished)
        path.append(current)
