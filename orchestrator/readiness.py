"""Readiness: the store can commit a write now, checked by a small bounded probe.

A store that answers reads may still be unable to write (another process holds SQLite's
write lock, the disk is full), and then every callback would be answered 503: such a
replica is not ready. The probe is a tiny write that must commit within `within` seconds
(Store.probe_write). Its answer is kept for `fresh_for` seconds and concurrent askers share
the probe in flight, so a flood of readiness checks costs at most one write a second.
Nothing probes on its own: a probe runs only when someone asks and the last answer is stale.
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
        self._checked_at: float | None = None  # loop time of the last answer
        self._problem: str | None = None
        self._probing: asyncio.Future[None] | None = None
        self.probes = 0

    async def problem(self) -> str | None:
        """None while the store can write; otherwise why it cannot (at most `fresh_for` old)."""
        loop = asyncio.get_running_loop()
        if self._checked_at is not None and loop.time() - self._checked_at < self._fresh_for:
            return self._problem
        if self._probing is None:
            self._probing = asyncio.ensure_future(self._probe())
        await asyncio.shield(self._probing)
        return self._problem

    async def _probe(self) -> None:
        self.probes += 1
        try:
            await self._store.probe_write(self._within)
            problem = None
        except StoreUnavailable as error:
            problem = str(error)
        finally:
            self._probing = None
        self._problem = problem
        self._checked_at = asyncio.get_running_loop().time()
