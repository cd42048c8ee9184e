"""Frozen records of what the store holds: events, runs, tasks and history entries."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any, Self

from orchestrator.states import RunState, TaskState


@dataclass(frozen=True, slots=True)
class Event:
    """An immutable fact that starts a run; `dedup_key` makes a redelivery the same event.

    `traceparent` and `tracestate` are the W3C trace context the work it starts continues
    (the sender's, valid ones only; see tracing.py), as header values; None: no trace.
    """

    id: str
    trigger: str
    workflow: str
    received_at: float
    payload: dict[str, Any]
    dedup_key: str | None = None
    traceparent: str | None = None
    tracestate: str | None = None


@dataclass(frozen=True, slots=True)
class Run:
    """One execution of one workflow for one event; `spec` is the workflow as it was fired."""

    id: str
    workflow: str
    event_id: str
    status: RunState
    created_at: float
    spec: dict[str, Any]
    finished_at: float | None = None

    def replace(self, **changes: Any) -> Self:
        return replace(self, **changes)


@dataclass(frozen=True, slots=True)
class Task:
    """One handler invocation of one step for one item; `attempt` counts from 1.

    `due_at` is the not-before time of a pending task (retry backoff) or the deadline of a
    dispatched one; a timer-heap entry mirrors it. `awaiting` marks a dispatched task that
    was handed off to an external service and waits for its callback; `dispatch_tries`
    counts failed hand-offs of the current attempt; `wait_window` is how far each heartbeat
    pushes the deadline of a task awaiting its callback.

    Timing: `queued_at` is when the current attempt became ready to start, `started_at` when
    it started running (its dispatch, or for a plain-function handler the moment a worker
    thread took it up) and
    `finished_at` when it ended; the wait (queued -> started: limits, a free handler slot,
    backoff) is kept apart from the run (started -> finished).

    `owner` is the replica whose dispatcher holds the task while it is pending or its
    handler runs: if that replica dies, another takes the task over (replicas.py).
    """

    id: str
    run_id: str
    step: str
    item_key: str
    item: Any
    state: TaskState = TaskState.PENDING
    attempt: int = 1
    due_at: float | None = None
    started_at: float | None = None
    finished_at: float | None = None
    output: Any = None
    error: str | None = None
    awaiting: bool = False
    dispatch_tries: int = 0
    wait_window: float | None = None
    queued_at: float | None = None
    owner: str | None = None

    def replace(self, **changes: Any) -> Self:
        return replace(self, **changes)

    @property
    def ran(self) -> float | None:
        """Seconds the attempt ran, without the time it waited to start."""
        if self.started_at is None or self.finished_at is None:
            return None
        return max(0.0, self.finished_at - self.started_at)

    @property
    def waited(self) -> float | None:
        """Seconds the attempt waited to start (queued, rate-limited, backing off)."""
        if self.queued_at is None or self.started_at is None:
            return None
        return max(0.0, self.started_at - self.queued_at)

    @property
    def label(self) -> str:
        """How people read the task: step[item]."""
        return f"{self.step}[{self.item_key}]" if self.item_key else self.step


@dataclass(frozen=True, slots=True)
class HistoryEntry:
    """One line of the append-only history; `id` is assigned by the store, increasing."""

    type: str
    at: float
    run_id: str | None = None
    task_id: str | None = None
    step: str | None = None
    data: dict[str, Any] = field(default_factory=dict)
    id: int | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "type": self.type,
            "at": self.at,
            "run_id": self.run_id,
            "task_id": self.task_id,
            "step": self.step,
            "data": self.data,
        }
