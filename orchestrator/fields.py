"""Reading a field of a JSON or form body by its dotted path, and comparing values exactly.

A path is names joined by dots (`data.object.id`); a segment of digits indexes a list
(`pull_requests.0.id`). A path that leads nowhere (a missing key, an index past the end, a
step into a string) finds MISSING, never an error: bodies come from outside. Values given
in config match a field only when equal *and* of the same type, so a status of `true`
never matches the value `1`, nor `"1"`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Final


class _Missing:
    def __repr__(self) -> str:
        return "MISSING"


MISSING: Final = _Missing()


def lookup(value: Any, path: str) -> Any:
    """The value at `path` inside `value`, or MISSING."""
    for segment in path.split("."):
        if isinstance(value, Mapping):
            if segment not in value:
                return MISSING
            value = value[segment]
        elif isinstance(value, list) and segment.isdigit() and segment.isascii():
            index = int(segment)
            if index >= len(value):
                return MISSING
            value = value[index]
        else:
            return MISSING
    return value


def same(found: Any, wanted: Any) -> bool:
    """`found` equals `wanted` and is of the same type (bool is not int)."""
    return type(found) is type(wanted) and found == wanted


def one_of(found: Any, wanted: Sequence[Any]) -> bool:
    return any(same(found, value) for value in wanted)


def matches(value: Any, when: Mapping[str, Sequence[Any]]) -> bool:
    """Whether every field named in `when` holds one of its listed values (empty: True)."""
    return all(one_of(lookup(value, path), wanted) for path, wanted in when.items())
