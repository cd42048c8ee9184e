"""OpenAPI schemas of the completion-by-key listings: /admin/waits and /admin/kept-events."""

from __future__ import annotations

from typing import Any

NULLABLE_NUMBER = {"type": ["number", "null"]}

WAIT: dict[str, Any] = {
    "type": "object",
    "required": ["trigger", "key", "task_id", "attempt", "registered_at"],
    "properties": {
        "trigger": {"type": "string"},
        "key": {"type": "string"},
        "task_id": {"type": "string"},
        "attempt": {"type": "integer"},
        "run_id": {"type": ["string", "null"]},
        "step": {"type": ["string", "null"]},
        "registered_at": {"type": "number"},
        "deadline": NULLABLE_NUMBER,
    },
}
KEPT_EVENT: dict[str, Any] = {
    "type": "object",
    "required": ["trigger", "key", "event_id", "received_at", "expires", "outcome"],
    "properties": {
        "trigger": {"type": "string"},
        "key": {"type": "string"},
        "event_id": {"type": "string"},
        "received_at": {"type": "number"},
        "expires": {"type": "number"},
        "outcome": {"enum": ["succeeded", "failed"]},
        "error": {"type": ["string", "null"]},
    },
}
WAITS: dict[str, Any] = {
    "type": "object",
    "required": ["waits", "next_cursor"],
    "properties": {
        "waits": {"type": "array", "items": WAIT},
        "next_cursor": {"type": ["string", "null"]},
    },
}
KEPT_EVENTS: dict[str, Any] = {
    "type": "object",
    "required": ["kept_events", "next_cursor"],
    "properties": {
        "kept_events": {"type": "array", "items": KEPT_EVENT},
        "next_cursor": {"type": ["string", "null"]},
    },
}
