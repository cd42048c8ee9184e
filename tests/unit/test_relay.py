"""The history relay: committed entries reach live subscribers in id order, whichever
replica wrote them, with the store read only for what this process did not write."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from orchestrator.bus import HistoryBus, Subscription
from orchestrator.records import HistoryEntry
from orchestrator.relay import PAGE, HistoryRelay
from orchestrator.timers import TimerHeap


def entry(number: int) -> HistoryEntry:
    return HistoryEntry("task_succeeded", float(number), "run", id=number)


class SharedHistory:
    """The history table of a shared store: what every replica committed, by id."""

    shared = True

    def __init__(self) -> None:
        self.rows: dict[int, HistoryEntry] = {}
        self.reads = 0

    def commit(self, *numbers: int) -> list[HistoryEntry]:
        entries = [entry(n) for n in numbers]
        self.rows.update((e.id or 0, e) for e in entries)
        return entries

    async def history(self, *, after: int = 0, limit: int = 100, **_: Any) -> list[HistoryEntry]:
        self.reads += 1
        return [self.rows[n] for n in sorted(self.rows) if n > after][:limit]


def relay_on(store: SharedHistory) -> tuple[HistoryRelay, HistoryBus]:
    bus = HistoryBus()
    return HistoryRelay(store, bus, TimerHeap(), time.time), bus  # type: ignore[arg-type]


async def received(subscription: Subscription, count: int) -> list[int]:
    async with asyncio.timeout(5):
        return [(await anext(aiter(subscription))).id or 0 for _ in range(count)]


async def test_local_commits_in_order_are_published_without_reading_the_store() -> None:
    store = SharedHistory()
    relay, bus = relay_on(store)
    with bus.subscribe() as subscription:
        relay.committed(store.commit(1, 2))
        relay.committed(store.commit(3))
        assert await received(subscription, 3) == [1, 2, 3]
    assert store.reads == 0


async def test_a_peers_commit_is_read_and_published_before_a_later_local_one() -> None:
    """Ids 1-2 are a peer's (its notice not yet here); 3-4 are ours: 1..4 in order."""
    store = SharedHistory()
    relay, bus = relay_on(store)
    with bus.subscribe() as subscription:
        store.commit(1, 2)
        relay.committed(store.commit(3, 4))
        assert await received(subscription, 4) == [1, 2, 3, 4]
        relay.noticed("2")  # the late notice changes nothing
        relay.committed(store.commit(5))
        assert await received(subscription, 1) == [5]
    assert store.reads == 1


async def test_notices_that_arrive_together_cost_one_read() -> None:
    store = SharedHistory()
    relay, bus = relay_on(store)
    with bus.subscribe() as subscription:
        for number in range(1, 11):
            store.commit(number)
            relay.noticed(str(number))
        assert await received(subscription, 10) == list(range(1, 11))
    assert store.reads == 1


async def test_nobody_listening_reads_nothing_and_a_new_subscriber_starts_from_now() -> None:
    store = SharedHistory()
    relay, bus = relay_on(store)
    store.commit(1, 2, 3)
    relay.noticed("3")
    relay.committed(store.commit(4))
    assert store.reads == 0
    with bus.subscribe() as subscription:
        relay.committed(store.commit(5))
        assert await received(subscription, 1) == [5]
    assert store.reads == 0


async def test_after_a_reconnect_the_relay_reads_to_the_end_of_the_history() -> None:
    """Notices were lost while the listener was away: everything after the mark, paged."""
    store = SharedHistory()
    relay, bus = relay_on(store)
    with bus.subscribe() as subscription:
        store.commit(*range(1, PAGE + 6))
        relay.reconnected()
        got = await received(subscription, PAGE + 5)
    assert got == list(range(1, PAGE + 6))
    assert store.reads == 2


async def test_ids_that_were_never_committed_do_not_hold_the_stream_up() -> None:
    """A rolled-back transaction burns ids: 1 and 2 never appear; 3 still goes out."""
    store = SharedHistory()
    relay, bus = relay_on(store)
    with bus.subscribe() as subscription:
        relay.committed(store.commit(3))
        assert await received(subscription, 1) == [3]
        relay.committed(store.commit(4))
        assert await received(subscription, 1) == [4]
    assert store.reads == 1


async def test_a_store_no_one_else_shares_publishes_straight_away() -> None:
    store = SharedHistory()
    store.shared = False
    relay, bus = relay_on(store)
    with bus.subscribe() as subscription:
        relay.committed([entry(7)])
        assert await received(subscription, 1) == [7]
    assert store.reads == 0


async def test_a_local_commit_a_store_read_already_published_is_not_published_again() -> None:
    """A peer's notice made the relay read the store, which held this process's own commit
    too; when that commit's turn comes it is not sent twice, nor kept waiting."""
    store = SharedHistory()
    relay, bus = relay_on(store)
    with bus.subscribe() as subscription:
        store.commit(1)
        mine = store.commit(2)
        relay.noticed("1")
        assert await received(subscription, 2) == [1, 2]
        relay.committed(mine)
        relay.committed(store.commit(3))
        assert await received(subscription, 1) == [3]
    assert relay._held == {}
