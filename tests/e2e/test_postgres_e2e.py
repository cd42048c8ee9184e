"""`orchestrator serve` on PostgreSQL: a fan-out joined after real callbacks, and a SIGKILL in
the middle of a run that a restart on the same database finishes, losing nothing."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.e2e.conftest import Gate, Orchestrator, Research
from tests.e2e.test_callbacks_e2e import RESEARCH
from tests.e2e.test_restart import CRASHY
from tests.e2e.test_run_end_to_end import follow_to_end

pytestmark = pytest.mark.e2e


async def test_a_fan_out_joins_once_after_every_callback_on_postgres(
    tmp_path: Path,
    research: Research,
    orchestrators: Callable[..., Orchestrator],
    postgres_url: str,
) -> None:
    """200 tasks handed to a service that calls back (each twice): every task is counted
    once, the duplicates are answered as such, and the join runs once."""
    config = tmp_path / "research.toml"
    config.write_text(RESEARCH)
    server = await orchestrators(config, ORCHESTRATOR_DATABASE_URL=postgres_url).start()
    async with server.client() as client:
        fired = await client.fire("research", {"items": list(range(200)), "service": research.url})
    history = await follow_to_end(server, fired["run_id"])

    assert history[-1].type == "run_succeeded"
    settled = Counter(e.task_id for e in history if e.type == "task_succeeded" and e.step == "look")
    assert len(settled) == 200
    assert set(settled.values()) == {1}
    await research.delivered(400)  # every callback and its duplicate got an answer
    async with server.client() as client:
        detail = await client.run(fired["run_id"])
        everything = await client.history(run_id=fired["run_id"])
    look = next(b for b in detail["barriers"] if b["step"] == "look")
    assert (look["succeeded"], look["failed"]) == (200, 0)
    done = next(t for t in detail["tasks"] if t["step"] == "done")
    assert done["output"] == {"look": 200}
    duplicates = [e for e in everything if e.type == "callback_rejected"]
    assert len(duplicates) >= 200
    assert {e.data["verdict"] for e in duplicates} == {"duplicate"}
    assert sum(e.type == "task_succeeded" for e in everything) == 201  # 200 + the join
    assert await server.stop()


async def test_sigkill_mid_run_on_postgres_loses_nothing_and_counts_each_once(
    tmp_path: Path, gate: Gate, orchestrators: Callable[..., Orchestrator], postgres_url: str
) -> None:
    """After SIGKILL with 25 tasks done and 25 in flight, a restart on the same PostgreSQL
    database finishes the run exactly once (test_restart.py's crash, on PostgreSQL)."""
    config = tmp_path / "crashy.toml"
    config.write_text(CRASHY)
    payload = {"items": list(range(50)), "one": [0], "fast": 25, "gate": gate.url}

    # The same replica restarted (the same host and port would give the same id).
    same = {"ORCHESTRATOR_DATABASE_URL": postgres_url, "ORCHESTRATOR_REPLICA_ID": "only"}
    first = await orchestrators(config, **same).start()
    async with first.client() as client:
        fired = await client.fire("crashy", payload)
        run_id = fired["run_id"]
        succeeded = 0
        async with asyncio.timeout(20):
            async for entry in client.stream(after=0, run_id=run_id):
                succeeded += entry.type == "task_succeeded"
                if succeeded == 25:
                    break
    await gate.arrived("slow", 25)
    await gate.arrived("never", 1)
    await first.kill()

    gate.open("slow")
    second = await orchestrators(config, **same).start()
    history = await follow_to_end(second, run_id)

    assert history[-1].type == "run_succeeded"
    per_task = Counter(
        e.task_id for e in history if e.type == "task_succeeded" and e.step == "work"
    )
    assert len(per_task) == 50
    assert set(per_task.values()) == {1}
    requeued = [e for e in history if e.type == "task_requeued"]
    assert {e.step for e in requeued} == {"work", "slow"}
    assert len(requeued) == 26
    assert [e.step for e in history if e.type == "step_deadline_passed"] == ["slow"]
    async with second.client() as client:
        detail = await client.run(run_id)
    work = next(b for b in detail["barriers"] if b["step"] == "work")
    assert (work["succeeded"], work["failed"], work["status"]) == (50, 0, "open")
    done = next(t for t in detail["tasks"] if t["step"] == "done")
    assert done["output"] == {"work": 50, "slow": 0}
    assert await second.stop(), "the server shuts down cleanly on SIGTERM"
