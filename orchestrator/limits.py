"""Admission control: which waiting tasks may start now under concurrency, exclusive and rate limits.

Pure bookkeeping with the clock passed in; the dispatcher does the I/O. Tasks of one step
share a lane (its limits); an exclusive resource is shared by every lane that names it.
A lane whose rate window is full reports when it may start again, for the timer heap.

`Admission` keeps one process's view. On a store several replicas share, what it admits
is checked once more against every replica's load, read in the dispatch transaction
under the lanes' locks (`admit_shared`): the database decides, not one process's memory.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Collection, Hashable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from orchestrator.model import Rate
from orchestrator.store.base import Lane, LaneLoad

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class LaneLimits:
    concurrency: int | None = None
    resource: str | None = None
    rate: Rate | None = None

    @property
    def bounded(self) -> bool:
        return self.concurrency is not None or self.resource is not None or self.rate is not None


@dataclass(slots=True)
class _Lane(Generic[T]):
    limits: LaneLimits
    waiting: deque[tuple[str, T]] = field(default_factory=deque)
    in_flight: int = 0
    starts: deque[float] = field(default_factory=deque)


class Admission(Generic[T]):
    """FIFO per lane; admits from the head of each lane while its limits allow."""

    def __init__(self) -> None:
        self._lanes: dict[Hashable, _Lane[T]] = {}
        self._busy_resources: dict[str, int] = {}
        # What each admitted item holds, as admitted: a lane's limits may change (a config
        # edit between runs) while items admitted under the old ones are still in flight.
        self._admitted: dict[str, tuple[Hashable, str | None]] = {}

    def offer(
        self, lane: Hashable, limits: LaneLimits, item_id: str, item: T, first: bool = False
    ) -> None:
        """Queue `item` on `lane` (at its head if `first`: it had been admitted once and
        keeps its turn); the lane takes the limits of its latest offer."""
        state = self._lanes.get(lane)
        if state is None:
            state = self._lanes[lane] = _Lane(limits)
        state.limits = limits
        if first:
            state.waiting.appendleft((item_id, item))
        else:
            state.waiting.append((item_id, item))

    def take(self, now: float, room: int | None = None) -> tuple[list[T], float | None]:
        """Items that may start now (at most `room`), and the earliest time a rate-limited
        lane may start more."""
        admitted: list[T] = []
        wake_at: float | None = None
        for key, lane in self._lanes.items():
            while lane.waiting and (room is None or len(admitted) < room):
                blocked_until = self._blocked(lane, now)
                if blocked_until is not None:
                    if blocked_until > now:
                        wake_at = blocked_until if wake_at is None else min(wake_at, blocked_until)
                    break
                item_id, item = lane.waiting.popleft()
                self._admit(key, lane, item_id, now)
                admitted.append(item)
        self._drop_idle_lanes()
        return admitted, wake_at

    def take_one(self, lane: Hashable, item_id: str, now: float) -> None:
        """Admit one queued item now, whatever the limits (it is already in flight)."""
        state = self._lanes[lane]
        state.waiting = deque(entry for entry in state.waiting if entry[0] != item_id)
        self._admit(lane, state, item_id, now)

    def release(self, item_id: str) -> bool:
        """Free the slots of an admitted item; False if it holds none (already released)."""
        held = self._admitted.pop(item_id, None)
        if held is None:
            return False
        key, resource = held
        self._lanes[key].in_flight -= 1
        if resource is not None:
            self._busy_resources[resource] -= 1
        self._drop_idle_lanes()
        return True

    def in_flight(self, lane: Hashable) -> int:
        state = self._lanes.get(lane)
        return 0 if state is None else state.in_flight

    def waiting(self) -> int:
        return sum(len(lane.waiting) for lane in self._lanes.values())

    def _blocked(self, lane: _Lane[T], now: float) -> float | None:
        """None if the lane may start one more now; else when it may (now: when a slot frees)."""
        limits = lane.limits
        if limits.concurrency is not None and lane.in_flight >= limits.concurrency:
            return now
        if limits.resource is not None and self._busy_resources.get(limits.resource, 0) >= 1:
            return now
        if limits.rate is not None:
            while lane.starts and lane.starts[0] <= now - limits.rate.per:
                lane.starts.popleft()
            if len(lane.starts) >= limits.rate.count:
                return lane.starts[0] + limits.rate.per
        return None

    def _admit(self, key: Hashable, lane: _Lane[T], item_id: str, now: float) -> None:
        if lane.limits.rate is not None:
            lane.starts.append(now)
        if lane.limits.concurrency is None and lane.limits.resource is None:
            return  # nothing to hold: 100,000 tasks in flight cost no memory here
        lane.in_flight += 1
        if lane.limits.resource is not None:
            resource = lane.limits.resource
            self._busy_resources[resource] = self._busy_resources.get(resource, 0) + 1
        self._admitted[item_id] = (key, lane.limits.resource)

    def _drop_idle_lanes(self) -> None:
        idle = [
            key
            for key, lane in self._lanes.items()
            if not lane.waiting and lane.in_flight == 0 and not lane.starts
        ]
        for key in idle:
            del self._lanes[key]


@dataclass(frozen=True, slots=True)
class SharedAdmission(Generic[T]):
    """What may start now given every replica's load, what must wait, and when a full rate
    window lets one more start (None: wait for a slot to free)."""

    admitted: list[T]
    deferred: list[T]
    wake_at: float | None


def admit_shared(
    candidates: Sequence[tuple[Lane, LaneLimits, T]],
    loads: Mapping[Lane, LaneLoad],
    resource_lanes: Mapping[str, Collection[Lane]],
    now: float,
) -> SharedAdmission[T]:
    """Admit `candidates` in order while each lane's limits hold across replicas: `loads`
    are the lanes' tasks dispatched now and their starts within the rate window, and an
    exclusive resource is busy while any lane naming it (`resource_lanes`) has one."""
    in_flight = {lane: load.in_flight for lane, load in loads.items()}
    starts = {lane: list(load.starts) for lane, load in loads.items()}
    busy = {
        resource: sum(in_flight.get(lane, 0) for lane in set(lanes))
        for resource, lanes in resource_lanes.items()
    }
    admitted: list[T] = []
    deferred: list[T] = []
    wake_at: float | None = None
    for lane, limits, item in candidates:
        started = starts.setdefault(lane, [])
        full = limits.concurrency is not None and in_flight.get(lane, 0) >= limits.concurrency
        taken = limits.resource is not None and busy.get(limits.resource, 0) >= 1
        if limits.rate is not None and len(started) >= limits.rate.count:
            # One more may start once enough of the window's starts have left it.
            frees = started[len(started) - limits.rate.count] + limits.rate.per
            wake_at = frees if wake_at is None else min(wake_at, frees)
            full = True
        if full or taken:
            deferred.append(item)
            continue
        admitted.append(item)
        in_flight[lane] = in_flight.get(lane, 0) + 1
        started.append(now)
        if limits.resource is not None:
            busy[limits.resource] = busy.get(limits.resource, 0) + 1
    return SharedAdmission(admitted, deferred, wake_at)
