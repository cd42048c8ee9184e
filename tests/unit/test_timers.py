"""The one timer heap: ordering, replacement, lazy cancellation, compaction, and real arming."""

from __future__ import annotations

import asyncio
import time

from structlog.testing import capture_logs

from orchestrator.timers import COMPACT_AFTER, TimerHeap


async def nothing() -> None:
    return None


def test_pop_due_returns_due_entries_earliest_first() -> None:
    """Only entries due at `now` come out, in due order, and they leave the heap."""
    heap = TimerHeap(clock=lambda: 0.0)
    for key, due in (("c", 30.0), ("a", 10.0), ("b", 20.0)):
        heap._schedule_only(key, due, nothing)
    assert [key for key, _ in heap.pop_due(20.0)] == ["a", "b"]
    assert len(heap) == 1
    assert [key for key, _ in heap.pop_due(100.0)] == ["c"]


def test_rescheduling_a_key_replaces_its_entry() -> None:
    """Scheduling a key again moves it; the old due time no longer fires."""
    heap = TimerHeap(clock=lambda: 0.0)
    heap._schedule_only("k", 10.0, nothing)
    heap._schedule_only("k", 50.0, nothing)
    assert heap.pop_due(20.0) == []
    assert heap.due_of("k") == 50.0
    assert [key for key, _ in heap.pop_due(60.0)] == ["k"]


def test_cancelled_entries_never_fire_and_are_compacted() -> None:
    """Cancelled entries are skipped, and once they outnumber live ones the heap sheds them."""
    heap = TimerHeap(clock=lambda: 0.0)
    heap._schedule_only("live", 5.0, nothing)
    for number in range(COMPACT_AFTER + 10):
        heap._schedule_only(number, 10.0 + number, nothing)
        heap.cancel(number)
    assert len(heap._heap) < COMPACT_AFTER, "cancelled entries do not pile up"
    assert [key for key, _ in heap.pop_due(1e9)] == ["live"]


async def test_armed_entry_fires_its_callback_on_the_loop() -> None:
    """A scheduled callback runs at its due time, from loop.call_at, with no polling."""
    heap = TimerHeap()
    fired = asyncio.Event()

    async def fire() -> None:
        fired.set()

    heap.schedule("soon", time.time() + 0.02, fire)
    async with asyncio.timeout(5):
        await fired.wait()
    assert len(heap) == 0
    await heap.close()


async def test_an_earlier_entry_re_arms_the_heap() -> None:
    """Adding an entry earlier than the armed one makes it fire first."""
    heap = TimerHeap()
    order: list[str] = []
    done = asyncio.Event()

    def recorder(name: str):
        async def record() -> None:
            order.append(name)
            if len(order) == 2:
                done.set()

        return record

    heap.schedule("late", time.time() + 0.2, recorder("late"))
    heap.schedule("early", time.time() + 0.01, recorder("early"))
    async with asyncio.timeout(5):
        await done.wait()
    assert order == ["early", "late"]
    await heap.close()


async def test_a_failing_callback_is_logged_and_the_heap_goes_on() -> None:
    """An exception in one callback is logged with its key; later entries still fire."""
    heap = TimerHeap()
    later = asyncio.Event()

    async def boom() -> None:
        raise RuntimeError("boom")

    async def after() -> None:
        later.set()

    with capture_logs() as logs:
        heap.schedule("bad", time.time(), boom)
        heap.schedule("good", time.time() + 0.02, after)
        async with asyncio.timeout(5):
            await later.wait()
    assert any(log["event"] == "timer_callback_failed" and log["key"] == "bad" for log in logs)
    await heap.close()


async def test_close_disarms() -> None:
    """After close nothing scheduled fires."""
    heap = TimerHeap()
    heap.schedule("x", time.time() + 0.01, nothing)
    await heap.close()
    assert heap._armed is None or heap._armed.cancelled()
