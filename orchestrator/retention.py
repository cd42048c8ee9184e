"""Tiered retention on the one timer heap: details go first, run summaries later.

After `history_age`, finished runs lose their per-task history and their payloads (event
payload, task items and outputs); the run, its barriers, its run-level history and the
events' delivery ids stay, so operators still see what ran and senders' retries still
dedup. Rows of no run (history entries without a run, such as rejected webhook
deliveries, and the counts of rejected requests) go after `history_age` too. After
`runs_age`, the whole run goes. Waits on keys whose task no longer waits (it finished,
was retried or went) and events kept for early arrival that expired go at every sweep.
Work is done in batches, each its own short transaction, so callbacks queue between
batches instead of waiting for the whole sweep.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import structlog

from orchestrator.engine import Engine

log = structlog.get_logger("orchestrator.retention")

SWEEP_KEY = ("retention", "sweep")


@dataclass(frozen=True, slots=True)
class Retention:
    history_age: float
    runs_age: float
    every: float = 3600.0
    batch: int = 1000


@dataclass(frozen=True, slots=True)
class Swept:
    history: int = 0
    payloads: int = 0
    runs: int = 0
    unattached: int = 0
    waits: int = 0
    kept_events: int = 0


class RetentionJob:
    def __init__(self, engine: Engine, policy: Retention) -> None:
        self.engine = engine
        self.policy = policy

    def arm(self, delay: float | None = None) -> None:
        """Schedule the next sweep on the timer heap."""
        due = self.engine.clock() + (self.policy.every if delay is None else delay)
        self.engine.timers.schedule(SWEEP_KEY, due, self._run)

    async def _run(self) -> None:
        try:
            swept = await self.sweep()
            if swept != Swept():
                log.info(
                    "retention_swept",
                    history=swept.history,
                    payloads=swept.payloads,
                    runs=swept.runs,
                    unattached=swept.unattached,
                    waits=swept.waits,
                    kept_events=swept.kept_events,
                )
        finally:
            self.arm()

    async def sweep(self) -> Swept:
        """Prune everything due now, batch by batch."""
        now = self.engine.clock()
        store, batch = self.engine.store, self.policy.batch
        history = await _drain(
            lambda: store.prune_task_history(now - self.policy.history_age, batch)
        )
        payloads = await _drain(lambda: store.prune_payloads(now - self.policy.history_age, batch))
        runs = await _drain(lambda: store.prune_runs(now - self.policy.runs_age, batch))
        unattached = await _drain(
            lambda: store.prune_unattached(now - self.policy.history_age, batch)
        )
        waits = await _drain(lambda: store.prune_waits(batch))
        kept = await _drain(lambda: store.prune_kept_events(now, batch))
        return Swept(history, payloads, runs, unattached, waits, kept)


async def _drain(step: Callable[[], Awaitable[int]]) -> int:
    """Run one pruning step until it finds nothing more; the total it pruned."""
    total = 0
    while True:
        pruned = await step()
        total += pruned
        if pruned == 0:
            return total
