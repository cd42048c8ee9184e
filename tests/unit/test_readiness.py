"""Readiness probes: shared while in flight, a success kept a while, a failure never kept."""

from __future__ import annotations

import asyncio

from orchestrator.readiness import Readiness
from orchestrator.store import MemoryStore, StoreUnavailable


class Probed(MemoryStore):
    """A store whose write probe waits for `release` and then succeeds unless `broken`."""

    def __init__(self) -> None:
        super().__init__()
        self.release = asyncio.Event()
        self.broken = False
        self.probes = 0

    async def probe_write(self, within: float) -> None:
        self.probes += 1
        await self.release.wait()
        if self.broken:
            raise StoreUnavailable("disk full")


async def test_concurrent_questions_share_one_probe() -> None:
    """A hundred readiness checks at once cost the store one probe, and all hear its answer."""
    store = Probed()
    readiness = Readiness(store)
    asking = [asyncio.ensure_future(readiness.problem()) for _ in range(100)]

    async def release_once_probed() -> None:
        store.release.set()  # runs after every question was asked: they started first

    async with asyncio.timeout(5):
        answers, _ = await asyncio.gather(asyncio.gather(*asking), release_once_probed())
    assert answers == [None] * 100
    assert store.probes == 1


async def test_a_success_is_kept_for_a_while() -> None:
    """Within `fresh_for` of a successful probe, readiness answers without probing again."""
    store = Probed()
    store.release.set()
    readiness = Readiness(store, fresh_for=3600)
    assert await readiness.problem() is None
    assert await readiness.problem() is None
    assert store.probes == 1


async def test_a_failure_is_not_kept_so_readiness_returns_at_once() -> None:
    """A failed probe names the problem; the next question probes again and sees the store
    write again, without waiting out any cache."""
    store = Probed()
    store.release.set()
    store.broken = True
    readiness = Readiness(store, fresh_for=3600)
    assert await readiness.problem() == "disk full"
    store.broken = False
    assert await readiness.problem() is None
    assert store.probes == 2


async def test_an_old_success_is_checked_again() -> None:
    """Once a success is older than `fresh_for`, the next question probes."""
    store = Probed()
    store.release.set()
    readiness = Readiness(store, fresh_for=0.0)
    await readiness.problem()
    await readiness.problem()
    assert store.probes == 2
