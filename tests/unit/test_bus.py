"""The history bus: live subscribers get committed entries; a laggard is dropped, not waited for."""

from __future__ import annotations

from orchestrator.bus import HistoryBus
from orchestrator.records import HistoryEntry


def entry(number: int) -> HistoryEntry:
    return HistoryEntry("task_succeeded", float(number), "run", id=number)


async def test_subscribers_get_entries_in_order() -> None:
    """Every subscriber gets each published entry once, in publish order."""
    bus = HistoryBus()
    with bus.subscribe() as first, bus.subscribe() as second:
        bus.publish([entry(1), entry(2)])
        bus.publish([entry(3)])
        for subscription in (first, second):
            got = [await anext(aiter(subscription)) for _ in range(3)]
            assert [item.id for item in got] == [1, 2, 3]


async def test_a_subscriber_that_falls_behind_is_ended_not_waited_for() -> None:
    """Past its queue size a subscription ends (the SSE client resumes from the store)."""
    bus = HistoryBus()
    slow = bus.subscribe(maxsize=2)
    with bus.subscribe() as fast:
        bus.publish([entry(n) for n in range(1, 6)])
        assert slow.overflowed
        received = [item.id async for item in slow]
        assert received == [1, 2], "what fitted, in order, then the end of the stream"
        assert [(await anext(aiter(fast))).id for _ in range(5)] == [1, 2, 3, 4, 5]
    bus.publish([entry(6)])  # nobody left: publishing still works


async def test_closed_subscription_gets_nothing_more() -> None:
    """After close, publishing does not reach the subscription."""
    bus = HistoryBus()
    subscription = bus.subscribe()
    subscription.close()
    bus.publish([entry(1)])
    assert subscription._queue.empty()
