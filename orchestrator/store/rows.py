"""Records to and from database rows: shared by every SQL backend.

A row is anything that answers `row["column"]` (sqlite3.Row, asyncpg.Record). JSON columns
hold compact JSON text; a run's spec is parsed afresh for every row, so no two records
share a mutable dict.
"""

from __future__ import annotations

import functools
import json
from typing import Any, Protocol

from orchestrator.barrier import Barrier, BarrierStatus
from orchestrator.model import JoinPolicy
from orchestrator.records import Event, HistoryEntry, Run, Task
from orchestrator.states import RunState, TaskState
from orchestrator.store.base import KeptEvent, Wait

# Enum(value) goes through EnumMeta.__call__: a dict is several times faster per row.
TASK_STATES = {state.value: state for state in TaskState}
RUN_STATES = {state.value: state for state in RunState}
BARRIER_STATES = {status.value: status for status in BarrierStatus}


class Row(Protocol):
    """A database row: sqlite3.Row, asyncpg.Record."""

    def __getitem__(self, key: str, /) -> Any: ...


def dumps(value: Any) -> str:
    """Compact JSON text for a JSON column."""
    return json.dumps(value, separators=(",", ":"))


def dumps_or_none(value: Any) -> str | None:
    return None if value is None else dumps(value)


def loads_or_none(text: str | None) -> Any:
    return None if text is None else _loads(text)


def _loads(text: str) -> Any:
    """json.loads, without parsing the commonest values of all."""
    return None if text == "null" else json.loads(text)


def event_from_row(row: Row) -> Event:
    return Event(
        id=row["id"],
        trigger=row["trigger"],
        workflow=row["workflow"],
        received_at=row["received_at"],
        payload=json.loads(row["payload"]),
        dedup_key=row["dedup_key"],
        traceparent=row["traceparent"],
        tracestate=row["tracestate"],
    )


def run_from_row(row: Row) -> Run:
    return Run(
        id=row["id"],
        workflow=row["workflow"],
        event_id=row["event_id"],
        status=RUN_STATES[row["status"]],
        created_at=row["created_at"],
        finished_at=row["finished_at"],
        spec=json.loads(row["spec"]),
    )


@functools.lru_cache(maxsize=256)
def policy_from_json(text: str) -> JoinPolicy:
    """A join policy, parsed once per distinct text (policies are frozen models)."""
    return JoinPolicy.model_validate_json(text)


def barrier_from_row(row: Row) -> Barrier:
    return Barrier(
        run_id=row["run_id"],
        step=row["step"],
        expected=row["expected"],
        required=row["required"],
        succeeded=row["succeeded"],
        failed=row["failed"],
        status=BARRIER_STATES[row["status"]],
        policy=policy_from_json(row["policy"]),
        deadline_at=row["deadline_at"],
        decided_at=row["decided_at"],
        reason=row["reason"],
    )


def task_from_row(row: Row) -> Task:
    return Task(
        id=row["id"],
        run_id=row["run_id"],
        step=row["step"],
        item_key=row["item_key"],
        item=_loads(row["item"]),
        state=TASK_STATES[row["state"]],
        attempt=row["attempt"],
        due_at=row["due_at"],
        started_at=row["started_at"],
        finished_at=row["finished_at"],
        output=loads_or_none(row["output"]),
        error=row["error"],
        awaiting=bool(row["awaiting"]),
        dispatch_tries=row["dispatch_tries"],
        wait_window=row["wait_window"],
        queued_at=row["queued_at"],
        owner=row["owner"],
    )


def history_from_row(row: Row) -> HistoryEntry:
    return HistoryEntry(
        id=row["id"],
        at=row["at"],
        type=row["type"],
        run_id=row["run_id"],
        task_id=row["task_id"],
        step=row["step"],
        data=json.loads(row["data"]),
    )


def task_state_params(task: Task) -> tuple[Any, ...]:
    """The columns a task write sets, in the order of the backends' UPDATE statements."""
    return (
        task.state.value,
        task.attempt,
        task.due_at,
        task.started_at,
        task.finished_at,
        dumps_or_none(task.output),
        task.error,
        task.awaiting,
        task.dispatch_tries,
        task.wait_window,
        task.queued_at,
        task.owner,
    )


def wait_from_row(row: Row, prefix: str = "", *, with_task: bool = False) -> Wait:
    """A wait from a row of the waits table, its columns named `{prefix}column` (read
    beside a task's); `with_task`: the row also has the task's run_id and step."""
    return Wait(
        trigger=row[f"{prefix}trigger"],
        key=row[f"{prefix}key"],
        task_id=row[f"{prefix}task_id"],
        attempt=row[f"{prefix}attempt"],
        registered_at=row[f"{prefix}registered_at"],
        deadline=row[f"{prefix}deadline"],
        run_id=row["run_id"] if with_task else None,
        step=row["step"] if with_task else None,
    )


def kept_from_row(row: Row, *, with_payload: bool = False) -> KeptEvent:
    """A kept event from a row of kept_events; `with_payload`: joined with its event's."""
    return KeptEvent(
        trigger=row["trigger"],
        key=row["key"],
        event_id=row["event_id"],
        received_at=row["received_at"],
        expires=row["expires"],
        outcome=row["outcome"],
        error=row["error"],
        payload=json.loads(row["payload"]) if with_payload else None,
    )
