"""Three `orchestrator serve` replicas on one PostgreSQL database, behind a load balancer
that sends each callback to any of them; one of them is killed with SIGKILL mid-run.

What must hold: every task is counted once, the join starts once, the dead replica's
waiting and pending tasks are taken over by a survivor, and a survivor's live stream
shows every entry of the run, in id order, whichever replica wrote it.
"""

from __future__ import annotations

import asyncio
import random
from collections import Counter
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import uvicorn

from handlers.fake_research import FakeResearch
from orchestrator.records import HistoryEntry
from tests.e2e.conftest import Orchestrator, Research, bound_socket

pytestmark = pytest.mark.e2e

TASKS = 200
LIMITED = """
[workflows.research.steps.look]
handler = "tests.e2e.handlers:research"
for_each = "event.items"
concurrency = 25

[workflows.research.steps.done]
handler = "tests.e2e.handlers:join"
needs = ["look"]
"""


class Balancer:
    """Where each callback delivery goes: any replica still listed, picked at random."""

    def __init__(self) -> None:
        self.replicas: list[str] = []
        self._rng = random.Random(12)  # noqa: S311 - a reproducible spread

    def route(self, url: str) -> str:
        parts = urlsplit(url)
        target = urlsplit(self._rng.choice(self.replicas))
        return parts._replace(netloc=target.netloc).geturl()


@pytest.fixture
async def balanced() -> AsyncIterator[tuple[Research, Balancer]]:
    balancer = Balancer()
    fake = FakeResearch(delay=(0.2, 0.4), duplicates=1, retry_base=0.1, route=balancer.route)
    service = Research(fake)
    sock = bound_socket()
    config = uvicorn.Config(
        fake.app(), log_level="critical", lifespan="on", timeout_graceful_shutdown=1
    )
    server = uvicorn.Server(config)
    service.url = f"http://127.0.0.1:{sock.getsockname()[1]}/research"
    task = asyncio.create_task(server.serve(sockets=[sock]))
    yield service, balancer
    server.should_exit = True
    await task
    sock.close()


async def test_three_replicas_finish_a_run_once_after_one_is_killed(
    tmp_path: Path,
    balanced: tuple[Research, Balancer],
    orchestrators: Callable[..., Orchestrator],
    postgres_url: str,
) -> None:
    research, balancer = balanced
    config = tmp_path / "research.toml"
    config.write_text(LIMITED)
    env = {"ORCHESTRATOR_DATABASE_URL": postgres_url, "ORCHESTRATOR_REPLICA_LEASE": "3s"}
    replicas = [
        await orchestrators(config, ORCHESTRATOR_REPLICA_ID=name, **env).start()
        for name in ("r1", "r2", "r3")
    ]
    first, survivor, _ = replicas
    balancer.replicas = [server.url for server in replicas]

    async with first.client() as client:
        fired = await client.fire(
            "research", {"items": list(range(TASKS)), "service": research.url}
        )
    run_id = fired["run_id"]
    streamed: list[HistoryEntry] = []
    async with survivor.client() as client, asyncio.timeout(90):
        async for entry in client.stream(after=0, run_id=run_id):
            streamed.append(entry)
            looked = sum(e.type == "task_succeeded" and e.step == "look" for e in streamed)
            if looked == 50 and first.process is not None and first.process.returncode is None:
                await first.kill()  # it owns every task of `look`: 150 waiting or pending
            if entry.type in ("run_succeeded", "run_failed"):
                break

    async with survivor.client() as client:
        last = streamed[-1].id or 0
        stored = [e for e in await client.history(run_id=run_id) if (e.id or 0) <= last]
        everything = await client.history()

    assert streamed[-1].type == "run_succeeded"
    ids = [e.id or 0 for e in streamed]
    assert ids == sorted(set(ids)), "the live stream is in id order, each entry once"
    assert ids == [e.id or 0 for e in stored], "the stream showed every entry, whoever wrote it"
    settled = Counter(e.task_id for e in stored if e.type == "task_succeeded" and e.step == "look")
    assert len(settled) == TASKS
    assert set(settled.values()) == {1}
    assert [e.step for e in stored if e.type == "step_started"] == ["look", "done"]
    lost = [e for e in everything if e.type == "replica_lost"]
    assert len(lost) == 1, "one survivor took the dead replica's tasks over"
    assert lost[0].data["replica"] == "r1"
    assert lost[0].data["by"] in ("r2", "r3")
    assert lost[0].data["tasks"] > 0
    async with survivor.client() as client:
        detail = await client.run(run_id)
    look = next(b for b in detail["barriers"] if b["step"] == "look")
    assert (look["succeeded"], look["failed"]) == (TASKS, 0)
    done = next(t for t in detail["tasks"] if t["step"] == "done")
    assert done["output"] == {"look": TASKS}
    for server in replicas[1:]:
        assert await server.stop()
