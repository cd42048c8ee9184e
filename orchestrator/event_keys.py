"""What an inbound event means for tasks waiting on a key: which keys, and which outcome.

Pure functions of the trigger's webhook spec and the event's payload. A key is a string
(or a whole number, as GitHub's ids are, read as its decimal digits) of 1 to KEY_MAX
printable characters; anything else at a `completes` path is no key. An event completes
nothing unless it has a key and passes `completes_when`; it then succeeds the tasks it
completes, or fails them when it also matches `fails_when`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from orchestrator.fields import MISSING, lookup, matches
from orchestrator.model import WebhookSpec
from orchestrator.states import Outcome

KEY_MAX = 256
ERROR_MAX = 2000


@dataclass(frozen=True, slots=True)
class EventMatch:
    """The keys an event completes and what it says: succeeded, or failed with `error`."""

    keys: tuple[str, ...]
    outcome: Outcome
    error: str | None = None


def key_problem(key: object) -> str | None:
    """Why `key` cannot be waited on, or None: a string of 1 to 256 printable characters."""
    if not isinstance(key, str):
        return f"a key is a string, not {type(key).__name__}"
    if not key or len(key) > KEY_MAX:
        return f"a key has 1 to {KEY_MAX} characters, not {len(key)}"
    if not key.isprintable():
        return "a key holds printable characters only"
    return None


def as_key(value: Any) -> str | None:
    """The key a payload field holds, or None (absent, too long, not a string or number)."""
    if isinstance(value, int) and not isinstance(value, bool):
        value = str(value)
    return value if key_problem(value) is None else None


def event_keys(webhook: WebhookSpec, payload: Any) -> tuple[str, ...]:
    """The distinct keys at the `completes` paths, in the order the paths are listed."""
    found = (as_key(lookup(payload, path)) for path in webhook.completes)
    return tuple(dict.fromkeys(key for key in found if key is not None))


def match_event(webhook: WebhookSpec, payload: Any) -> EventMatch | None:
    """What the event does to waiting tasks, or None if it completes nothing."""
    if not webhook.completes:
        return None
    keys = event_keys(webhook, payload)
    if not keys or not matches(payload, webhook.completes_when):
        return None
    if not webhook.fails_when or not matches(payload, webhook.fails_when):
        return EventMatch(keys, Outcome.SUCCEEDED)
    return EventMatch(keys, Outcome.FAILED, failure_message(webhook, payload))


def failure_message(webhook: WebhookSpec, payload: Any) -> str:
    """The task's error: the `error_field` if it holds text, else what matched fails_when."""
    if webhook.error_field is not None:
        message = lookup(payload, webhook.error_field)
        if isinstance(message, str) and message:
            return message[:ERROR_MAX]
    said = ", ".join(
        f"{path} = {lookup(payload, path)!r}"[:200]
        for path in webhook.fails_when
        if lookup(payload, path) is not MISSING
    )
    return f"the event says the work failed ({said})"
