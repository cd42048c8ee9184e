"""Engines over the in-memory store (the honest fake the contract suite holds to the SQLite
store's promises), and a helper that runs a workflow to its end.

Tests that pin something of SQLite itself ask for `sqlite_store` instead."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from orchestrator.engine import Engine
from orchestrator.model import WorkflowSpec
from orchestrator.records import HistoryEntry
from orchestrator.store import MemoryStore, SqliteStore, Store

RUN_END = ("run_succeeded", "run_failed", "run_cancelled")
H = "tests.engine.handlers:"


def workflow(**steps: dict[str, Any]) -> WorkflowSpec:
    """A workflow from step tables, handler names relative to tests.engine.handlers."""
    return WorkflowSpec.model_validate(
        {"steps": {name: {**step, "handler": H + step["handler"]} for name, step in steps.items()}}
    )


@dataclass
class Finished:
    run_id: str
    status: str
    history: list[HistoryEntry]

    def of_type(self, type: str) -> list[HistoryEntry]:
        return [entry for entry in self.history if entry.type == type]


async def run_to_end(
    engine: Engine, name: str, payload: Mapping[str, Any] | None = None, within: float = 5.0
) -> Finished:
    """Fire `name` and wait, on the history bus, until its run finishes."""
    with engine.bus.subscribe() as subscription:
        fired = await engine.fire(name, payload)
        assert fired.run_id is not None
        return await wait_for_end(subscription, fired.run_id, within)


async def wait_for_end(subscription: Any, run_id: str, within: float = 5.0) -> Finished:
    seen: list[HistoryEntry] = []
    async with asyncio.timeout(within):
        async for entry in subscription:
            if entry.run_id == run_id:
                seen.append(entry)
                if entry.type in RUN_END:
                    return Finished(run_id, entry.type.removeprefix("run_"), seen)
    raise AssertionError("the history stream ended before the run did")


async def awaiting_callbacks(engine: Engine, name: str, items: int, within: float = 10.0) -> str:
    """Fire `name` over `items` items and wait, on the history bus, until every task of it
    awaits its callback; the run's id."""
    with engine.bus.subscribe(maxsize=max(10_000, items * 6)) as subscription:
        fired = await engine.fire(name, {"items": list(range(items))})
        waiting = 0
        async with asyncio.timeout(within):
            async for entry in subscription:
                waiting += entry.type == "task_awaiting_callback"
                if waiting == items:
                    break
    assert fired.run_id is not None
    return fired.run_id


@pytest.fixture
async def store() -> AsyncIterator[Store]:
    store = MemoryStore()
    await store.open()
    yield store
    await store.close()


@pytest.fixture
async def sqlite_store(tmp_path: Path) -> AsyncIterator[SqliteStore]:
    store = SqliteStore(tmp_path / "engine.db")
    await store.open()
    yield store
    await store.close()


@pytest.fixture
async def make_engine(store: Store) -> AsyncIterator[Callable[..., Engine]]:
    """Engines over the test's store; all are closed at the end of the test."""
    engines: list[Engine] = []
    async with httpx.AsyncClient() as http:

        def make(workflows: Mapping[str, WorkflowSpec], **kwargs: Any) -> Engine:
            engine = Engine(store, workflows, http=http, **kwargs)
            engines.append(engine)
            return engine

        yield make
        for engine in engines:
            await engine.close()
