"""The rejection counter: what it keeps per minute, when it flushes, and what it gives up.

It runs over the in-memory store and its own timer heap, on a clock the test sets; the
heap's due entries are run by hand (`fire_due`), so nothing waits for a real minute.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence

import pytest
import structlog

from orchestrator import rejections as module
from orchestrator.http import HttpError
from orchestrator.metrics import Metrics
from orchestrator.records import HistoryEntry
from orchestrator.rejections import FLUSH_KEY, NAME_SHOWN, Rejections, shown
from orchestrator.store import MemoryStore, RejectionCount, StoreUnavailable
from orchestrator.timers import TimerHeap

T0 = 1_700_000_000.0  # 20 s into a minute
MINUTE0 = 1_699_999_980
ROUTE = "/hooks/{trigger}"
UNKNOWN = HttpError(404, "unknown_trigger", "no webhook trigger named 'x'")
FORGED = HttpError(401, "bad_signature", "no signature matches")


class Clock:
    def __init__(self, now: float = T0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


class Flaky(MemoryStore):
    """The memory store, refusing writes of counts while `busy` is set."""

    busy = False

    async def add_rejections(self, counts: Sequence[RejectionCount]) -> None:
        if self.busy:
            raise StoreUnavailable("locked")
        await super().add_rejections(counts)


class Parts:
    def __init__(self) -> None:
        self.clock = Clock()
        self.store = Flaky()
        self.timers = TimerHeap(self.clock)
        self.metrics = Metrics()
        self.recorded: list[HistoryEntry] = []
        self.counter = Rejections(self.store, self.timers, self.clock, self.record, self.metrics)

    async def record(self, entry: HistoryEntry) -> None:
        if self.store.busy:
            raise StoreUnavailable("locked")
        self.recorded.append(entry)

    async def fire_due(self) -> int:
        """Run the heap entries due now, as the heap would; how many ran."""
        due = self.timers.pop_due(self.clock())
        for _, callback in due:
            await callback()
        return len(due)

    def metric(self, reason: str) -> float | None:
        labels = {"route": ROUTE, "reason": reason}
        return self.metrics.registry.get_sample_value("orchestrator_rejections_total", labels)


@pytest.fixture
async def parts() -> AsyncIterator[Parts]:
    made = Parts()
    await made.store.open()
    yield made
    await made.timers.close()


def test_shown_escapes_what_is_not_printable_and_cuts_what_is_long() -> None:
    """Control, invisible and lone-surrogate characters and backslashes are escaped; a long
    name is cut to NAME_SHOWN characters and says how long it was."""
    assert shown("push") == "push"
    assert shown("a\x07b\u200bc\ud800\\d\ne") == "a\\x07b\\u200bc\\ud800\\\\d\\ne"
    long = "x" * 65_000
    cut = shown(long)
    assert cut == "x" * NAME_SHOWN + "… (65000 characters)"
    assert shown("\x00" * 100).startswith("\\x00" * 16)
    assert len(shown("\x00" * 100)) <= NAME_SHOWN + len("… (100 characters)")


async def test_counts_add_up_per_minute_route_and_reason_keeping_the_first_sample(
    parts: Parts,
) -> None:
    """Rejections of one key make one pending count; the sample is the first one's."""
    counter = parts.counter
    counter.count(ROUTE, UNKNOWN, target="x" * 1000, client="10.0.0.1")
    parts.clock.now += 5
    counter.count(ROUTE, UNKNOWN, target="other", client="10.0.0.2")
    counter.count(ROUTE, FORGED, target="push")
    pending = {c.reason: c for c in counter.pending()}
    unknown = pending["unknown_trigger"]
    assert (unknown.minute, unknown.count, unknown.first_at, unknown.last_at) == (
        MINUTE0, 2, T0, T0 + 5,
    )  # fmt: skip
    assert unknown.sample == {
        "status": 404,
        "detail": "no webhook trigger named 'x'",
        "target": shown("x" * 1000),
        "client": "10.0.0.1",
    }
    assert pending["bad_signature"].count == 1
    assert parts.metric("unknown_trigger") == 2
    assert parts.metric("bad_signature") == 1


async def test_the_first_count_arms_one_flush_just_after_its_minute(parts: Parts) -> None:
    """One heap entry per flush, due a second after the minute of the first count ends;
    more counts do not move it, and it writes them all in one go."""
    counter = parts.counter
    counter.count(ROUTE, UNKNOWN)
    due = parts.timers.due_of(FLUSH_KEY)
    assert due == MINUTE0 + 60 + 1
    for _ in range(100):
        counter.count(ROUTE, UNKNOWN)
    parts.clock.now = MINUTE0 + 59.5
    counter.count(ROUTE, FORGED)
    assert parts.timers.due_of(FLUSH_KEY) == due
    assert len(parts.timers) == 1

    parts.clock.now = due
    assert await parts.fire_due() == 1
    assert counter.pending() == []
    stored = {c.reason: c.count for c in await parts.store.rejections()}
    assert stored == {"unknown_trigger": 101, "bad_signature": 1}
    assert parts.timers.due_of(FLUSH_KEY) is None, "nothing pending, nothing armed"

    counter.count(ROUTE, UNKNOWN)
    assert parts.timers.due_of(FLUSH_KEY) == MINUTE0 + 120 + 1


async def test_a_busy_store_keeps_the_counts_and_tries_again_later(parts: Parts) -> None:
    """When the store refuses the flush the counts stay pending (joined by later ones) and
    a retry is armed; the retry stores them all, once."""
    counter = parts.counter
    counter.count(ROUTE, UNKNOWN, target="first")
    parts.store.busy = True
    parts.clock.now = MINUTE0 + 61
    await parts.fire_due()
    retry = parts.timers.due_of(FLUSH_KEY)
    assert retry is not None
    assert retry > parts.clock.now
    counter.count(ROUTE, UNKNOWN, target="second")  # a later minute: a key of its own
    assert sum(c.count for c in counter.pending()) == 2
    parts.store.busy = False
    parts.clock.now = retry
    await parts.fire_due()
    stored = await parts.store.rejections()
    assert sum(c.count for c in stored) == 2
    assert stored[0].sample["target"] == "first"
    assert counter.pending() == []


async def test_pending_counts_are_bounded(parts: Parts, monkeypatch: pytest.MonkeyPatch) -> None:
    """Past MAX_PENDING keys the oldest key is given up, and its count is kept as dropped."""
    monkeypatch.setattr(module, "MAX_PENDING", 3)
    for minute in range(5):
        parts.clock.now = MINUTE0 + 60 * minute
        parts.counter.count(ROUTE, UNKNOWN)
        parts.counter.count(ROUTE, UNKNOWN)
    assert [c.minute for c in parts.counter.pending()] == [
        MINUTE0 + 120,
        MINUTE0 + 180,
        MINUTE0 + 240,
    ]
    assert parts.counter.dropped == 4


async def test_read_gives_stored_and_pending_counts_together(parts: Parts) -> None:
    """What an operator reads is current: the store's counts plus those not flushed yet."""
    counter = parts.counter
    counter.count(ROUTE, UNKNOWN)
    await counter.flush()
    counter.count(ROUTE, UNKNOWN)
    parts.clock.now += 60
    counter.count(ROUTE, FORGED)
    read = await counter.read(since=0, limit=10)
    assert [(c.minute, c.reason, c.count) for c in read] == [
        (MINUTE0, "unknown_trigger", 2),
        (MINUTE0 + 60, "bad_signature", 1),
    ]
    assert [c.reason for c in await counter.read(since=MINUTE0 + 1, limit=10)] == ["bad_signature"]
    assert len(await counter.read(since=0, limit=1)) == 1


async def test_a_known_task_gets_one_history_row_a_minute(parts: Parts) -> None:
    """Attributed rejections reach the task's history once per task and minute; the rest
    are only counted."""
    counter = parts.counter

    def entry(task_id: str) -> HistoryEntry:
        return HistoryEntry("callback_rejected", parts.clock(), "run_1", task_id, "s", {})

    for _ in range(5):
        counter.attribute(entry("tsk_a"))
    counter.attribute(entry("tsk_b"))
    parts.clock.now += 60
    counter.attribute(entry("tsk_a"))
    await counter.close()
    assert [e.task_id for e in parts.recorded] == ["tsk_a", "tsk_b", "tsk_a"]


async def test_a_history_row_the_store_cannot_take_is_given_up_quietly(parts: Parts) -> None:
    """A busy store loses the courtesy row with a log line, and raises into no one."""
    parts.store.busy = True
    with structlog.testing.capture_logs() as logs:
        parts.counter.attribute(HistoryEntry("callback_rejected", T0, "run_1", "tsk_a", "s", {}))
        await parts.counter.close()
    assert parts.recorded == []
    assert [log["event"] for log in logs] == ["rejection_not_recorded"]


async def test_close_flushes_what_is_pending_and_disarms(parts: Parts) -> None:
    """At shutdown the pending counts go to the store and the heap entry goes away."""
    parts.counter.count(ROUTE, UNKNOWN)
    await parts.counter.close()
    assert [c.count for c in await parts.store.rejections()] == [1]
    assert parts.timers.due_of(FLUSH_KEY) is None
    parts.counter.count(ROUTE, UNKNOWN)  # a straggler after close is counted, not armed
    assert parts.timers.due_of(FLUSH_KEY) is None


async def test_counts_put_back_join_those_of_the_same_key_that_came_meanwhile(
    parts: Parts,
) -> None:
    """A refused flush and new counts of the same minute make one count, with the first
    sample, once the store takes them."""
    counter = parts.counter
    counter.count(ROUTE, UNKNOWN, target="first")
    parts.store.busy = True
    await counter.flush()
    counter.count(ROUTE, UNKNOWN, target="second")
    assert [(c.count, c.sample["target"]) for c in counter.pending()] == [(2, "first")]
    parts.store.busy = False
    await counter.flush()
    assert [(c.count, c.sample["target"]) for c in await parts.store.rejections()] == [(2, "first")]


async def test_counts_a_busy_store_never_took_are_logged_as_lost_at_close(parts: Parts) -> None:
    """At shutdown, counts the store still refuses are given up with one warning saying how
    many."""
    parts.counter.count(ROUTE, UNKNOWN)
    parts.counter.count(ROUTE, FORGED)
    parts.store.busy = True
    with structlog.testing.capture_logs() as logs:
        await parts.counter.close()
    lost = [log for log in logs if log["event"] == "rejections_lost"]
    assert [log["count"] for log in lost] == [2]
