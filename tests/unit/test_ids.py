"""Ids: prefixed, unique, and sortable by the time they were made."""

from __future__ import annotations

import random
import re

from hypothesis import given, settings
from hypothesis import strategies as st

from orchestrator.ids import new_id


def seeded(seed: int) -> random.Random:
    """A seeded generator: reproducible jitter in tests, never used for secrets."""
    return random.Random(seed)  # noqa: S311 - reproducibility, not security


CROCKFORD = re.compile(r"[0-9a-hjkmnp-tv-z]{26}")


def test_id_has_prefix_and_body() -> None:
    """An id is the prefix, an underscore and 26 Crockford base32 characters."""
    value = new_id("run", now=1_700_000_000.0)
    prefix, _, body = value.partition("_")
    assert prefix == "run"
    assert CROCKFORD.fullmatch(body)


def test_ids_are_unique_even_at_one_instant() -> None:
    """Many ids made for the same instant are all different."""
    ids = {new_id("task", now=1_700_000_000.0) for _ in range(5000)}
    assert len(ids) == 5000


def test_ids_without_a_time_use_the_clock() -> None:
    """Without `now`, an id still has the prefix and a well-formed body."""
    value = new_id("evt")
    assert value.startswith("evt_")
    assert CROCKFORD.fullmatch(value.removeprefix("evt_"))


def test_ids_sort_by_time() -> None:
    """Ids made at later times sort later, whatever order they were made in."""
    times = [1_700_000_000.0 + 0.25 * n for n in range(200)]
    made = [(t, new_id("run", now=t)) for t in seeded(5).sample(times, len(times))]
    by_id = [t for t, _ in sorted(made, key=lambda pair: pair[1])]
    assert by_id == sorted(times)


@settings(max_examples=200, deadline=None)
@given(
    millis=st.integers(0, 2**47),
    gap=st.integers(1, 10**9),
)
def test_later_time_sorts_later(millis: int, gap: int) -> None:
    """An id made at least two milliseconds later sorts after an earlier one."""
    earlier, later = millis / 1000, (millis + gap) / 1000
    assert new_id("run", now=earlier) < new_id("run", now=later)


def test_same_time_ids_share_the_time_part() -> None:
    """Ids made in one millisecond share their first ten characters (48 bits of time)."""
    first, second = new_id("x", now=1234.5678), new_id("x", now=1234.5678)
    assert first[:12] == second[:12]
    assert new_id("x", now=1234.5678)[:12] != new_id("x", now=1234.5698)[:12]


def test_ids_made_in_one_millisecond_sort_in_the_order_they_were_made() -> None:
    """Within a process, ids of one prefix made at the same instant still sort by creation."""
    ids = [new_id("run", 1_700_000_000.0) for _ in range(1000)]
    assert ids == sorted(ids)
    assert len(set(ids)) == 1000
