"""Readiness: the store can commit a write now, checked by a small bounded probe.

A store that answers reads may still be unable to write (another process holds SQLite's
write lock, the disk is full), and then every callback would be answered 503: such a
replica is not ready. The probe is a tiny write that must commit within `within` seconds
(Store.probe_write). Nothing probes on its own; a probe runs only when someone asks, and
concurrent askers share the probe in flight.

A success is kept for `fresh_for` seconds, so a flood of readiness checks against a
healthy store costs at most one write a second. A failure is not kept: the next question
probes again, so readiness comes back the moment the store can write. That costs little
while the store cannot write: behind another process's lock the probe is one
non-blocking lock attempt once the store is known to be contended (group_commit.py).
"""

from __future__ import annotations

import asyncio

from orchestrator.store import Store, StoreUnavailable

PROBE_WITHIN = 1.0
FRESH_FOR = 1.0


class Readiness:
    def __init__(
        self, store: Store, within: float = PROBE_WITHIN, fresh_for: float = FRESH_FOR
    ) -> None:
        self._store = store
        self._within = within
        self._fresh_for = fresh_for
        self._ready_at: float | None = None  # loop time of the last successful probe
        self._probing: asyncio.Future[str | None] | None = None
        self.probes = 0

    async def problem(self) -> str | None:
        """None while the store can write (a success at most `fresh_for` old); otherwise
        why it cannot, just found out."""
        loop = asyncio.get_running_loop()
        if self._ready_at is not None and loop.time() - self._ready_at < self._fresh_for:
            return None
        if self._probing is None:
            self._probing = asyncio.ensure_future(self._probe())
        return await asyncio.shield(self._probing)

    async def _probe(self) -> str | None:
        self.probes += 1
        try:
            await self._store.probe_write(self._within)
        except StoreUnavailable as error:
            self._ready_at = None
            return str(error)
        finally:
            self._probing = None
        self._ready_at = asyncio.get_running_loop().time()
        return None
