"""Admission control: concurrency per lane, exclusive resources across lanes, rate windows, FIFO."""

from __future__ import annotations

import random

from hypothesis import given, settings
from hypothesis import strategies as st

from orchestrator.limits import Admission, LaneLimits, admit_shared
from orchestrator.model import Rate
from orchestrator.store.base import LaneLoad


def seeded(seed: int) -> random.Random:
    """A seeded generator: reproducible jitter in tests, never used for secrets."""
    return random.Random(seed)  # noqa: S311 - reproducibility, not security


def offer_all(admission: Admission[str], lane: str, limits: LaneLimits, ids: list[str]) -> None:
    for item_id in ids:
        admission.offer(lane, limits, item_id, item_id)


def test_unlimited_lane_admits_everything() -> None:
    """A lane without limits admits all its waiting items at once."""
    admission: Admission[str] = Admission()
    offer_all(admission, "fan", LaneLimits(), [f"t{i}" for i in range(50)])
    admitted, wake_at = admission.take(now=0.0)
    assert admitted == [f"t{i}" for i in range(50)]
    assert wake_at is None
    assert admission.waiting() == 0


def test_concurrency_caps_in_flight_and_release_admits_the_next() -> None:
    """A lane with concurrency k has at most k in flight; a release lets the next one start."""
    admission: Admission[str] = Admission()
    offer_all(admission, "draft", LaneLimits(concurrency=2), ["a", "b", "c", "d"])
    assert admission.take(0.0) == (["a", "b"], None)
    assert admission.in_flight("draft") == 2
    assert admission.take(1.0) == ([], None)
    assert admission.release("a") is True
    assert admission.take(2.0) == (["c"], None)
    assert admission.in_flight("draft") == 2
    assert admission.waiting() == 1


def test_concurrency_is_per_lane() -> None:
    """A full lane does not hold back another lane."""
    admission: Admission[str] = Admission()
    offer_all(admission, "one", LaneLimits(concurrency=1), ["a1", "a2"])
    offer_all(admission, "two", LaneLimits(concurrency=1), ["b1", "b2"])
    admitted, _ = admission.take(0.0)
    assert sorted(admitted) == ["a1", "b1"]
    assert (admission.in_flight("one"), admission.in_flight("two")) == (1, 1)


def test_exclusive_resource_is_shared_across_lanes() -> None:
    """Two lanes naming one resource never have two items in flight together."""
    admission: Admission[str] = Admission()
    crm = LaneLimits(resource="crm")
    offer_all(admission, "update", crm, ["u1", "u2"])
    offer_all(admission, "sync", crm, ["s1", "s2"])
    started: list[str] = []
    for step in range(4):
        admitted, _ = admission.take(float(step))
        assert len(admitted) == 1
        assert admission.in_flight("update") + admission.in_flight("sync") == 1
        started += admitted
        assert admission.take(float(step))[0] == []
        assert admission.release(admitted[0]) is True
    assert sorted(started) == ["s1", "s2", "u1", "u2"]
    assert admission.waiting() == 0


def test_unrelated_resources_do_not_block_each_other() -> None:
    """Exclusive resources with different names are independent."""
    admission: Admission[str] = Admission()
    admission.offer("a", LaneLimits(resource="crm"), "a1", "a1")
    admission.offer("b", LaneLimits(resource="mailer"), "b1", "b1")
    admitted, _ = admission.take(0.0)
    assert sorted(admitted) == ["a1", "b1"]


@settings(max_examples=100, deadline=None)
@given(
    lanes=st.lists(st.integers(1, 4), min_size=2, max_size=4),
    concurrency=st.none() | st.integers(1, 3),
    seed=st.integers(0, 2**32),
)
def test_exclusive_resource_property(lanes: list[int], concurrency: int | None, seed: int) -> None:
    """Whatever the lanes, their sizes and the release order, a resource holds one item at a time and everything eventually starts."""
    rng = seeded(seed)
    admission: Admission[str] = Admission()
    limits = LaneLimits(concurrency=concurrency, resource="db")
    ids = []
    for lane, size in enumerate(lanes):
        lane_ids = [f"{lane}-{n}" for n in range(size)]
        offer_all(admission, f"lane{lane}", limits, lane_ids)
        ids += lane_ids
    in_flight: list[str] = []
    started: list[str] = []
    for step in range(len(ids) * 2 + 2):
        admitted, wake_at = admission.take(float(step))
        assert wake_at is None
        in_flight += admitted
        started += admitted
        assert len(in_flight) <= 1
        if in_flight:
            assert admission.release(in_flight.pop(rng.randrange(len(in_flight)))) is True
    assert sorted(started) == sorted(ids)


def test_rate_limit_admits_count_per_window_and_says_when_to_wake() -> None:
    """A lane limited to count per window starts count items, then names the time it may start more."""
    admission: Admission[str] = Admission()
    limits = LaneLimits(rate=Rate(count=2, per=10.0))
    offer_all(admission, "api", limits, ["a", "b", "c", "d", "e"])
    assert admission.take(100.0) == (["a", "b"], 110.0)
    assert admission.take(105.0) == ([], 110.0)
    assert admission.take(110.0) == (["c", "d"], 120.0)
    assert admission.take(120.0) == (["e"], None)


def test_rate_window_slides_from_each_start() -> None:
    """The window counts starts in the last `per` seconds, so a slot frees when the oldest start ages out."""
    admission: Admission[str] = Admission()
    limits = LaneLimits(rate=Rate(count=2, per=10.0))
    admission.offer("api", limits, "a", "a")
    assert admission.take(0.0) == (["a"], None)
    offer_all(admission, "api", limits, ["b", "c", "d"])
    assert admission.take(4.0) == (["b"], 10.0)
    assert admission.take(10.0) == (["c"], 14.0)
    assert admission.take(14.0) == (["d"], None)


def test_rate_limit_does_not_depend_on_release() -> None:
    """Releasing items does not refill a rate window; only time does."""
    admission: Admission[str] = Admission()
    limits = LaneLimits(rate=Rate(count=1, per=5.0))
    offer_all(admission, "api", limits, ["a", "b"])
    assert admission.take(0.0) == (["a"], 5.0)
    assert admission.release("a") is False, "a rate-only lane holds no slot to free"
    assert admission.take(1.0) == ([], 5.0)


def test_unlimited_lanes_hold_nothing_in_flight() -> None:
    """Tasks of a lane without concurrency or resource limits are not tracked once admitted,
    so 100,000 tasks awaiting callbacks cost admission no memory."""
    admission: Admission[str] = Admission()
    offer_all(admission, "free", LaneLimits(), [f"t{i}" for i in range(1000)])
    admitted, _ = admission.take(0.0)
    assert len(admitted) == 1000
    assert admission.in_flight("free") == 0
    assert admission.release("t1") is False
    assert admission._admitted == {}
    assert admission._lanes == {}


def test_take_admits_at_most_room_in_lane_order() -> None:
    """With room for n, take admits the first n waiting items and keeps the rest queued."""
    admission: Admission[str] = Admission()
    offer_all(admission, "a", LaneLimits(), ["a1", "a2", "a3"])
    offer_all(admission, "b", LaneLimits(), ["b1"])
    assert admission.take(0.0, room=2) == (["a1", "a2"], None)
    assert admission.waiting() == 2
    assert admission.take(0.0, room=5) == (["a3", "b1"], None)


def test_wake_time_is_the_earliest_over_lanes() -> None:
    """With several rate-limited lanes, take reports the earliest time any of them may start."""
    admission: Admission[str] = Admission()
    offer_all(admission, "slow", LaneLimits(rate=Rate(count=1, per=60.0)), ["s1", "s2"])
    offer_all(admission, "fast", LaneLimits(rate=Rate(count=1, per=2.0)), ["f1", "f2"])
    admitted, wake_at = admission.take(0.0)
    assert sorted(admitted) == ["f1", "s1"]
    assert wake_at == 2.0


def test_fifo_within_a_lane() -> None:
    """Items of one lane start in the order they were offered."""
    admission: Admission[str] = Admission()
    order = [f"t{i}" for i in range(10)]
    offer_all(admission, "serial", LaneLimits(concurrency=1), order)
    started: list[str] = []
    for step in range(10):
        admitted, _ = admission.take(float(step))
        started += admitted
        admission.release(admitted[0])
    assert started == order


def test_fifo_across_offers_after_admission() -> None:
    """An item offered later waits behind items already waiting, even after slots free up."""
    admission: Admission[str] = Admission()
    limits = LaneLimits(concurrency=1)
    offer_all(admission, "serial", limits, ["a", "b"])
    assert admission.take(0.0)[0] == ["a"]
    admission.offer("serial", limits, "c", "c")
    admission.release("a")
    assert admission.take(1.0)[0] == ["b"]


def test_release_of_unknown_id_is_false() -> None:
    """Releasing an id that holds no slot, or releasing twice, returns False and frees nothing."""
    admission: Admission[str] = Admission()
    offer_all(admission, "lane", LaneLimits(concurrency=1), ["a", "b"])
    assert admission.release("nobody") is False
    assert admission.take(0.0)[0] == ["a"]
    assert admission.release("b") is False, "a waiting item holds no slot"
    assert admission.release("a") is True
    assert admission.release("a") is False
    assert admission.take(1.0)[0] == ["b"]
    assert admission.in_flight("lane") == 1


def test_in_flight_of_unknown_lane_is_zero() -> None:
    """A lane never offered to has nothing in flight."""
    assert Admission[str]().in_flight("nowhere") == 0


def test_release_frees_what_was_held_even_if_the_lane_changed_its_limits() -> None:
    """An item admitted under `exclusive` frees that resource even after its lane lost the limit."""
    admission: Admission[str] = Admission()
    admission.offer("lane", LaneLimits(resource="crm"), "a", "a")
    assert admission.take(0.0)[0] == ["a"]
    admission.offer("lane", LaneLimits(), "b", "b")  # a run fired after a config edit
    assert admission.take(0.0)[0] == ["b"]
    assert admission.release("a")
    assert not admission.release("b"), "admitted without limits, b held nothing"
    admission.offer("other", LaneLimits(resource="crm"), "c", "c")
    assert admission.take(0.0)[0] == ["c"], "crm is free again"


# -- across replicas: admit_shared decides on every replica's load ----------------------

DRAFT, SEND, OTHER = ("wf", "draft"), ("wf", "send"), ("other", "sync")


def test_shared_concurrency_counts_what_other_replicas_have_in_flight() -> None:
    """Concurrency 3 with 2 dispatched elsewhere: one of this batch starts, in order."""
    limits = LaneLimits(concurrency=3)
    decided = admit_shared(
        [(DRAFT, limits, "a"), (DRAFT, limits, "b"), (DRAFT, limits, "c")],
        {DRAFT: LaneLoad(in_flight=2)}, {}, now=10.0,
    )  # fmt: skip
    assert (decided.admitted, decided.deferred, decided.wake_at) == (["a"], ["b", "c"], None)


def test_shared_exclusive_resource_is_busy_while_any_lane_naming_it_runs_one() -> None:
    """`crm` is named by two lanes; one task of the other lane runs somewhere: none start.
    Idle everywhere: exactly one starts, from whichever lane comes first."""
    crm = LaneLimits(resource="crm")
    both = {"crm": [SEND, OTHER]}
    busy = admit_shared([(SEND, crm, "s1")], {SEND: LaneLoad(), OTHER: LaneLoad(1)}, both, 0.0)
    assert (busy.admitted, busy.deferred) == ([], ["s1"])
    idle = admit_shared(
        [(SEND, crm, "s1"), (OTHER, crm, "o1"), (SEND, crm, "s2")],
        {SEND: LaneLoad(), OTHER: LaneLoad()}, both, 0.0,
    )  # fmt: skip
    assert (idle.admitted, idle.deferred) == (["s1"], ["o1", "s2"])


def test_shared_rate_counts_other_replicas_starts_and_says_when_one_more_may_start() -> None:
    """2 per 10 s; starts at 1 and 4 happened elsewhere: nothing now, one more at 11."""
    rate = LaneLimits(rate=Rate(count=2, per=10.0))
    full = admit_shared([(DRAFT, rate, "a")], {DRAFT: LaneLoad(0, (1.0, 4.0))}, {}, now=5.0)
    assert (full.admitted, full.deferred, full.wake_at) == ([], ["a"], 11.0)
    one_left = admit_shared(
        [(DRAFT, rate, "a"), (DRAFT, rate, "b")], {DRAFT: LaneLoad(0, (4.0,))}, {}, now=5.0
    )
    assert (one_left.admitted, one_left.deferred, one_left.wake_at) == (["a"], ["b"], 14.0)


def test_unlimited_lanes_pass_shared_admission_untouched() -> None:
    decided = admit_shared([(DRAFT, LaneLimits(), "a")], {DRAFT: LaneLoad(99)}, {}, 0.0)
    assert decided.admitted == ["a"]


def test_an_item_offered_first_keeps_its_turn() -> None:
    """A task parked after a shared check goes back to the head of its lane."""
    admission: Admission[str] = Admission()
    offer_all(admission, "draft", LaneLimits(concurrency=1), ["b", "c"])
    admission.offer("draft", LaneLimits(concurrency=1), "a", "a", first=True)
    assert admission.take(0.0) == (["a"], None)
