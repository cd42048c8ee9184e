"""An acknowledged callback is durable: SIGKILL right after the 200 loses none, FULL or NORMAL."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.e2e.conftest import Orchestrator, Research
from tests.e2e.test_callbacks_e2e import RESEARCH

pytestmark = pytest.mark.e2e


@pytest.mark.parametrize("synchronous", ["FULL", "NORMAL"])
async def test_every_acknowledged_callback_is_on_disk_when_the_process_dies(
    tmp_path: Path,
    research: Research,
    orchestrators: Callable[..., Orchestrator],
    synchronous: str,
) -> None:
    """Each task whose callback was answered 200 is succeeded in the file after a SIGKILL."""
    research.service.delay = (0.2, 1.5)
    acknowledged: set[str] = set()
    enough = asyncio.Event()
    counted = research.service.on_delivered

    def delivered(job_id: str, status: int) -> None:
        if counted is not None:
            counted(job_id, status)
        if status == 200:
            acknowledged.add(job_id.split(":")[0])  # the Idempotency-Key is task:attempt
            if len(acknowledged) >= 40:
                enough.set()

    research.service.on_delivered = delivered
    config = tmp_path / "research.toml"
    config.write_text(RESEARCH)
    database = tmp_path / "durable.db"
    server = orchestrators(config, database, ORCHESTRATOR_SQLITE_SYNCHRONOUS=synchronous)
    await server.start()
    async with server.client() as client:
        await client.fire("research", {"items": list(range(100)), "service": research.url})
    async with asyncio.timeout(60):
        await enough.wait()
    seen = set(acknowledged)  # answered before the kill; more may be in flight
    await server.kill()

    with sqlite3.connect(database) as db:
        rows = db.execute("SELECT id, state FROM tasks WHERE step = 'look'").fetchall()
    db.close()
    states = dict(rows)
    assert len(seen) >= 40
    assert {states[task_id] for task_id in seen} == {"succeeded"}
