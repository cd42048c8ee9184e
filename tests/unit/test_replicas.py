"""Replica leases: joining, renewing, noticing a peer's renewal, taking over an expired
peer once, and stopping when this replica's own lease ran out (on a real timer heap)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable

import pytest

from orchestrator.replicas import REFRESH_KEY, Membership, default_replica_id
from orchestrator.store.memory import MemoryStore
from orchestrator.timers import TimerHeap

LEASE, GRACE = 1.0, 0.1


class Clock:
    """Wall time plus a jump a test can make (a replica that stalled)."""

    def __init__(self) -> None:
        self.offset = 0.0

    def __call__(self) -> float:
        return time.time() + self.offset


class Replica:
    """A membership on its own timer heap, with what its callbacks saw."""

    def __init__(self, store: MemoryStore, name: str, clock: Clock) -> None:
        self.timers = TimerHeap(clock)
        self.expired: asyncio.Queue[tuple[str, bool]] = asyncio.Queue()
        self.lost = asyncio.Event()
        self.store = store
        self.membership = Membership(
            store, self.timers, clock, name, lease=LEASE, grace=GRACE,
            on_peer_expired=self._take_over, on_lease_lost=self.lost.set,
        )  # fmt: skip

    async def _take_over(self, peer: str) -> bool:
        async with self.store.transaction() as tx:
            taken = await tx.drop_replica(peer, time.time())
        await self.expired.put((peer, taken))
        return taken

    async def next_expiry(self) -> tuple[str, bool]:
        async with asyncio.timeout(5):
            return await self.expired.get()


@pytest.fixture
async def replicas() -> AsyncIterator[Callable[[str], Replica]]:
    store, clock, made = MemoryStore(), Clock(), []
    await store.open()

    def make(name: str) -> Replica:
        replica = Replica(store, name, clock)
        made.append(replica)
        return replica

    make.clock = clock  # type: ignore[attr-defined]
    make.store = store  # type: ignore[attr-defined]
    yield make
    for replica in made:
        await replica.timers.close()
    await store.close()


async def test_joining_names_the_expired_peers_and_watches_the_live_ones(
    replicas: Callable[[str], Replica],
) -> None:
    store: MemoryStore = replicas.store  # type: ignore[attr-defined]
    now = time.time()
    async with store.transaction() as tx:
        await tx.save_replica("dead", now - 100, now - 5)
        await tx.save_replica("alive", now - 100, now + 50)
    joined = await replicas("me").membership.join()
    assert joined.expired == {"dead"}
    assert joined.owners == {"me", None}, "its earlier self's tasks, and unowned ones"
    assert set(replicas("other").membership.peers) == set()  # not joined yet: knows nobody
    recorded = await store.replicas()
    assert recorded["me"] > now + LEASE / 2


async def test_a_peer_that_stops_renewing_is_taken_over_once(
    replicas: Callable[[str], Replica],
) -> None:
    """Two survivors both see the lease run out; the store lets one of them take over."""
    dying, left, right = replicas("dying"), replicas("left"), replicas("right")
    await dying.membership.join()
    await left.membership.join()
    await right.membership.join()
    await dying.timers.close()  # it dies: no more renewals
    outcomes = {await left.next_expiry(), await right.next_expiry()}
    assert outcomes == {("dying", True), ("dying", False)}


async def test_a_peer_that_renews_is_not_taken_over_even_without_its_notices(
    replicas: Callable[[str], Replica],
) -> None:
    """The memory store carries no notices, so the watcher's timer fires at the first lease;
    the conditional drop refuses (the peer renewed), and the watcher reads the lease again."""
    renewing, watcher = replicas("renewing"), replicas("watcher")
    await renewing.membership.join()
    first_lease = (await watcher.membership.join(), watcher.membership.peers["renewing"])[1]
    assert await watcher.next_expiry() == ("renewing", False)
    assert watcher.timers.due_of(REFRESH_KEY) is not None, "it reads the leases again"
    await watcher.membership.refresh()
    assert watcher.membership.peers["renewing"] > first_lease
    assert not renewing.lost.is_set()


async def test_a_renewal_notice_moves_the_peers_expiry(replicas: Callable[[str], Replica]) -> None:
    watcher = replicas("watcher")
    await watcher.membership.join()
    later = time.time() + 60
    watcher.membership.noticed(f"peer\t{later!r}")
    assert watcher.membership.peers == {"peer": later}
    assert watcher.timers.due_of(("replica", "peer", "peer")) == later + GRACE
    watcher.membership.noticed("watcher\t1.0")  # its own notice: ignored
    watcher.membership.noticed("garbage")  # unreadable: ignored
    assert watcher.membership.peers == {"peer": later}


async def test_a_replica_that_stalled_past_its_lease_asks_to_stop(
    replicas: Callable[[str], Replica],
) -> None:
    stalled = replicas("stalled")
    await stalled.membership.join()
    replicas.clock.offset += 10 * LEASE  # type: ignore[attr-defined]
    stalled.timers.schedule(("nudge",), 0.0, _nothing)  # re-arm the heap on the new clock
    async with asyncio.timeout(5):
        await stalled.lost.wait()


async def test_leaving_ends_the_lease_at_once(replicas: Callable[[str], Replica]) -> None:
    leaving = replicas("leaving")
    await leaving.membership.join()
    await leaving.membership.leave()
    store: MemoryStore = replicas.store  # type: ignore[attr-defined]
    assert (await store.replicas())["leaving"] <= time.time()


def test_the_default_replica_id_is_host_and_port() -> None:
    assert default_replica_id(8000).endswith(":8000")
    assert ":pid" in default_replica_id(0)


async def _nothing() -> None:
    return None
