"""A provider's own callback body as a task's result: the `[services.NAME.result]` mapping.

Pure: the mapping and the parsed body (a JSON object, or a form's fields) in, the outcome,
output and error out. A status that is neither `succeeded_when` nor `failed_when` is
progress (Twilio's "queued", "sent"): the task keeps waiting. A body without the fields the
mapping names is refused with a reason, answered 422.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from orchestrator.fields import MISSING, lookup, one_of
from orchestrator.model import ResultMapping
from orchestrator.states import Outcome

ERROR_MAX = 2000
STATUS_SHOWN = 64


class MappingError(ValueError):
    """The body lacks what the mapping reads; the message is safe to show the sender."""


@dataclass(frozen=True, slots=True)
class Mapped:
    """`outcome` None: progress, with the `status` the body reported."""

    outcome: Outcome | None
    output: Any = None
    error: str | None = None
    status: Any = None


def map_result(mapping: ResultMapping, body: dict[str, Any]) -> Mapped:
    """The result the body reports, read through the mapping."""
    if mapping.status_field is None:
        return Mapped(Outcome.SUCCEEDED, _output(mapping, body))
    status = lookup(body, mapping.status_field)
    if status is MISSING:
        raise MappingError(f"the body has no {mapping.status_field!r} (the status_field)")
    if one_of(status, mapping.succeeded_when):
        return Mapped(Outcome.SUCCEEDED, _output(mapping, body), status=status)
    if one_of(status, mapping.failed_when):
        return Mapped(Outcome.FAILED, None, _error(mapping, body, status), status)
    return Mapped(None, status=_shown(status))


def _output(mapping: ResultMapping, body: dict[str, Any]) -> Any:
    if mapping.output_field is None:
        return body
    output = lookup(body, mapping.output_field)
    if output is MISSING:
        raise MappingError(f"the body has no {mapping.output_field!r} (the output_field)")
    return output


def _error(mapping: ResultMapping, body: dict[str, Any], status: Any) -> str:
    if mapping.error_field is not None:
        message = lookup(body, mapping.error_field)
        if isinstance(message, str) and message:
            return message[:ERROR_MAX]
        if message is not MISSING and message is not None:
            return str(message)[:ERROR_MAX]
    return f"{mapping.status_field} = {_shown(status)!r}"


def _shown(status: Any) -> Any:
    """A status as history keeps it: a long string cut, anything but a scalar named."""
    if isinstance(status, str):
        return status[:STATUS_SHOWN]
    if status is None or isinstance(status, bool | int | float):
        return status
    return f"({type(status).__name__})"
