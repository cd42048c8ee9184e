"""Form-encoded bodies are read strictly: what urlencode writes comes back, the rest is refused."""

from __future__ import annotations

from urllib.parse import urlencode

import pytest
from hypothesis import given
from hypothesis import strategies as st

from orchestrator.forms import (
    MAX_FIELDS,
    FormRejected,
    form_object,
    is_form,
    parse_form,
)

printable = st.text(
    st.characters(codec="utf-8", categories=("L", "N", "P", "S", "Zs")), max_size=30
)


@given(st.lists(st.tuples(printable.filter(bool), printable), max_size=20))
def test_whatever_urlencode_writes_parses_back_to_the_same_pairs(pairs):
    """The fields a form sender encodes are the fields read, in order."""
    assert parse_form(urlencode(pairs).encode()) == pairs


def test_plus_is_a_space_and_escapes_decode_as_utf8():
    """`+` and `%20` are spaces; `%C3%A9` is é."""
    assert parse_form(b"To=%2B1+555&Body=caf%C3%A9%20ok&Empty=") == [
        ("To", "+1 555"),
        ("Body", "café ok"),
        ("Empty", ""),
    ]


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (b"a=1&&b=2", "not key=value"),
        (b"flag", "not key=value"),
        (b"=1", "not key=value"),
        (b"a=1&", "not key=value"),
        (b"a=%zz", "percent-encoded"),
        (b"a=%4", "percent-encoded"),
        (b"a=b c", "percent-encoded"),
        (b'a="quoted"', "percent-encoded"),
        ("a=é".encode(), "ASCII"),
        (b"a=%FF", "UTF-8"),
        (b"a=%00", "control character"),
        (b"a=%1B%5B31m", "control character"),
    ],
)
def test_anything_but_a_strict_form_is_refused_with_its_reason(body, reason):
    """Malformed pairs, bad escapes, raw bytes and control characters are each a 400."""
    with pytest.raises(FormRejected, match=reason) as refused:
        parse_form(body)
    assert refused.value.error == "invalid_form"


def test_a_form_holds_a_bounded_number_of_fields():
    """More than MAX_FIELDS pairs are refused before any is decoded."""
    assert len(parse_form(b"&".join([b"a=1"] * MAX_FIELDS))) == MAX_FIELDS
    with pytest.raises(FormRejected, match="at most"):
        parse_form(b"&".join([b"a=1"] * (MAX_FIELDS + 1)))


def test_as_an_object_a_field_given_twice_is_refused():
    """form_object makes a dict, and refuses a key that appears twice."""
    assert form_object([("a", "1"), ("b", "2")]) == {"a": "1", "b": "2"}
    with pytest.raises(FormRejected) as refused:
        form_object([("a", "1"), ("a", "2")])
    assert refused.value.error == "duplicate_field"


@pytest.mark.parametrize(
    ("content_type", "form"),
    [
        ("application/x-www-form-urlencoded", True),
        ("Application/X-WWW-Form-Urlencoded; charset=utf-8", True),
        ("application/json", False),
        ("multipart/form-data; boundary=x", False),
        (None, False),
    ],
)
def test_a_form_is_recognised_by_its_content_type(content_type, form):
    """Only application/x-www-form-urlencoded (any case, any parameters) is a form."""
    assert is_form(content_type) is form
