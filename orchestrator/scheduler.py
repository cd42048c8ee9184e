"""Cron triggers on the one timer heap: the next fire of each is one heap entry, nothing ticks.

Each fire is an event whose dedup key is the scheduled instant (`2026-11-23T06:42:00Z`),
unique per trigger in the store, so a restart in the middle of a fire, or a second replica,
cannot fire it twice. At start-up the last fire time is read back from the store and the
trigger's misfire policy decides which missed fires to fire now.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime, timedelta

import structlog

from orchestrator.cron import Schedule, fires_after, misfires
from orchestrator.engine import Engine
from orchestrator.model import TriggerSpec
from orchestrator.store import StoreUnavailable

log = structlog.get_logger("orchestrator.scheduler")

RETRY_SECONDS = 1.0


def fire_key(instant: datetime) -> str:
    """The dedup key of a cron fire: its instant in UTC, sortable as text."""
    return instant.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_fire_key(key: str) -> datetime:
    return datetime.strptime(key, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)


def schedule_of(trigger: TriggerSpec) -> Schedule:
    assert trigger.cron is not None  # noqa: S101 - only cron triggers are scheduled
    return Schedule.of(trigger.cron, trigger.timezone, trigger.on_gap, trigger.on_overlap)


class CronScheduler:
    def __init__(self, engine: Engine, triggers: Mapping[str, TriggerSpec]) -> None:
        self.engine = engine
        self.triggers = {name: spec for name, spec in triggers.items() if spec.cron}

    def now(self) -> datetime:
        return datetime.fromtimestamp(self.engine.clock(), UTC)

    async def start(self) -> None:
        """Fire what the misfire policies say was missed, then arm each trigger's next fire."""
        now = self.now()
        for name, trigger in self.triggers.items():
            last_key = await self.engine.store.last_cron_fire(name)
            last = parse_fire_key(last_key) if last_key else None
            missed = misfires(
                schedule_of(trigger), last, now, trigger.misfire,
                timedelta(seconds=trigger.misfire_grace),
            )  # fmt: skip
            if missed:
                log.info("cron_misfires", trigger=name, policy=trigger.misfire, firing=len(missed))
            for instant in missed:
                await self.fire(name, instant, late=True)
            self.arm(name, now)

    def arm(self, name: str, after: datetime) -> datetime:
        """Put the trigger's next fire after `after` on the timer heap."""
        (instant,) = fires_after(schedule_of(self.triggers[name]), after, 1)

        async def fire() -> None:
            try:
                await self.fire(name, instant)
                await self._catch_up(name, instant)
            finally:
                self.arm(name, max(instant, self.now()))

        self.engine.timers.schedule(("cron", name), instant.timestamp(), fire)
        return instant

    async def _catch_up(self, name: str, fired: datetime) -> None:
        """If the clock jumped (a paused VM, a stalled loop), treat what was skipped as misfires."""
        trigger = self.triggers[name]
        missed = misfires(
            schedule_of(trigger), fired, self.now(), trigger.misfire,
            timedelta(seconds=trigger.misfire_grace),
        )  # fmt: skip
        for instant in missed:
            await self.fire(name, instant, late=True)

    async def fire(self, name: str, instant: datetime, late: bool = False) -> None:
        """Fire one scheduled instant; the store's unique dedup key makes it once, ever."""
        payload = {"scheduled_at": fire_key(instant)}
        try:
            fired = await self.engine.fire(
                name,
                payload,
                dedup_key=fire_key(instant),
                source="cron-misfire" if late else "cron",
            )
        except StoreUnavailable as error:
            log.warning("cron_fire_deferred", trigger=name, at=fire_key(instant), reason=str(error))

            async def again() -> None:
                await self.fire(name, instant, late)

            self.engine.timers.schedule(
                ("cron-retry", name, fire_key(instant)), self.engine.clock() + RETRY_SECONDS, again
            )
            return
        if fired.duplicate:
            log.info("cron_already_fired", trigger=name, at=fire_key(instant))
