"""Real services calling back over real HTTP: a thousand at once, and a crash in the middle."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from orchestrator.signing import new_secret, sign_headers
from tests.e2e.conftest import Orchestrator, Research
from tests.e2e.test_run_end_to_end import follow_to_end

pytestmark = pytest.mark.e2e

RESEARCH = """
[workflows.research.steps.look]
handler = "tests.e2e.handlers:research"
for_each = "event.items"

[workflows.research.steps.done]
handler = "tests.e2e.handlers:join"
needs = ["look"]
"""


async def test_thousand_callbacks_complete_one_run_each_counted_once(
    tmp_path: Path, research: Research, orchestrators: Callable[..., Orchestrator]
) -> None:
    """1,000 tasks handed to a service that calls back after 0.5 s (and again, as a duplicate)."""
    config = tmp_path / "research.toml"
    config.write_text(RESEARCH)
    server = await orchestrators(config, ORCHESTRATOR_SQLITE_SYNCHRONOUS="NORMAL").start()
    started = time.monotonic()
    async with server.client() as client:
        fired = await client.fire("research", {"items": list(range(1000)), "service": research.url})
    history = await follow_to_end(server, fired["run_id"])
    elapsed = time.monotonic() - started

    assert history[-1].type == "run_succeeded"
    settled = Counter(e.task_id for e in history if e.type == "task_succeeded" and e.step == "look")
    assert len(settled) == 1000
    assert set(settled.values()) == {1}
    await research.delivered(2000)  # every callback and its duplicate got an answer
    async with server.client() as client:
        detail = await client.run(fired["run_id"])
        everything = await client.history(run_id=fired["run_id"])
    look = next(b for b in detail["barriers"] if b["step"] == "look")
    assert (look["succeeded"], look["failed"]) == (1000, 0)
    duplicates = [e for e in everything if e.type == "callback_rejected"]
    # Every job was sent twice; a delivery whose answer timed out under load is sent again.
    assert len(duplicates) >= 1000
    assert {e.data["verdict"] for e in duplicates} == {"duplicate"}
    assert sum(e.type == "task_succeeded" for e in everything) == 1001  # 1,000 + the join
    assert elapsed < 120, "loosely: the run takes about the service's delay, not 1,000 of them"
    assert await server.stop()


async def test_sigkill_with_callbacks_pending_loses_none_and_counts_each_once(
    tmp_path: Path, research: Research, orchestrators: Callable[..., Orchestrator]
) -> None:
    """Kill -9 with 100 tasks awaiting callbacks; the service retries until the restart answers."""
    research.service.delay = (1.0, 1.0)
    config = tmp_path / "research.toml"
    config.write_text(RESEARCH)
    database = tmp_path / "crash.db"
    first = await orchestrators(config, database).start()
    async with first.client() as client:
        fired = await client.fire("research", {"items": list(range(100)), "service": research.url})
        waiting = 0
        async with asyncio.timeout(30):
            async for entry in client.stream(after=0, run_id=fired["run_id"]):
                waiting += entry.type == "task_awaiting_callback"
                if waiting == 100:
                    break
    await first.kill()
    await research.failing()  # the service is now retrying against a dead server

    second = await orchestrators(config, database).start(port=first.port)
    history = await follow_to_end(second, fired["run_id"])

    assert history[-1].type == "run_succeeded"
    settled = Counter(e.task_id for e in history if e.type == "task_succeeded" and e.step == "look")
    assert len(settled) == 100
    assert set(settled.values()) == {1}
    assert not [e for e in history if e.type == "task_requeued"], "awaiting tasks keep waiting"
    assert len(research.service.jobs) == 100, "no task was handed off twice"
    assert await second.stop()


async def test_forged_and_late_callbacks_over_real_http(
    tmp_path: Path, research: Research, orchestrators: Callable[..., Orchestrator]
) -> None:
    """Over real HTTP: a forged callback gets 401, and the genuine one after the deadline 410."""
    research.service.delay = (600.0, 600.0)  # the service never calls back by itself here
    config = tmp_path / "research.toml"
    config.write_text(
        RESEARCH.replace(
            'for_each = "event.items"', 'for_each = "event.items"\nheartbeat = "1s"', 1
        )
    )
    server = await orchestrators(config).start()
    async with server.client() as client:
        fired = await client.fire("research", {"items": [0], "service": research.url})
        async with asyncio.timeout(20):
            async for entry in client.stream(after=0, run_id=fired["run_id"]):
                if entry.type == "task_awaiting_callback":
                    break
    (job,) = research.service.jobs.values()
    async with httpx.AsyncClient() as http:
        forged_headers = sign_headers(new_secret(), job.body, message_id="forged")
        forged = await http.post(job.callback_url, content=job.body, headers=forged_headers)
        assert (forged.status_code, forged.json()["error"]) == (401, "bad_signature")
        history = await follow_to_end(server, fired["run_id"])
        assert history[-1].type == "run_failed"
        late = await http.post(
            job.callback_url, content=job.body, headers=sign_headers(job.secret, job.body)
        )
    assert late.status_code == 410
    assert "timed_out" in late.json()["detail"]
    async with server.client() as client:
        rejected = [
            e for e in await client.history(run_id=fired["run_id"]) if e.type == "callback_rejected"
        ]
    assert [e.data.get("status", e.data.get("verdict")) for e in rejected] == [401, "gone"]
    assert await server.stop()
