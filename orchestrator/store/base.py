"""The storage interface the engine speaks: domain operations, never SQL.

A `StoreTx` is one transaction. The engine composes a task completion, its barrier update,
its history rows and the tasks of newly ready steps inside one `async with
store.transaction()`; everything commits together or not at all. Conditional updates
(`transition_task`, `save_barrier`, `set_run_status`) answer whether they applied, so the
store, not an in-memory check, decides races between replicas.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from typing import Generic, Protocol, TypeVar

from orchestrator.barrier import Barrier, BarrierStatus
from orchestrator.records import Event, HistoryEntry, Run, Task
from orchestrator.states import RunState, TaskState


class StoreUnavailable(Exception):
    """The store is busy or unreachable: a temporary problem, answered 503, never 4xx."""


T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Page(Generic[T]):
    """A page of rows and the cursor of the next page (None at the end)."""

    items: list[T]
    next_cursor: str | None


@dataclass(frozen=True, slots=True)
class Unfinished:
    """What a restart must pick up: unfinished tasks and waiting barriers of running runs."""

    tasks: list[Task]
    barriers: list[Barrier]


class StoreTx(Protocol):
    async def insert_event(self, event: Event) -> tuple[Event, bool]:
        """Insert `event`, or return the stored one with the same (trigger, dedup_key) and False."""

    async def insert_run(self, run: Run) -> None: ...

    async def get_run(self, run_id: str) -> Run | None: ...

    async def get_event(self, event_id: str) -> Event | None: ...

    async def set_run_status(
        self, run_id: str, expected: RunState, new: RunState, at: float | None
    ) -> bool:
        """Move the run from `expected` to `new`; False if it was not in `expected`."""

    async def insert_barrier(self, barrier: Barrier) -> None: ...

    async def get_barrier(self, run_id: str, step: str) -> Barrier | None:
        """The barrier, locked for update until the transaction ends where the backend can."""

    async def barriers_of_run(self, run_id: str) -> list[Barrier]: ...

    async def save_barrier(self, barrier: Barrier, expected: BarrierStatus) -> bool:
        """Write the barrier's counts and status if it is still `expected`."""

    async def insert_tasks(self, tasks: Sequence[Task]) -> None: ...

    async def get_task(self, task_id: str) -> Task | None: ...

    async def tasks_of_run(self, run_id: str, step: str | None = None) -> list[Task]: ...

    async def transition_task(
        self, task: Task, expected_state: TaskState, expected_attempt: int
    ) -> bool:
        """Write `task` if the stored one is still in `expected_state` at `expected_attempt`."""

    async def insert_callback_tokens(self, tokens: Sequence[tuple[str, str, int]]) -> None:
        """Record (token hash, task id, attempt) rows; an existing hash is left as it is."""

    async def get_receipt(self, task_id: str, webhook_id: str) -> str | None:
        """The body hash of the callback accepted for this task under `webhook_id`, if any."""

    async def insert_receipt(
        self, task_id: str, webhook_id: str, body_hash: str, at: float
    ) -> None: ...

    async def append_history(self, entries: Iterable[HistoryEntry]) -> list[HistoryEntry]:
        """Append entries; returns them with their store-assigned increasing ids."""


class Store(Protocol):
    async def open(self) -> None:
        """Connect and migrate the schema forward to the current version."""

    async def close(self) -> None: ...

    async def ping(self) -> None:
        """Raise StoreUnavailable if the store cannot answer now."""

    def transaction(self) -> AbstractAsyncContextManager[StoreTx]: ...

    async def get_run(self, run_id: str) -> Run | None: ...

    async def list_runs(
        self,
        *,
        workflow: str | None = None,
        status: RunState | None = None,
        since: float | None = None,
        until: float | None = None,
        cursor: str | None = None,
        limit: int = 50,
    ) -> Page[Run]:
        """Runs created in [since, until), newest first; the cursor is the last id shown."""

    async def tasks_of_run(self, run_id: str) -> list[Task]: ...

    async def get_task(self, task_id: str) -> Task | None: ...

    async def barriers_of_run(self, run_id: str) -> list[Barrier]: ...

    async def get_event(self, event_id: str) -> Event | None: ...

    async def runs_of_event(self, event_id: str) -> list[Run]:
        """Every run started from this event (the first, and replays), oldest first."""

    async def history(
        self,
        *,
        after: int = 0,
        run_id: str | None = None,
        task_id: str | None = None,
        types: Sequence[str] | None = None,
        since: float | None = None,
        limit: int = 100,
    ) -> list[HistoryEntry]:
        """History entries with id > `after` (and at or after `since`, of one of `types`),
        oldest first."""

    async def callback_target(self, token_hash: str) -> tuple[Task, int] | None:
        """The task a callback token names, and the attempt the token was made for."""

    async def last_cron_fire(self, trigger: str) -> str | None:
        """The dedup key of the trigger's latest cron fire (`2026-11-23T06:42:00Z`), if any."""

    async def server_key(self) -> bytes:
        """The key callback tokens are derived from, made once and kept in the store."""

    async def prune_task_history(self, before: float, limit: int) -> int:
        """Delete up to `limit` task-level history entries of runs finished before `before`."""

    async def prune_payloads(self, before: float, limit: int) -> int:
        """Blank up to `limit` payloads (task items and outputs, event payloads) of old runs."""

    async def prune_runs(self, before: float, limit: int) -> int:
        """Delete up to `limit` runs finished before `before`, with everything of theirs."""

    async def unfinished(self) -> Unfinished: ...

    async def deadlines_before(self, until: float) -> list[Task]:
        """Dispatched tasks of running runs whose deadline is before `until`."""

    async def next_deadline(self, after: float) -> float | None:
        """The earliest deadline of a dispatched task at or after `after`, if any."""
