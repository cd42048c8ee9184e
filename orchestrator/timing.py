"""A run's timing: wall-clock, time run and time waited, the speedup, and the critical path.

Pure: it reads task attempts (queued -> started -> finished), the step graph and the steps'
rate limits, nothing else. What the figures mean (docs/decisions.md, "Run timing"):

* an attempt *waited* from queued to started (a limit, a free handler slot, a retry's
  backoff) and *ran* from started to finished; one is never counted as the other;
* *paced* waiting is what running the tasks one after another would wait too: each retry's
  backoff, and the gaps a step's rate limit forces between its starts;
* *one after another* takes the sum of run times (every attempt: a failed one was real
  work) plus the paced waiting, and the speedup divides it by the active wall-clock (the
  wall-clock less the time the run stood failed until an operator retried it). Without
  paced waits, the speedup is just the sum of run times over the wall-clock.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

# Times come from one clock but through floats and separate transactions: an upstream that
# finished "after" its downstream was queued by less than this still counts as before it.
EPSILON = 1e-6


@dataclass(frozen=True, slots=True)
class Attempt:
    """One attempt of one task: it waited from `queued` to `started` and ran to `finished`.

    `backoff` is the part of its wait it was held back on purpose (a retry's backoff, a
    service's Retry-After), which one-after-another would have waited as well.
    """

    task: str
    label: str
    step: str
    number: int
    queued: float
    started: float
    finished: float
    failed: bool = False
    backoff: float = 0.0

    @property
    def waited(self) -> float:
        return max(0.0, self.started - self.queued)

    @property
    def ran(self) -> float:
        return max(0.0, self.finished - self.started)


@dataclass(frozen=True, slots=True)
class Rate:
    """At most `count` starts per `per` seconds, as a step declares it."""

    count: int
    per: float


@dataclass(frozen=True, slots=True)
class Segment:
    """A stretch of the critical path: one task waiting (`kind` "waited") or running ("ran")."""

    label: str
    step: str
    kind: str
    start: float
    end: float
    failed: bool = False

    @property
    def seconds(self) -> float:
        return self.end - self.start


@dataclass(frozen=True, slots=True)
class Timing:
    """What a run's summary reports; `ran`, `waited` and `paced` are sums over attempts."""

    wall: float
    ran: float
    waited: float = 0.0
    paced: float = 0.0
    paused: float = 0.0
    tasks: int = 0
    attempts: int = 0
    critical_path: tuple[Segment, ...] = ()
    slowest: Segment | None = None

    @property
    def active(self) -> float:
        """The wall-clock less the time the run stood finished before an operator's retry."""
        return max(0.0, self.wall - self.paused)

    @property
    def sequential(self) -> float:
        """How long running the same attempts one after another would take."""
        return self.ran + self.paced

    @property
    def speedup(self) -> float:
        """One after another over the active wall-clock (1 for a run that took no time)."""
        return self.sequential / self.active if self.active > 0 else 1.0


def run_timing(
    attempts: Iterable[Attempt],
    needs: Mapping[str, Iterable[str]],
    started: float,
    finished: float,
    rates: Mapping[str, Rate] | None = None,
    paused: float = 0.0,
) -> Timing:
    """Timing of a run from `started` to `finished` whose finished attempts were `attempts`;
    `paused` is how long it stood failed or cancelled before operators retried it."""
    attempts = list(attempts)
    wall = max(0.0, finished - started)
    longest = max(attempts, key=lambda attempt: attempt.ran, default=None)
    return Timing(
        wall=wall,
        ran=sum(attempt.ran for attempt in attempts),
        waited=sum(attempt.waited for attempt in attempts),
        paced=paced_waits(attempts, rates or {}),
        paused=min(wall, max(0.0, paused)),
        tasks=len({attempt.task for attempt in attempts}),
        attempts=len(attempts),
        critical_path=tuple(critical_path(attempts, needs, started)),
        slowest=None if longest is None else _ran(longest, longest.started),
    )


def paced_waits(attempts: Iterable[Attempt], rates: Mapping[str, Rate]) -> float:
    """The waiting that one attempt after another would still do: every backoff, plus the
    idle time each rate-limited step's limit forces between its starts.

    The model is a plain loop, step by step: each step's tasks in the order they were
    queued, each task's attempts in turn, sleeping its backoff before a retry and, where
    the rate window is full, until the window lets one more start.
    """
    by_step: dict[str, list[Attempt]] = {}
    for attempt in attempts:
        by_step.setdefault(attempt.step, []).append(attempt)
    total = 0.0
    for step, own in by_step.items():
        total += sum(attempt.backoff for attempt in own)
        rate = rates.get(step)
        if rate is not None:
            total += _rate_idle(_loop_order(own), rate)
    return total


def _loop_order(attempts: list[Attempt]) -> list[Attempt]:
    first_queued: dict[str, float] = {}
    for attempt in attempts:
        first_queued[attempt.task] = min(
            first_queued.get(attempt.task, attempt.queued), attempt.queued
        )
    return sorted(attempts, key=lambda a: (first_queued[a.task], a.task, a.number))


def _rate_idle(attempts: list[Attempt], rate: Rate) -> float:
    """Idle seconds of a one-at-a-time loop over `attempts` that starts at most
    `rate.count` of them per `rate.per` seconds (backoff sleeps counted elsewhere)."""
    clock = idle = 0.0
    starts: deque[float] = deque(maxlen=rate.count)
    for attempt in attempts:
        clock += attempt.backoff
        if len(starts) == rate.count and starts[0] + rate.per > clock:
            idle += starts[0] + rate.per - clock
            clock = starts[0] + rate.per
        starts.append(clock)
        clock += attempt.ran
    return idle


def critical_path(
    attempts: Iterable[Attempt], needs: Mapping[str, Iterable[str]], started: float
) -> list[Segment]:
    """The chain that set the wall-clock, as contiguous segments from `started` to the last
    finish: each task on it waited, then ran (once per attempt).

    The chain runs from the task that finished last back through, at each step, the
    upstream task that finished last before this one was first queued.
    """
    by_task: dict[str, list[Attempt]] = {}
    for attempt in attempts:
        by_task.setdefault(attempt.task, []).append(attempt)
    if not by_task:
        return []
    done = {task: max(a.finished for a in own) for task, own in by_task.items()}
    ready = {task: min(a.queued for a in own) for task, own in by_task.items()}
    step = {task: own[0].step for task, own in by_task.items()}
    current = max(by_task, key=lambda task: done[task])
    chain = [current]
    for _ in by_task:  # a chain visits each task at most once: the step graph has no cycle
        upstream = set(needs.get(step[current], ()))
        before = [
            task
            for task in by_task
            if step[task] in upstream and done[task] <= ready[current] + EPSILON
        ]
        if not before:
            break
        current = max(before, key=lambda task: done[task])
        chain.append(current)
    return _segments([by_task[task] for task in reversed(chain)], started)


def _segments(chain: list[list[Attempt]], started: float) -> list[Segment]:
    segments: list[Segment] = []
    cursor = started
    for own in chain:
        for attempt in sorted(own, key=lambda a: a.number):
            begin = max(cursor, attempt.started)
            segments.append(Segment(attempt.label, attempt.step, "waited", cursor, begin))
            segments.append(_ran(attempt, begin))
            cursor = segments[-1].end
    return segments


def _ran(attempt: Attempt, begin: float) -> Segment:
    end = max(begin, attempt.finished)
    return Segment(attempt.label, attempt.step, "ran", begin, end, attempt.failed)
