"""The storage interface the engine speaks: domain operations on batches, never SQL.

A `StoreTx` is one transaction. Its operations take and return batches, so that a fan-out
of N tasks, a dispatch of N tasks or a batch of N callbacks costs a constant number of
statements (one round trip each on a networked database), not N. Conditional writes
(`write_tasks`, `write_barriers`, `set_run_status`) answer what applied, so the store, not
an in-memory check, decides races between concurrent writers and replicas.

Reads inside a transaction (`tasks`, `barriers`) lock the rows they return until the
transaction ends where the backend can (PostgreSQL's FOR UPDATE); SQLite has one writer,
so every read in a write transaction is already current.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field, replace
from typing import Any, Generic, Protocol, TypeVar

from orchestrator.barrier import Barrier
from orchestrator.records import Event, HistoryEntry, Run, Task
from orchestrator.states import RunState
from orchestrator.task_moves import TaskWrite


class StoreUnavailable(Exception):
    """The store is busy or unreachable: a temporary problem, answered 503, never 4xx."""


class StoreConflict(StoreUnavailable):
    """A row changed under a transaction that expected otherwise: try the whole thing again."""


T = TypeVar("T")

StepKey = tuple[str, str]  # (run id, step)
ReceiptKey = tuple[str, str]  # (task id, webhook-id)


@dataclass(frozen=True, slots=True)
class Page(Generic[T]):
    """A page of rows and the cursor of the next page (None at the end)."""

    items: list[T]
    next_cursor: str | None


R = TypeVar("R")


def page_of(
    found: Sequence[R], limit: int, item: Callable[[R], T], cursor: Callable[[T], str]
) -> Page[T]:
    """The first `limit` of `found`, which was read one longer than the page: a row beyond
    it says there is a next page, which starts after the last item shown."""
    items = [item(row) for row in found[:limit]]
    return Page(items, cursor(items[-1]) if len(found) > limit else None)


@dataclass(frozen=True, slots=True)
class Unfinished:
    """What a restart must pick up: unfinished tasks and waiting barriers of running runs."""

    tasks: list[Task]
    barriers: list[Barrier]


@dataclass(frozen=True, slots=True)
class BarrierWrite:
    """`barrier` as it will be stored, if the stored row still equals `expected` in status
    and counts (what this transaction read)."""

    barrier: Barrier
    expected: Barrier

    @property
    def key(self) -> StepKey:
        return (self.barrier.run_id, self.barrier.step)


@dataclass(frozen=True, slots=True)
class Receipt:
    """An accepted callback: its task, the sender's webhook-id and the body's SHA-256."""

    task_id: str
    webhook_id: str
    body_hash: str
    at: float

    @property
    def key(self) -> ReceiptKey:
        return (self.task_id, self.webhook_id)


@dataclass(frozen=True, slots=True)
class CallbackToken:
    """A callback token's hash and the task attempt it was made for."""

    token_hash: str
    task_id: str
    attempt: int


RejectionKey = tuple[int, str, str]  # (minute, route, reason)
WaitKey = tuple[str, str]  # (trigger, key)


@dataclass(frozen=True, slots=True)
class Wait:
    """One task attempt waiting for an event of `trigger` whose key is `key`.

    `run_id` and `step` are the task's, filled in when a wait is read for a listing.
    """

    trigger: str
    key: str
    task_id: str
    attempt: int
    registered_at: float
    deadline: float | None = None
    run_id: str | None = None
    step: str | None = None

    @property
    def wait_key(self) -> WaitKey:
        return (self.trigger, self.key)


def kept_cursor(kept: KeptEvent) -> str:
    """Kept events page by (event id, key): the cursor after one of them."""
    return f"{kept.event_id}:{kept.key}"


@dataclass(frozen=True, slots=True)
class KeptEvent:
    """An event that no task waited on when it arrived, kept under one of its keys until
    `expires`, so that a wait registered before then completes from it.

    `outcome` ("succeeded" or "failed") and `error` are what it means for a waiting task,
    decided when it arrived. `payload` is the event's, read with it (stored once, in
    events).
    """

    trigger: str
    key: str
    event_id: str
    received_at: float
    expires: float
    outcome: str
    error: str | None = None
    payload: Any = None

    @property
    def wait_key(self) -> WaitKey:
        return (self.trigger, self.key)


@dataclass(frozen=True, slots=True)
class RejectionCount:
    """Requests refused at the edge and counted together: one route, one reason, one minute.

    `minute` is the epoch second the minute starts at. `sample` describes the first of
    them (its status, the detail and target name cut and escaped, the client address): a
    later count of the same key adds to `count` and keeps the first sample.
    """

    minute: int
    route: str
    reason: str
    count: int
    first_at: float
    last_at: float
    sample: dict[str, Any] = field(default_factory=dict)

    @property
    def key(self) -> RejectionKey:
        return (self.minute, self.route, self.reason)

    def plus(self, later: RejectionCount) -> RejectionCount:
        """This count and `later`'s of the same key together, keeping this sample."""
        return replace(
            self,
            count=self.count + later.count,
            first_at=min(self.first_at, later.first_at),
            last_at=max(self.last_at, later.last_at),
        )

    @classmethod
    def from_row(cls, row: Any) -> RejectionCount:
        """From a SQL row with the table's columns (`sample` as JSON text)."""
        return cls(
            row["minute"], row["route"], row["reason"], row["count"],
            row["first_at"], row["last_at"], json.loads(row["sample"]),
        )  # fmt: skip


Lane = tuple[str, str]  # (workflow, step): the tasks that share a step's limits


@dataclass(frozen=True, slots=True)
class LaneLoad:
    """What a lane holds across every replica: tasks dispatched now, and recent starts."""

    in_flight: int = 0
    starts: tuple[float, ...] = ()


@dataclass(frozen=True, slots=True)
class Notice:
    """A note a transaction of another process left for the processes on one database,
    delivered once it committed (PostgreSQL's LISTEN/NOTIFY). `topic` says what it is
    about; the special topic RECONNECTED says notices may have been lost meanwhile, so the
    listener reads the store once for what it might have missed."""

    topic: str
    payload: str


RECONNECTED = "reconnected"

NoticeFn = Callable[[Notice], None]


class StoreTx(Protocol):
    # -- events and runs -------------------------------------------------------------------

    async def insert_event(self, event: Event) -> tuple[Event, bool]:
        """Insert `event`, or return the stored one with the same (trigger, dedup_key) and False."""

    async def get_event(self, event_id: str) -> Event | None: ...

    async def insert_run(self, run: Run) -> None: ...

    async def runs(self, run_ids: Collection[str]) -> dict[str, Run]:
        """The runs with these ids (those that exist)."""

    async def set_run_status(
        self, run_id: str, expected: RunState, new: RunState, at: float | None
    ) -> bool:
        """Move the run from `expected` to `new`; False if it was not in `expected`."""

    # -- barriers --------------------------------------------------------------------------

    async def insert_barriers(self, barriers: Sequence[Barrier]) -> None: ...

    async def barriers(self, keys: Collection[StepKey]) -> dict[StepKey, Barrier]:
        """The barriers of these (run, step) keys, locked until the transaction ends."""

    async def barriers_of_runs(self, run_ids: Collection[str]) -> list[Barrier]:
        """Every barrier of these runs, in the order they were created."""

    async def write_barriers(self, writes: Sequence[BarrierWrite]) -> set[StepKey]:
        """Apply each write whose barrier is still as expected; the keys that applied."""

    # -- tasks -----------------------------------------------------------------------------

    async def insert_tasks(self, tasks: Sequence[Task]) -> None: ...

    async def tasks(self, task_ids: Collection[str]) -> dict[str, Task]:
        """The tasks with these ids, locked until the transaction ends."""

    async def tasks_of_steps(self, keys: Collection[StepKey]) -> list[Task]:
        """Every task of these (run, step) keys, in creation order."""

    async def unfinished_tasks(self, run_id: str, step: str | None = None) -> list[Task]:
        """The pending and dispatched tasks of a run (of one step, if given)."""

    async def write_tasks(self, writes: Sequence[TaskWrite]) -> set[str]:
        """Apply each write whose task is still in its expected state and attempt; the ids
        that applied."""

    # -- callbacks -------------------------------------------------------------------------

    async def insert_callback_tokens(self, tokens: Sequence[CallbackToken]) -> None:
        """Record tokens; an existing hash is left as it is (a re-dispatch makes the same)."""

    async def receipts(self, keys: Collection[ReceiptKey]) -> dict[ReceiptKey, str]:
        """The body hashes of the callbacks accepted under these (task, webhook-id) keys."""

    async def insert_receipts(self, receipts: Sequence[Receipt]) -> None: ...

    # -- waits on keys (issue 15) -----------------------------------------------------------

    async def lock_wait_keys(self, keys: Collection[WaitKey]) -> None:
        """Hold these (trigger, key) pairs until the transaction ends: a wait being
        registered and an event arriving for the same key never miss each other (on
        PostgreSQL, advisory locks; one writer at a time elsewhere makes it so already)."""

    async def waiting_on(self, keys: Collection[WaitKey]) -> list[tuple[Wait, Task]]:
        """The waits on these keys whose task is still dispatched on the wait's attempt,
        with the task (both locked), oldest wait first."""

    async def insert_waits(self, waits: Sequence[Wait]) -> None:
        """Register waits; one already registered for the same task attempt is replaced
        (a handler run again after a restart registers again)."""

    async def delete_waits(self, task_ids: Collection[str]) -> None:
        """Forget every wait of these tasks."""

    async def keep_events(self, kept: Sequence[KeptEvent], most: Mapping[str, int]) -> None:
        """Keep these events for early arrival (one already kept stays as it is); then keep
        at most `most[trigger]` of each trigger named, the oldest going first."""

    async def kept_for(self, keys: Collection[WaitKey], now: float) -> list[KeptEvent]:
        """The events kept under these keys that expire after `now`, with their payloads,
        in the order they arrived."""

    # -- history ---------------------------------------------------------------------------

    async def append_history(self, entries: Iterable[HistoryEntry]) -> list[HistoryEntry]:
        """Append entries; returns them with their store-assigned increasing ids. Entries
        are readable (and their ids increasing) in the order their transactions commit."""

    # -- replicas --------------------------------------------------------------------------

    async def lock_runs(self, run_ids: Collection[str]) -> dict[str, Run]:
        """runs(), locked until the transaction ends where the backend can: two replicas that
        each opened one of a join's barriers decide, one after the other, whether it starts."""

    async def lane_loads(
        self, lanes: Collection[Lane], since: Mapping[Lane, float]
    ) -> dict[Lane, LaneLoad]:
        """For each (workflow, step) lane: its dispatched tasks, and the start times after
        `since[lane]` (lanes named there); locked until the transaction ends where the
        backend can, so two replicas admitting into one lane decide one after the other."""

    async def save_replica(self, replica_id: str, started_at: float, lease_until: float) -> None:
        """Record the replica, or renew its lease."""

    async def drop_replica(self, replica_id: str, expired_before: float) -> bool:
        """Remove the replica if its lease ran out before `expired_before`: True for the one
        transaction that does (it takes the replica's tasks over), False if it renewed."""

    async def owned_tasks(self, owners: Collection[str | None]) -> list[Task]:
        """The unfinished tasks these replicas own (None: no owner), locked."""

    def notify(self, topic: str, payload: str) -> None:
        """Tell the other processes on this database, once this transaction commits
        (nothing if it rolls back); a no-op where no other process can share the store."""


class Store(Protocol):
    shared: bool  # several processes (replicas) may use this database at once

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

    # -- rows of no run, and readiness (issue 11) ----------------------------------------------

    async def add_rejections(self, counts: Sequence[RejectionCount]) -> None:
        """Add these counts to the stored ones, in one transaction: a key already stored
        gets the sum and keeps its first sample."""

    async def rejections(self, *, since: float = 0.0, limit: int = 1000) -> list[RejectionCount]:
        """Stored counts of the minutes that start at or after `since`, oldest first (then
        by route and reason), at most `limit`."""

    async def prune_unattached(self, before: float, limit: int) -> int:
        """Delete up to `limit` rows of no run from before `before`: history entries without
        a run (rejected deliveries, say) and rejection counts. How many went."""

    async def probe_write(self, within: float) -> None:
        """Commit a tiny write within `within` seconds, or raise StoreUnavailable: the
        readiness probe (a store that answers reads may still be unable to write)."""

    # -- waits on keys and events kept for them (issue 15) ----------------------------------

    async def list_waits(
        self, *, trigger: str | None = None, cursor: str | None = None, limit: int = 100
    ) -> Page[Wait]:
        """Waits whose task still waits (dispatched on the wait's attempt), by task id,
        with the task's run and step; the cursor is the last task id shown."""

    async def list_kept_events(
        self,
        *,
        now: float,
        trigger: str | None = None,
        cursor: str | None = None,
        limit: int = 100,
    ) -> Page[KeptEvent]:
        """Kept events that expire after `now`, by event id then key, without payloads;
        the cursor is `event_id:key` of the last one shown."""

    async def prune_waits(self, limit: int) -> int:
        """Delete up to `limit` waits whose task no longer waits (finished, retried, gone)."""

    async def prune_kept_events(self, before: float, limit: int) -> int:
        """Delete up to `limit` kept events that expired before `before`."""

    async def deadlines_before(self, until: float) -> list[Task]:
        """Dispatched tasks of running runs whose deadline is before `until`."""

    async def replicas(self) -> dict[str, float]:
        """Every replica recorded, with the time its lease runs out."""

    async def listen(self, on_notice: NoticeFn) -> None:
        """From now until close, deliver the notices other processes' transactions leave
        (and a RECONNECTED notice after any gap in listening); a no-op for a store no other
        process can share."""

    async def next_deadline(self, after: float) -> float | None:
        """The earliest deadline of a dispatched task at or after `after`, if any."""
