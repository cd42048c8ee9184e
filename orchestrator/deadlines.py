"""Deadlines on the one timer heap: each dispatched task's, and each step's.

Only deadlines within `window` sit on the heap; later ones stay in the store (indexed by
due time), and one heap entry, armed for when the earliest of them comes within the
window, loads that window. 100,000 tasks awaiting callbacks with a one-hour deadline thus
cost one heap entry, not 100,000.

On a store several replicas share, a replica loads the deadlines of the tasks it owns (and
unowned ones): the others' are on their heaps, and a dead replica's are armed by the
survivor that claims its tasks.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable

import structlog

from orchestrator.barrier import Barrier
from orchestrator.outbox import StepKey
from orchestrator.records import Task
from orchestrator.store import Store
from orchestrator.timers import Clock, TimerHeap

log = structlog.get_logger("orchestrator.deadlines")

WINDOW = 300.0
WINDOW_KEY = ("deadlines", "window")
RETRY_SECONDS = 1.0


def deadline_key(task_id: str) -> tuple[str, str]:
    """The timer-heap key of a dispatched task's deadline."""
    return ("deadline", task_id)


def step_deadline_key(run_id: str, step: str) -> tuple[str, str, str]:
    return ("step", run_id, step)


class Deadlines:
    def __init__(
        self,
        *,
        store: Store,
        timers: TimerHeap,
        clock: Clock,
        on_task_due: Callable[[Task], None],
        on_step_due: Callable[[str, str], None],
        window: float = WINDOW,
        replica: str | None = None,
    ) -> None:
        self._store = store
        self._replica = replica  # None: every task is this process's
        self._timers = timers
        self._clock = clock
        self._on_task_due = on_task_due
        self._on_step_due = on_step_due
        self._window = window
        self._window_due: float | None = None
        self._touched_while_loading: set[str] | None = None

    # -- tasks ------------------------------------------------------------------------------

    def arm_tasks(self, tasks: Iterable[Task]) -> None:
        for task in tasks:
            self.arm_task(task)

    def arm_task(self, task: Task) -> None:
        """Time out this dispatched task at its `due_at` (or never, without one)."""
        due = task.due_at
        if self._touched_while_loading is not None:
            self._touched_while_loading.add(task.id)  # newer than what the load read
        if due is None or due > self._clock() + self._window:
            self._timers.cancel(deadline_key(task.id))
            if due is not None:
                self._load_window_at(due - self._window)
        else:
            self._timers.schedule(deadline_key(task.id), due, self._due(task))

    def forget(self, task_ids: Iterable[str]) -> None:
        """These tasks are no longer in flight: no deadline for them."""
        for task_id in task_ids:
            self._timers.cancel(deadline_key(task_id))
            if self._touched_while_loading is not None:
                self._touched_while_loading.add(task_id)

    def _due(self, task: Task) -> Callable[[], Awaitable[None]]:
        async def fire() -> None:
            self._on_task_due(task)

        return fire

    def _load_window_at(self, at: float) -> None:
        if self._window_due is None or at < self._window_due:
            self._window_due = at
            self._timers.schedule(WINDOW_KEY, at, self._load_window)

    async def _load_window(self) -> None:
        """Put the deadlines now within the window on the heap; wake again for the next."""
        self._window_due = None
        horizon = self._clock() + self._window
        touched = self._touched_while_loading = set()
        try:
            tasks = await self._store.deadlines_before(horizon)
            later = await self._store.next_deadline(horizon)
        except Exception:  # a busy store: try again soon, the deadlines are safe in it
            log.warning("deadline_window_deferred", exc_info=True)
            self._load_window_at(self._clock() + RETRY_SECONDS)
            return
        finally:
            self._touched_while_loading = None
        for task in tasks:
            # A task that ended, or got a new deadline (a heartbeat), while the store was
            # read keeps what that gave it, not what was read.
            mine = self._replica is None or task.owner in (self._replica, None)
            if mine and task.id not in touched and task.due_at is not None:
                self._timers.schedule(deadline_key(task.id), task.due_at, self._due(task))
        if later is not None:
            self._load_window_at(later - self._window)

    # -- steps ------------------------------------------------------------------------------

    def arm_steps(self, barriers: Iterable[Barrier]) -> None:
        for barrier in barriers:
            assert barrier.deadline_at is not None  # noqa: S101 - only barriers with deadlines
            run_id, step = barrier.run_id, barrier.step

            async def fire(run_id: str = run_id, step: str = step) -> None:
                self._on_step_due(run_id, step)

            self._timers.schedule(step_deadline_key(run_id, step), barrier.deadline_at, fire)

    def clear_steps(self, keys: Iterable[StepKey]) -> None:
        for run_id, step in keys:
            self._timers.cancel(step_deadline_key(run_id, step))
