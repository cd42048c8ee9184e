"""The strict JSON reader against arbitrary bytes and arbitrary JSON: never anything but its own error."""

from __future__ import annotations

import json
import math
from typing import Any

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from orchestrator.jsonread import MAX_DEPTH, MAX_NUMBER_CHARS, JsonRejected, check_strict, read_json
from tests.fuzz.budget import budget

scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(10**120), max_value=10**120)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text()
    | st.text(st.characters(min_codepoint=0xD7F0, max_codepoint=0xE010, exclude_categories=()))
)
values = st.recursive(
    scalars,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(), children, max_size=4)
    ),
    max_leaves=20,
)


def nested(value: Any, levels: int) -> Any:
    for level in range(levels):
        value = [value] if level % 2 else {"k": value}
    return value


deep_values = st.builds(nested, values, st.integers(min_value=0, max_value=MAX_DEPTH + 8))

# Near-JSON text: real JSON, cut, spliced with what strict JSON refuses, or with its own bytes.
tokens = st.sampled_from(
    [b"NaN", b"-Infinity", b"Infinity", b"1e999", b'"\\ud800"', b'"\\udc00\\ud800"', b"\xff",
     b"\xef\xbb\xbf", b"[", b"]", b"{", b"}", b",", b":", b'"', b"\\", b"-", b"0" * 101, b"\x00"]
)  # fmt: skip


@st.composite
def near_json(draw: st.DrawFn) -> bytes:
    text = json.dumps(draw(values), ensure_ascii=draw(st.booleans())).encode(
        "utf-8", "surrogatepass"
    )
    cut = draw(st.integers(min_value=0, max_value=len(text)))
    return text[:cut] + draw(tokens) + text[draw(st.integers(min_value=cut, max_value=len(text))) :]


ERRORS = {
    "invalid_utf8", "malformed_json", "json_too_deep", "json_number_too_large",
    "json_lone_surrogate", "json_duplicate_key",
}  # fmt: skip


def as_json_reads_it(value: Any) -> Any:
    """`value` with each surrogate pair in its strings joined, as JSON's escapes join them."""
    if isinstance(value, str):
        return value.encode("utf-16-le", "surrogatepass").decode("utf-16-le", "surrogatepass")
    if isinstance(value, list):
        return [as_json_reads_it(item) for item in value]
    if isinstance(value, dict):
        joined = {as_json_reads_it(key): as_json_reads_it(item) for key, item in value.items()}
        return joined if len(joined) == len(value) else COLLIDING_KEYS
    return value


COLLIDING_KEYS = object()  # two keys that JSON reads as one: a duplicate key in the text


def acceptable(value: Any, depth: int = 0) -> bool:
    """What the reader promises to accept, written independently of it: strict JSON values
    within the limits, whose numbers print short enough."""
    if isinstance(value, bool) or value is None:
        return True
    if isinstance(value, int):
        return len(str(value)) <= MAX_NUMBER_CHARS
    if isinstance(value, float):
        return math.isfinite(value)
    if isinstance(value, str):
        return not any(0xD800 <= ord(char) <= 0xDFFF for char in value)
    if depth >= MAX_DEPTH:
        return False
    if isinstance(value, list):
        return all(acceptable(item, depth + 1) for item in value)
    if not isinstance(value, dict):
        return False  # COLLIDING_KEYS
    return all(acceptable(key) and acceptable(item, depth + 1) for key, item in value.items())


@given(st.binary(max_size=300) | near_json())
@example(b"[" * 100_000)
@example(b'{"a":' + b"7" * 5000 + b"}")
@example(b'{"a":1,"a":2}')
@example(b'"\\ud83d\\ude00"')
@budget(quick=300, long=20_000)
def test_any_bytes_are_a_value_or_a_named_rejection(raw: bytes) -> None:
    """Whatever the bytes, the reader returns a value or raises JsonRejected with a name and detail."""
    try:
        value = read_json(raw)
    except JsonRejected as error:
        refused: JsonRejected | None = error
    else:
        refused = None
    if refused is not None:
        assert refused.error in ERRORS
        assert refused.detail
        return
    # What it accepts, a permissive parser reads the same, and strict JSON can write back.
    assert json.loads(raw) == value
    json.dumps(value, allow_nan=False)


@given(deep_values)
@example(nested(1, MAX_DEPTH))
@example(nested(1, MAX_DEPTH + 1))
@example(10**99)
@example(10**100)
@example({"pair": "\ud83d\ude00", "lone": "\ude00\ud83d"})
@example({"\ud83d\ude00": 1, "\N{GRINNING FACE}": 2})
@budget(quick=300, long=20_000)
def test_json_text_is_accepted_exactly_when_its_value_is_within_the_limits(value: Any) -> None:
    """The JSON text of a value reads back equal if the value is strict and within the limits, else is refused."""
    text = json.dumps(value).encode()  # as permissive as Python gets: NaN, lone surrogates
    expected = as_json_reads_it(value)
    if acceptable(expected):
        assert read_json(text) == expected
        assert check_strict(value)
    else:
        with pytest.raises(JsonRejected) as refused:
            read_json(text)
        assert refused.value.error in ERRORS
