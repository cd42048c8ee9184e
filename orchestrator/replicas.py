"""Replicas on one shared store: leases, and taking over the work of one that died.

Each replica records itself with a lease and renews it on the timer heap (every third of
the lease); the renewal leaves a `replica` notice, so the others re-arm their timer for
its expiry without reading anything. When a peer's lease runs out (plus a grace for clock
skew) its timer fires: the first survivor whose transaction removes the peer's row (the
store's conditional delete decides) claims the peer's tasks. A replica that finds at
renewal that its own lease had already run out may have lost its tasks to a peer: it says
so and asks to be stopped; its supervisor starts it again, fresh.

A clean shutdown ends the lease at once, so the peers take the replica's waiting tasks
over without waiting for it to run out.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import structlog

from orchestrator.store import Store, StoreUnavailable
from orchestrator.timers import Clock, TimerHeap

log = structlog.get_logger("orchestrator.replicas")

TOPIC = "replica"
LEASE = 30.0
GRACE = 2.0  # past a peer's lease before taking over: clocks of two hosts differ a little
RETRY_SECONDS = 1.0
RENEW_KEY = ("replica", "renew")
REFRESH_KEY = ("replica", "refresh")


def default_replica_id(port: int) -> str:
    """host:port: unique among running replicas (two cannot bind one port on one host),
    and the same after a restart, so a restarted replica takes its own tasks back at once."""
    host = socket.gethostname() or "localhost"
    return f"{host}:{port}" if port else f"{host}:pid{os.getpid()}"


@dataclass(frozen=True, slots=True)
class Joined:
    """What a replica takes over as it joins: its earlier self's tasks and unowned ones
    (`owners`), and the peers whose leases ran out (`expired`, if it removes them first)."""

    owners: frozenset[str | None]
    expired: frozenset[str]


class Membership:
    def __init__(
        self,
        store: Store,
        timers: TimerHeap,
        clock: Clock,
        replica: str,
        *,
        lease: float = LEASE,
        grace: float = GRACE,
        on_peer_expired: Callable[[str], Awaitable[bool]],
        on_lease_lost: Callable[[], None],
    ) -> None:
        self._store = store
        self._timers = timers
        self._clock = clock
        self.replica = replica
        self._lease = lease
        self._grace = grace
        self._on_peer_expired = on_peer_expired
        self._on_lease_lost = on_lease_lost
        self._started = clock()
        self._lease_until = 0.0
        self._peers: dict[str, float] = {}
        self._left = False

    @property
    def peers(self) -> dict[str, float]:
        """The other replicas known, with the time each one's lease runs out."""
        return dict(self._peers)

    async def join(self) -> Joined:
        """Record this replica's lease; what it should take over now."""
        await self._save(self._clock() + self._lease)
        now = self._clock()
        recorded = await self._store.replicas()
        expired = {peer for peer, until in recorded.items() if peer != self.replica and until < now}
        for peer, until in recorded.items():
            if peer != self.replica and peer not in expired:
                self._watch(peer, until)
        self._arm_renewal()
        log.info("replica_joined", replica=self.replica, peers=sorted(self._peers),
                 lease=self._lease, expired=sorted(expired))  # fmt: skip
        return Joined(frozenset({self.replica, None}), frozenset(expired))

    async def leave(self) -> None:
        """End this replica's lease now: the peers take its waiting tasks over at once."""
        self._left = True
        self._timers.cancel(RENEW_KEY)
        self._timers.cancel(REFRESH_KEY)
        for peer in list(self._peers):
            self._timers.cancel(_peer_key(peer))
        try:
            await self._save(self._clock())
        except StoreUnavailable as error:  # the lease runs out on its own
            log.warning("replica_leave_failed", replica=self.replica, reason=str(error))

    def noticed(self, payload: str) -> None:
        """A peer renewed (or ended) its lease: `id<TAB>lease_until`."""
        peer, _, until = payload.rpartition("\t")
        try:
            lease_until = float(until)
        except ValueError:
            log.warning("replica_notice_unreadable", payload=payload[:80])
            return
        if peer and peer != self.replica and not self._left:
            self._watch(peer, lease_until)

    async def refresh(self) -> None:
        """Read every lease again and watch each peer's (notices may have been lost)."""
        for peer, until in (await self._store.replicas()).items():
            if peer != self.replica and not self._left:
                self._watch(peer, until)

    def refresh_soon(self) -> None:
        self._timers.schedule(REFRESH_KEY, self._clock(), self._refresh)

    async def _refresh(self) -> None:
        try:
            await self.refresh()
        except StoreUnavailable as error:
            log.warning("replica_refresh_deferred", reason=str(error))
            self._timers.schedule(REFRESH_KEY, self._clock() + RETRY_SECONDS, self._refresh)

    # -- timers ----------------------------------------------------------------------------

    async def _save(self, lease_until: float) -> None:
        async with self._store.transaction() as tx:
            await tx.save_replica(self.replica, self._started, lease_until)
            tx.notify(TOPIC, f"{self.replica}\t{lease_until!r}")
        self._lease_until = lease_until

    def _arm_renewal(self, delay: float | None = None) -> None:
        every = self._lease / 3 if delay is None else delay
        self._timers.schedule(RENEW_KEY, self._clock() + every, self._renew)

    async def _renew(self) -> None:
        if self._left:
            return
        if self._clock() > self._lease_until:
            log.error("replica_lease_lost", replica=self.replica,
                      late=round(self._clock() - self._lease_until, 3),
                      reason="this replica did not renew its lease in time; a peer may have "
                      "taken its tasks over, so it stops (its supervisor restarts it)")  # fmt: skip
            self._on_lease_lost()
            return
        try:
            await self._save(self._clock() + self._lease)
        except StoreUnavailable as error:
            log.warning("replica_renew_deferred", replica=self.replica, reason=str(error))
            self._arm_renewal(RETRY_SECONDS)
            return
        self._arm_renewal()

    def _watch(self, peer: str, lease_until: float) -> None:
        self._peers[peer] = lease_until

        async def expired() -> None:
            await self._expired(peer)

        self._timers.schedule(_peer_key(peer), lease_until + self._grace, expired)

    async def _expired(self, peer: str) -> None:
        if self._peers.get(peer, 0.0) + self._grace > self._clock() or self._left:
            return  # renewed meanwhile (a notice re-armed the timer)
        del self._peers[peer]
        try:
            taken = await self._on_peer_expired(peer)
        except StoreUnavailable as error:
            log.warning("replica_takeover_deferred", peer=peer, reason=str(error))
            self._watch(peer, self._clock() + RETRY_SECONDS - self._grace)
            return
        if not taken:  # it renewed after all (its notice lost or late), or a peer took over
            self.refresh_soon()


def _peer_key(peer: str) -> tuple[str, str, str]:
    return ("replica", "peer", peer)
