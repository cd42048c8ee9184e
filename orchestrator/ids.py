"""Sortable, unguessable ids: 48 bits of milliseconds then 80 random bits, in Crockford base32.

Ids that sort by creation time give stable cursor pagination without a second index. Within
one process they are monotonic (as ULIDs are): an id made in the same millisecond as the
last one of its prefix is that one plus one, so two runs of an event fired in one
millisecond still list oldest first.
"""

from __future__ import annotations

import secrets
import time

_ALPHABET = "0123456789abcdefghjkmnpqrstvwxyz"


_last: dict[str, int] = {}


def new_id(prefix: str, now: float | None = None) -> str:
    """A new id such as `run_01jd...`; `now` (epoch seconds) fixes the time part for tests."""
    millis = round((time.time() if now is None else now) * 1000) & ((1 << 48) - 1)
    value = (millis << 80) | secrets.randbits(80)
    last = _last.get(prefix, 0)
    if value >> 80 == last >> 80 and value <= last:
        value = last + 1
    _last[prefix] = value
    return _encode(prefix, value)


def time_floor(prefix: str, at: float) -> str:
    """The smallest id made at or after `at`: time filters become id ranges on the key."""
    millis = max(0, round(at * 1000)) & ((1 << 48) - 1)
    return _encode(prefix, millis << 80)


def _encode(prefix: str, value: int) -> str:
    chars = []
    for _ in range(26):
        value, digit = divmod(value, 32)
        chars.append(_ALPHABET[digit])
    return f"{prefix}_{''.join(reversed(chars))}"
