"""Cron triggers against the real engine and store, with a controllable clock."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta

import httpx
import pytest

from orchestrator.engine import Engine
from orchestrator.model import TriggerSpec
from orchestrator.records import Event
from orchestrator.scheduler import CronScheduler, fire_key
from orchestrator.store import Store
from tests.engine.conftest import workflow

MONDAY_0742_BERLIN = datetime(2026, 11, 23, 6, 42, tzinfo=UTC)
WORKFLOWS = {"wf": workflow(one={"handler": "single"})}


def trigger(**overrides: object) -> TriggerSpec:
    spec = {"workflow": "wf", "cron": "42 7 * * MON-FRI", "timezone": "Europe/Berlin", **overrides}
    return TriggerSpec.model_validate(spec)


class Clock:
    """Real time shifted to a chosen instant: timers still fire, at the shifted times."""

    def __init__(self, at: datetime) -> None:
        self.offset = at.timestamp() - time.time()

    def __call__(self) -> float:
        return time.time() + self.offset

    def set(self, at: datetime) -> None:
        self.offset = at.timestamp() - time.time()


@pytest.fixture
async def engines(store: Store) -> AsyncIterator[Callable[..., Engine]]:
    """Engines over one database, each with its own clock (a process, or a replica)."""
    made: list[Engine] = []
    async with httpx.AsyncClient() as http:

        def make(clock: Clock, **triggers: TriggerSpec) -> Engine:
            engine = Engine(store, WORKFLOWS, triggers, http=http, clock=clock)
            made.append(engine)
            return engine

        yield make
        for engine in made:
            await engine.close()


async def cron_events(store: Store) -> list[Event]:
    page = await store.list_runs(limit=500)
    events = [await store.get_event(run.event_id) for run in page.items]
    return sorted((e for e in events if e is not None), key=lambda e: e.dedup_key or "")


async def test_a_fire_time_fires_once_across_two_instances(
    store: Store, engines: Callable[..., Engine]
) -> None:
    """Two instances over one database (a restart, or a replica) firing one instant: one run."""
    first = engines(Clock(MONDAY_0742_BERLIN), morning=trigger())
    second = engines(Clock(MONDAY_0742_BERLIN), morning=trigger())
    await asyncio.gather(
        CronScheduler(first, first.triggers).fire("morning", MONDAY_0742_BERLIN),
        CronScheduler(second, second.triggers).fire("morning", MONDAY_0742_BERLIN),
    )
    events = await cron_events(store)
    assert [e.dedup_key for e in events] == ["2026-11-23T06:42:00Z"]
    assert events[0].payload["scheduled_at"] == "2026-11-23T06:42:00Z"


async def test_restart_right_after_a_fire_does_not_fire_it_again(
    store: Store, engines: Callable[..., Engine]
) -> None:
    """A fire committed just before a crash is not repeated by the restart's misfire pass."""
    first = engines(Clock(MONDAY_0742_BERLIN), morning=trigger())
    await CronScheduler(first, first.triggers).fire("morning", MONDAY_0742_BERLIN)
    await first.close()
    later = engines(Clock(MONDAY_0742_BERLIN + timedelta(seconds=5)), morning=trigger())
    await CronScheduler(later, later.triggers).start()
    assert [e.dedup_key for e in await cron_events(store)] == ["2026-11-23T06:42:00Z"]


async def test_crash_before_a_fire_committed_fires_it_once_at_restart(
    store: Store, engines: Callable[..., Engine]
) -> None:
    """If the process died in the middle of a fire (nothing committed), the restart fires it once."""
    previous = MONDAY_0742_BERLIN - timedelta(days=3)  # the Friday before
    first = engines(Clock(previous), morning=trigger())
    await CronScheduler(first, first.triggers).fire("morning", previous)
    await first.close()
    restarted = engines(Clock(MONDAY_0742_BERLIN + timedelta(seconds=2)), morning=trigger())
    await CronScheduler(restarted, restarted.triggers).start()
    await CronScheduler(restarted, restarted.triggers).start()  # and once more: still once
    keys = [e.dedup_key for e in await cron_events(store)]
    assert keys == [fire_key(previous), "2026-11-23T06:42:00Z"]


@pytest.mark.parametrize(
    ("policy", "grace", "expected"),
    [
        ("skip", "1h", []),
        ("latest", "1h", ["2026-11-25T06:42:00Z"]),
        ("latest", "1m", []),
        ("all", "3d", ["2026-11-24T06:42:00Z", "2026-11-25T06:42:00Z"]),
        ("all", "1h", ["2026-11-25T06:42:00Z"]),
    ],
)
async def test_misfire_policy_after_downtime(
    store: Store,
    engines: Callable[..., Engine],
    policy: str,
    grace: str,
    expected: list[str],
) -> None:
    """Down from Monday's fire until Wednesday 07:50: the policy and grace pick what fires."""
    spec = trigger(misfire=policy, misfire_grace=grace)
    before = engines(Clock(MONDAY_0742_BERLIN), morning=spec)
    await CronScheduler(before, before.triggers).fire("morning", MONDAY_0742_BERLIN)
    await before.close()
    wednesday = MONDAY_0742_BERLIN + timedelta(days=2, minutes=8)
    after = engines(Clock(wednesday), morning=spec)
    await CronScheduler(after, after.triggers).start()
    keys = [e.dedup_key for e in await cron_events(store)]
    assert keys == ["2026-11-23T06:42:00Z", *expected]


async def test_the_next_fire_is_one_timer_heap_entry_that_fires(
    store: Store, engines: Callable[..., Engine]
) -> None:
    """Started 100 ms before 07:42, the scheduler's heap entry fires the run, then arms the next."""
    clock = Clock(MONDAY_0742_BERLIN - timedelta(milliseconds=100))
    engine = engines(clock, morning=trigger())
    scheduler = CronScheduler(engine, engine.triggers)
    with engine.bus.subscribe() as subscription:
        await scheduler.start()
        assert engine.timers.due_of(("cron", "morning")) == MONDAY_0742_BERLIN.timestamp()
        sources = []
        async with asyncio.timeout(5):
            async for entry in subscription:
                if entry.type == "event_received":
                    sources.append(entry.data["source"])
                if entry.type == "run_succeeded":
                    break
    # The callback that fired re-armed the trigger before the run could even start.
    assert sources == ["cron"]
    tuesday = MONDAY_0742_BERLIN + timedelta(days=1)
    assert engine.timers.due_of(("cron", "morning")) == tuesday.timestamp()
    assert [e.dedup_key for e in await cron_events(store)] == ["2026-11-23T06:42:00Z"]
