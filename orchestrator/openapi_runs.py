"""The schemas of GET /admin/runs/{id} in the OpenAPI document: a run, its tasks (each
one's wait apart from its run), their earlier attempts and the run's timing.

tests/api/test_run_timing.py checks real answers against them, field for field.
"""

from __future__ import annotations

from typing import Any

from orchestrator.states import RunState, TaskState

OBJECT = {"type": "object"}


def ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _nullable(kind: str, description: str) -> dict[str, Any]:
    return {"type": [kind, "null"], "description": description}


def _number(description: str) -> dict[str, Any]:
    return {"type": "number", "description": description}


STRING = {"type": "string"}
TASK_STATES = [state.value for state in TaskState]
ATTEMPT = {
    "type": "object",
    "description": "an earlier attempt of a task, replaced by a retry",
    "required": [
        "attempt",
        "queued_at",
        "started_at",
        "finished_at",
        "waited",
        "duration",
        "failed",
    ],
    "properties": {
        "attempt": {"type": "integer"},
        "queued_at": _number("when it became ready to start (epoch seconds)"),
        "started_at": _number("when it started (its dispatch)"),
        "finished_at": _number("when it failed"),
        "waited": _number("seconds from queued_at to started_at"),
        "duration": _number("seconds it ran, from started_at to finished_at"),
        "failed": {"type": "boolean"},
    },
}
TASK = {
    "type": "object",
    "required": [
        "id", "step", "item", "state", "attempt", "queued_at", "started_at", "finished_at",
        "waited", "duration", "error", "output", "earlier_attempts",
    ],
    "properties": {
        "id": STRING,
        "step": STRING,
        "item": {"type": "string", "description": "the fan-out item's key ('' for one task)"},
        "state": {"enum": TASK_STATES},
        "attempt": {"type": "integer", "description": "the current attempt, from 1"},
        "queued_at": _nullable(
            "number", "when the current attempt became ready to start: created, backed off, "
            "sent again or retried by an operator (epoch seconds)",
        ),
        "started_at": _nullable(
            "number", "when it started running: a local handler's first instruction, else its dispatch",
        ),
        "finished_at": _nullable("number", "when it ended"),
        "waited": _nullable(
            "number", "seconds from queued_at to started_at: limits, a free handler slot, a "
            "worker thread, a retry's backoff",
        ),
        "duration": _nullable(
            "number", "seconds the current attempt ran, from started_at to finished_at; never "
            "the wait",
        ),
        "error": {"type": ["string", "null"]},
        "output": {},
        "earlier_attempts": {"type": "array", "items": ref("Attempt")},
    },
}  # fmt: skip
SEGMENT = {
    "type": "object",
    "description": "a stretch of a task on the critical path: waiting, or running",
    "required": ["task", "step", "kind", "started", "finished", "seconds", "failed"],
    "properties": {
        "task": {"type": "string", "description": "step[item]"},
        "step": STRING,
        "kind": {"enum": ["waited", "ran"]},
        "started": _number("epoch seconds"),
        "finished": _number("epoch seconds; the next segment starts here"),
        "seconds": {"type": "number"},
        "failed": {"type": "boolean", "description": "a run that ended in a failed attempt"},
    },
}
TIMING = {
    "type": "object",
    "description": "speedup = sequential_seconds / active_seconds, and sequential_seconds = "
    "run_seconds + paced_seconds",
    "required": [
        "wall_seconds", "paused_seconds", "active_seconds", "run_seconds", "wait_seconds",
        "paced_seconds", "sequential_seconds", "speedup", "tasks", "attempts", "task_seconds",
        "slowest", "critical_path",
    ],
    "properties": {
        "wall_seconds": _number("from the run's start to its end (or its last finish)"),
        "paused_seconds": _number("time it stood failed or cancelled until an operator's retry"),
        "active_seconds": _number("wall_seconds - paused_seconds"),
        "run_seconds": _number("sum of run times over every attempt, failed ones included"),
        "wait_seconds": _number("sum of every attempt's wait (queued -> started)"),
        "paced_seconds": _number(
            "waiting that running one after another would do too: retry backoff, and the "
            "gaps a step's rate limit forces between its starts"
        ),
        "sequential_seconds": _number("run_seconds + paced_seconds: one after another"),
        "speedup": _number("sequential_seconds / active_seconds (1 for no time at all)"),
        "tasks": {"type": "integer", "description": "tasks with a finished attempt"},
        "attempts": {"type": "integer", "description": "finished attempts, retries included"},
        "task_seconds": _number("the same as run_seconds (its name before waits were apart)"),
        "slowest": {"oneOf": [ref("Segment"), {"type": "null"}]},
        "critical_path": {"type": "array", "items": ref("Segment")},
    },
}  # fmt: skip
RUN_DETAIL = {
    "type": "object",
    "required": [
        "id", "workflow", "event_id", "status", "created_at", "finished_at", "barriers",
        "tasks", "timing",
    ],
    "properties": {
        "id": STRING,
        "workflow": STRING,
        "event_id": STRING,
        "status": {"enum": [state.value for state in RunState]},
        "created_at": {"type": "number"},
        "finished_at": {"type": ["number", "null"]},
        "barriers": {"type": "array", "items": OBJECT},
        "tasks": {"type": "array", "items": ref("Task")},
        "timing": ref("Timing"),
    },
}  # fmt: skip
