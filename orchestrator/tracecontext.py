"""W3C Trace Context (Level 1): parse `traceparent` and `tracestate`, make the next hop's.

Pure functions, no I/O. The rules, from https://www.w3.org/TR/trace-context/:

* `traceparent` is `version-trace_id-parent_id-flags` in lowercase hex. Version `ff` is
  invalid; version `00` is exactly 55 characters; an all-zero trace id or parent id is
  invalid. A higher version is parsed as far as `00` goes (the same first four fields,
  then the end or a dash) and is sent on as `00`. Surrounding spaces and tabs are ignored.
  Two `traceparent` headers are invalid. An invalid `traceparent` means a new trace, and
  its `tracestate` is not parsed at all.
* `tracestate` is at most 32 comma-separated `key=value` members (empty members and
  whitespace around them are ignored; several headers are joined with commas). A key is
  `lcalpha 0*255(lcalpha / DIGIT / "_" / "-" / "*" / "/")` or `tenant@system` (tenant:
  lcalpha or digit, then at most 240 more; system: lcalpha, then at most 13 more). A value
  is 1 to 256 printable ASCII characters except `,` and `=`, not ending in a space. Any
  invalid member, a duplicate key or a 33rd member makes the whole header invalid, and it
  is dropped (as the W3C test suite expects), never the `traceparent` with it.
* On the way out the parent id is replaced by a new span id, the trace id and the sampled
  flag are kept, the other flags are zeroed (Level 1 defines only `sampled`), and
  `tracestate` is passed on unchanged, truncated by whole members to 512 characters if
  needed (members over 128 characters go first, then from the right).
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Iterable
from dataclasses import dataclass

SAMPLED = 0x01
VERSION = "00"
MAX_MEMBERS = 32
TRACESTATE_LIMIT = 512
LONG_MEMBER = 128

_HEX = frozenset("0123456789abcdef")
_KEY_CHARS = r"[a-z0-9_\-*/]"
_KEY = re.compile(
    rf"[a-z]{_KEY_CHARS}{{0,255}}|[a-z0-9]{_KEY_CHARS}{{0,240}}@[a-z]{_KEY_CHARS}{{0,13}}"
)
_VALUE = re.compile(r"[\x20-\x2b\x2d-\x3c\x3e-\x7e]{0,255}[\x21-\x2b\x2d-\x3c\x3e-\x7e]")
_SEPARATOR = re.compile(r"[ \t]*,[ \t]*")


@dataclass(frozen=True, slots=True)
class TraceParent:
    """Where a request sits in a trace: the trace, the caller's span, and the flags."""

    trace_id: str
    parent_id: str
    flags: int = 0

    @property
    def sampled(self) -> bool:
        return bool(self.flags & SAMPLED)

    def header(self) -> str:
        """The `traceparent` value, always version 00."""
        return f"{VERSION}-{self.trace_id}-{self.parent_id}-{self.flags:02x}"

    def child(self, span_id: str | None = None) -> TraceParent:
        """The `traceparent` of a call this span makes: a new parent id, the same trace."""
        return TraceParent(self.trace_id, span_id or new_span_id(), self.flags & SAMPLED)


TraceState = tuple[tuple[str, str], ...]
"""`tracestate` members in order, left-most (most recent vendor) first."""


@dataclass(frozen=True, slots=True)
class TraceContext:
    """A `traceparent` and its `tracestate`, as received or as sent on."""

    parent: TraceParent
    state: TraceState = ()

    def child(self, span_id: str | None = None) -> TraceContext:
        return TraceContext(self.parent.child(span_id), self.state)

    def headers(self) -> dict[str, str]:
        """The headers to send: `traceparent`, and `tracestate` unless it is empty."""
        headers = {"traceparent": self.parent.header()}
        state = format_tracestate(self.state)
        if state:
            headers["tracestate"] = state
        return headers


def new_span_id() -> str:
    """16 lowercase hex digits, never all zero."""
    return f"{secrets.randbits(64) or 1:016x}"


def new_trace_id() -> str:
    """32 lowercase hex digits, never all zero."""
    return f"{secrets.randbits(128) or 1:032x}"


def new_trace(sampled: bool = False) -> TraceContext:
    """A trace that starts here (sampled is off unless a recording decision was made)."""
    return TraceContext(TraceParent(new_trace_id(), new_span_id(), SAMPLED if sampled else 0))


def _is_hex(text: str, length: int) -> bool:
    return len(text) == length and _HEX.issuperset(text)


def parse_traceparent(value: str) -> TraceParent | None:
    """The header's trace position, or None where the spec says to restart the trace."""
    value = value.strip(" \t")
    version = value[:2]
    if not _is_hex(version, 2) or value[2:3] != "-" or version == "ff":
        return None
    if len(value) < 55 or (version == VERSION and len(value) != 55):
        return None
    trace_id, parent_id, flags = value[3:35], value[36:52], value[53:55]
    if value[35] != "-" or value[52] != "-" or value[55:56] not in ("", "-"):
        return None
    if not (_is_hex(trace_id, 32) and _is_hex(parent_id, 16) and _is_hex(flags, 2)):
        return None
    if trace_id == "0" * 32 or parent_id == "0" * 16:
        return None
    # Of a later version's flags only `sampled` is known; the rest may mean anything there.
    known = 0xFF if version == VERSION else SAMPLED
    return TraceParent(trace_id, parent_id, int(flags, 16) & known)


def parse_tracestate(values: Iterable[str]) -> TraceState:
    """The members of one or several `tracestate` headers; () if any part is invalid."""
    members: list[tuple[str, str]] = []
    seen: set[str] = set()
    for member in _SEPARATOR.split(",".join(values).strip(" \t")):
        if not member:
            continue
        key, equals, val = member.partition("=")
        if not equals or key in seen or not _KEY.fullmatch(key) or not _VALUE.fullmatch(val):
            return ()
        seen.add(key)
        members.append((key, val))
        if len(members) > MAX_MEMBERS:
            return ()
    return tuple(members)


def format_tracestate(state: TraceState, limit: int = TRACESTATE_LIMIT) -> str:
    """The `tracestate` value to send, cut by whole members to at most `limit` characters."""
    members = [f"{key}={value}" for key, value in state]
    while len(",".join(members)) > limit:
        longs = [index for index, member in enumerate(members) if len(member) > LONG_MEMBER]
        members.pop(longs[-1] if longs else -1)
    return ",".join(members)


def extract(headers: Iterable[tuple[str, str]]) -> TraceContext | None:
    """The trace context of a request's headers (any case), or None if there is none to
    continue: missing, duplicated or invalid `traceparent`."""
    parents: list[str] = []
    states: list[str] = []
    for name, value in headers:
        lowered = name.lower()
        if lowered == "traceparent":
            parents.append(value)
        elif lowered == "tracestate":
            states.append(value)
    if len(parents) != 1:
        return None
    parent = parse_traceparent(parents[0])
    if parent is None:
        return None
    return TraceContext(parent, parse_tracestate(states))


def continue_from(headers: Iterable[tuple[str, str]], sampled: bool = False) -> TraceContext:
    """The context to record and pass on for a request: its own if valid, else a new trace."""
    found = extract(headers)
    return found if found is not None else new_trace(sampled)
