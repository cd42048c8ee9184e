"""W3C Trace Context Level 1: every rule of traceparent and tracestate, as examples and properties."""

from __future__ import annotations

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from orchestrator.tracecontext import (
    TraceContext,
    TraceParent,
    continue_from,
    extract,
    format_tracestate,
    new_trace,
    parse_traceparent,
    parse_tracestate,
)

TRACE = "12345678901234567890123456789012"
PARENT = "1234567890123456"
VALID = f"00-{TRACE}-{PARENT}-01"
HEX = "0123456789abcdef"


def hex_id(length: int) -> st.SearchStrategy[str]:
    return st.text(alphabet=HEX, min_size=length, max_size=length).filter(
        lambda text: text != "0" * length
    )


parents = st.builds(TraceParent, hex_id(32), hex_id(16), st.integers(0, 255))
simple_keys = st.from_regex(r"[a-z][a-z0-9_\-*/]{0,20}", fullmatch=True)
tenant_keys = st.from_regex(r"[a-z0-9][a-z0-9_\-*/]{0,10}@[a-z][a-z0-9_\-*/]{0,13}", fullmatch=True)
values = st.from_regex(
    r"[\x20-\x2b\x2d-\x3c\x3e-\x7e]{0,30}[\x21-\x2b\x2d-\x3c\x3e-\x7e]", fullmatch=True
)
states = st.lists(
    st.tuples(simple_keys | tenant_keys, values), max_size=32, unique_by=lambda kv: kv[0]
).map(tuple)
ows = st.text(alphabet=" \t", max_size=3)


# --- traceparent -------------------------------------------------------------------------


@given(parents)
def test_a_version_00_header_round_trips(parent: TraceParent) -> None:
    """Any valid trace id, parent id and flags come back exactly from their header."""
    assert parse_traceparent(parent.header()) == parent


@given(parents, ows, ows)
def test_spaces_and_tabs_around_the_value_are_ignored(
    parent: TraceParent, before: str, after: str
) -> None:
    """Optional whitespace around the header value does not change it."""
    assert parse_traceparent(before + parent.header() + after) == parent


@given(parents, st.integers(0, 54), st.characters())
def test_one_wrong_character_anywhere_restarts_the_trace(
    parent: TraceParent, position: int, replacement: str
) -> None:
    """A non-lowercase-hex digit in a field, or anything but a dash between fields: invalid."""
    header = parent.header()
    dash = position in (2, 35, 52)
    assume(replacement != "-" if dash else replacement not in HEX)
    assume(not (replacement in " \t" and position in (0, 54)))  # that is whitespace, stripped
    assert parse_traceparent(header[:position] + replacement + header[position + 1 :]) is None


@given(parents, st.integers(0, 55), st.sampled_from(HEX + "-"))
def test_version_00_is_exactly_55_characters(
    parent: TraceParent, position: int, extra: str
) -> None:
    """One character more, anywhere, or one less: invalid for version 00."""
    header = parent.header()
    assert parse_traceparent(header[:position] + extra + header[position:]) is None
    if position < 55:
        assert parse_traceparent(header[:position] + header[position + 1 :]) is None


@given(st.text())
def test_any_text_parses_or_is_refused_without_raising(text: str) -> None:
    """Whatever arrives, the answer is a TraceParent or None, never an exception."""
    found = parse_traceparent(text)
    assert found is None or parse_traceparent(found.header()) == found


@given(hex_id(16), st.integers(0, 255))
def test_an_all_zero_trace_id_is_invalid(parent_id: str, flags: int) -> None:
    """Trace id 000...0 is forbidden."""
    assert parse_traceparent(f"00-{'0' * 32}-{parent_id}-{flags:02x}") is None


@given(hex_id(32), st.integers(0, 255))
def test_an_all_zero_parent_id_is_invalid(trace_id: str, flags: int) -> None:
    """Parent id 0000000000000000 is forbidden."""
    assert parse_traceparent(f"00-{trace_id}-{'0' * 16}-{flags:02x}") is None


@given(parents, st.integers(1, 254), st.none() | st.text(max_size=40))
def test_a_later_version_is_read_as_far_as_00_goes(
    parent: TraceParent, version: int, tail: str | None
) -> None:
    """Versions 01-fe: the four known fields, then the end or a dash and anything."""
    header = f"{version:02x}" + parent.header()[2:] + ("" if tail is None else "-" + tail)
    found = parse_traceparent(header)
    assert found == TraceParent(parent.trace_id, parent.parent_id, parent.flags & 1)
    assert found is not None
    assert found.child().header().startswith("00-"), "sent on as the version we know"


@pytest.mark.parametrize(
    "header",
    [
        f"ff-{TRACE}-{PARENT}-01",  # version ff is forbidden
        f"cc-{TRACE}-{PARENT}-01.what-the-future-will-be-like",  # flags not followed by a dash
        f"00-{TRACE}-{PARENT}-01-what-the-future-will-be-like",  # 00 has exactly four fields
        f"00-{TRACE}-{PARENT}-01.",
        f".0-{TRACE}-{PARENT}-01",
        f"0.-{TRACE}-{PARENT}-01",
        f"000-{TRACE}-{PARENT}-01",
        f"0-{TRACE}-{PARENT}-01",
        f"00-{TRACE}3-{PARENT}-01",
        f"00-{TRACE[:-1]}-{PARENT}-01",
        f"00-{TRACE}-{PARENT}7-01",
        f"00-{TRACE}-{PARENT[:-1]}-01",
        f"00-{TRACE}-{PARENT}-001",
        f"00-{TRACE}-{PARENT}-1",
        f"00-{TRACE}-{PARENT}-.0",
        f"00-4BF92F3577B34DA6A3CE929D0E0E4736-{PARENT}-01",
        f"00-{TRACE}-00F067AA0BA902B7-01",
        f"cc-{TRACE}-{PARENT}",  # shorter than 55
        "",
    ],
)
def test_the_w3c_test_suite_invalid_headers_restart_the_trace(header: str) -> None:
    """The invalid traceparent values of the W3C test harness are all refused."""
    assert parse_traceparent(header) is None


def test_the_w3c_test_suite_valid_future_versions_are_continued() -> None:
    """Version cc with and without trailing fields keeps the trace id."""
    for header in (
        f"cc-{TRACE}-{PARENT}-01",
        f"cc-{TRACE}-{PARENT}-01-what-the-future-will-be-like",
    ):
        found = parse_traceparent(header)
        assert found is not None
        assert (found.trace_id, found.parent_id, found.sampled) == (TRACE, PARENT, True)


@given(parents)
def test_a_child_keeps_the_trace_and_the_sampled_flag_only(parent: TraceParent) -> None:
    """The next hop: same trace id, a new nonzero parent id, other flags zeroed, version 00."""
    child = parent.child()
    assert child.trace_id == parent.trace_id
    assert child.parent_id != "0" * 16
    assert len(child.parent_id) == 16
    assert set(child.parent_id) <= set(HEX)
    assert child.flags == parent.flags & 1
    assert parse_traceparent(child.header()) == child


def test_children_get_distinct_span_ids() -> None:
    """Each call a span makes is its own span: 100 children, 100 parent ids."""
    parent = TraceParent(TRACE, PARENT, 1)
    assert len({parent.child().parent_id for _ in range(100)}) == 100


def test_a_new_trace_is_valid_and_unsampled_by_default() -> None:
    """A trace started here has fresh ids and leaves sampling off unless asked."""
    started = new_trace()
    assert parse_traceparent(started.parent.header()) == started.parent
    assert not started.parent.sampled
    assert new_trace(sampled=True).parent.sampled
    assert started.state == ()


# --- tracestate --------------------------------------------------------------------------


@given(states)
def test_a_tracestate_round_trips(state: tuple[tuple[str, str], ...]) -> None:
    """Any list of at most 32 valid, distinct members comes back in order."""
    assert parse_tracestate([format_tracestate(state, limit=10**6)]) == state


@given(states, st.data())
def test_whitespace_empty_members_and_split_headers_change_nothing(
    state: tuple[tuple[str, str], ...], data: st.DataObject
) -> None:
    """OWS around commas, empty members and a split into several headers are all the same list."""
    members = [f"{key}={value}" for key, value in state]
    pieces = []
    for member in members:
        pieces.append(data.draw(ows) + member + data.draw(ows))
        if data.draw(st.booleans()):
            pieces.append(data.draw(ows))  # an empty member
    joined = ",".join(pieces)
    cut = data.draw(st.integers(0, len(joined)))
    comma = joined.find(",", cut)
    headers = [joined] if comma < 0 else [joined[:comma], joined[comma + 1 :]]
    assert parse_tracestate(headers) == state


@given(states.filter(lambda state: len(state) >= 1), st.data())
def test_a_duplicate_key_drops_the_whole_header(
    state: tuple[tuple[str, str], ...], data: st.DataObject
) -> None:
    """Only one entry per key: a repeated key makes the tracestate invalid."""
    key, _ = data.draw(st.sampled_from(state))
    members = [*state, (key, "again")]
    assume(len(members) <= 32)
    text = ",".join(f"{k}={v}" for k, v in members)
    assert parse_tracestate([text]) == ()


@given(st.lists(simple_keys, min_size=33, max_size=40, unique=True))
def test_more_than_32_members_drop_the_whole_header(keys: list[str]) -> None:
    """The 33rd member makes the list invalid."""
    assert parse_tracestate([",".join(f"{key}=1" for key in keys)]) == ()


@given(
    states,
    st.sampled_from(
        [
            "FOO=1",
            "foo =1",
            "foo.bar=1",
            "foo@=1",
            "@foo=1",
            "foo@@bar=1",
            "foo@bar@baz=1",
            "foo=bar=baz",
            "foo=",
            "=1",
            "foo",
            "foo=a\tb",
            "1foo=1",
            "foo@1bar=1",
            "f\u00e9=1",
        ]
    ),
    st.data(),
)
def test_one_invalid_member_drops_the_whole_header(
    state: tuple[tuple[str, str], ...], bad: str, data: st.DataObject
) -> None:
    """An invalid key or value anywhere in the list: the tracestate is dropped."""
    members = [f"{key}={value}" for key, value in state]
    members.insert(data.draw(st.integers(0, len(members))), bad)
    assert parse_tracestate([",".join(members)]) == ()


@pytest.mark.parametrize(
    ("member", "valid"),
    [
        ("z" * 256 + "=1", True),
        ("z" * 257 + "=1", False),
        ("t" * 241 + "@" + "v" * 14 + "=1", True),
        ("t" * 242 + "@v=1", False),
        ("t@" + "v" * 15 + "=1", False),
        ("0tenant@vendor=1", True),  # a tenant id may start with a digit
        ("foo=" + "x" * 256, True),
        ("foo=" + "x" * 257, False),
        ("foo= leading", True),
    ],
)
def test_key_and_value_length_limits(member: str, valid: bool) -> None:
    """Keys up to 256 (tenant 241, system 14), values up to 256 characters."""
    assert bool(parse_tracestate(["foo0=1", member])) is valid


def test_every_allowed_character_is_kept() -> None:
    """The W3C harness's all-characters key and value survive unchanged."""
    key = "abcdefghijklmnopqrstuvwxyz0123456789_-*/"
    value = "".join(map(chr, [*range(0x20, 0x2C), *range(0x2D, 0x3D), *range(0x3E, 0x7F)]))
    assert parse_tracestate([f"{key}={value}"]) == ((key, value),)
    assert parse_tracestate([f"{key}@a-z0-9_-*/={value}"]) == ((f"{key}@a-z0-9_-*/", value),)


def test_leading_spaces_of_a_value_are_kept_and_trailing_ones_dropped() -> None:
    """Trailing whitespace is optional whitespace; leading spaces belong to the value."""
    assert parse_tracestate(["foo=  1 \t"]) == (("foo", "  1"),)


def test_empty_tracestate_headers_are_accepted() -> None:
    """An empty header, or an empty one beside a real one, is no error."""
    assert parse_tracestate([""]) == ()
    assert parse_tracestate(["", "foo=1"]) == (("foo", "1"),)
    assert parse_tracestate(["foo=1", ""]) == (("foo", "1"),)


short_values = st.text(alphabet="abcdefghijklmnopqrstuvwxyz", min_size=1, max_size=40)
long_values = st.text(alphabet="abcdefghijklmnopqrstuvwxyz", min_size=130, max_size=200)


@given(
    st.lists(
        st.tuples(simple_keys, short_values | long_values),
        min_size=8,
        max_size=32,
        unique_by=lambda kv: kv[0],
    )
)
def test_a_long_tracestate_is_cut_by_whole_members(members: list[tuple[str, str]]) -> None:
    """At most 512 characters go out: long members (over 128) first, then from the right."""
    state = tuple(members)
    sent = format_tracestate(state)
    assert len(sent) <= 512
    kept = parse_tracestate([sent])
    assert list(kept) == [member for member in state if member in kept], "order is kept"
    long = [m for m in state if len(f"{m[0]}={m[1]}") > 128]
    short = [m for m in state if m not in long]
    if any(m not in kept for m in short):
        assert not any(m in kept for m in long), "long members go before short ones"
        assert [m for m in kept if m in short] == short[: len(kept)], "short ones from the right"
    if len(",".join(f"{k}={v}" for k, v in state)) <= 512:
        assert kept == state


# --- headers -----------------------------------------------------------------------------


def test_headers_are_found_in_any_case_and_several_tracestates_are_joined() -> None:
    """TraceParent / TRACESTATE in any case; tracestate headers joined in order."""
    found = extract(
        [("TraceParent", VALID), ("TRACESTATE", "foo=1,bar=2"), ("tracestate", "baz=3")]
    )
    assert found == TraceContext(
        TraceParent(TRACE, PARENT, 1), (("foo", "1"), ("bar", "2"), ("baz", "3"))
    )


@pytest.mark.parametrize(
    "headers",
    [
        [],
        [("traceparent", VALID), ("traceparent", VALID.replace("12-", "11-"))],  # duplicated
        [("trace-parent", VALID)],
        [("traceparent", f"00-{'0' * 32}-{PARENT}-01"), ("tracestate", "foo=1")],
    ],
)
def test_no_context_to_continue(headers: list[tuple[str, str]]) -> None:
    """Missing, duplicated, misnamed or invalid traceparent: nothing to continue."""
    assert extract(headers) is None
    assert continue_from(headers).parent.trace_id not in (TRACE, "0" * 32)


def test_a_bad_tracestate_never_costs_the_traceparent() -> None:
    """An invalid tracestate is dropped; the traceparent is still continued."""
    found = extract([("traceparent", VALID), ("tracestate", "foo=1,foo=2")])
    assert found == TraceContext(TraceParent(TRACE, PARENT, 1), ())


def test_the_headers_sent_on_carry_a_child_and_the_state_unchanged() -> None:
    """The next hop gets the same trace, a new parent id, and the tracestate as received."""
    received = continue_from(
        [("traceparent", VALID), ("tracestate", "rojo=00f067aa0ba902b7, congo=t61rcWkgMzE")]
    )
    sent = received.child().headers()
    assert sent["tracestate"] == "rojo=00f067aa0ba902b7,congo=t61rcWkgMzE"
    onward = parse_traceparent(sent["traceparent"])
    assert onward is not None
    assert (onward.trace_id, onward.sampled) == (TRACE, True)
    assert onward.parent_id != PARENT
    assert "tracestate" not in new_trace().headers(), "an empty tracestate is not sent"


def test_cutting_drops_long_members_first_then_from_the_right() -> None:
    """Two long members and 30 short ones: both long ones go, then short ones from the end."""
    long = [(f"long{n}", "x" * 150) for n in range(2)]
    short = [(f"k{n:02d}", "v" * 20) for n in range(30)]
    state = (short[0], long[0], *short[1:15], long[1], *short[15:])
    kept = parse_tracestate([format_tracestate(state)])
    assert not set(long) & set(kept)
    assert list(kept) == short[: len(kept)]
    one_more = ",".join(f"{key}={value}" for key, value in (*kept, short[len(kept)]))
    assert len(format_tracestate(state)) <= 512 < len(one_more), "as many as fit are kept"
