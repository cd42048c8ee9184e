"""Replicas of `orchestrator serve` on one PostgreSQL database.

Three behind a load balancer that sends each callback to any of them, one killed with
SIGKILL mid-run while it holds waiting, pending and running tasks: every task is counted
once, the join starts once, a survivor takes the dead replica's work over, and a
survivor's live stream shows every entry of the run, in id order, whoever wrote it.

Two that each start tasks naming one exclusive resource: never two at once.
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
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from handlers.fake_research import FakeResearch
from orchestrator.records import HistoryEntry
from tests.e2e.conftest import Gate, Orchestrator, Research, bound_socket
from tests.e2e.test_run_end_to_end import follow_to_end

pytestmark = pytest.mark.e2e

TASKS, HELD = 500, 5
LIMITED = """
[workflows.research.steps.look]
handler = "tests.e2e.handlers:research"
for_each = "event.items"
concurrency = 25

[workflows.research.steps.hold]
handler = "tests.e2e.handlers:gated"
for_each = "event.held"

[workflows.research.steps.done]
handler = "tests.e2e.handlers:join"
needs = ["look", "hold"]
"""
EXCLUSIVE = """
[workflows.crm.steps.use]
handler = "tests.e2e.handlers:use_crm"
for_each = "event.items"
exclusive = "crm"
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
    gate: Gate,
    orchestrators: Callable[..., Orchestrator],
    postgres_url: str,
) -> None:
    research, balancer = balanced
    config = tmp_path / "research.toml"
    config.write_text(LIMITED)
    env = {"ORCHESTRATOR_DATABASE_URL": postgres_url, "ORCHESTRATOR_REPLICA_LEASE": "5s"}
    replicas = [
        await orchestrators(config, ORCHESTRATOR_REPLICA_ID=name, **env).start()
        for name in ("r1", "r2", "r3")
    ]
    first, survivor, _ = replicas
    balancer.replicas = [server.url for server in replicas]

    payload = {
        "items": list(range(TASKS)), "service": research.url,
        "held": list(range(HELD)), "gate": gate.url, "gate_name": "hold",
    }  # fmt: skip
    async with first.client() as client:
        fired = await client.fire("research", payload)
    run_id = fired["run_id"]
    await gate.arrived("hold", HELD)  # r1 runs the handlers of `hold`, held at the gate
    streamed: list[HistoryEntry] = []
    async with survivor.client() as client, asyncio.timeout(120):
        async for entry in client.stream(after=0, run_id=run_id):
            streamed.append(entry)
            looked = sum(e.type == "task_succeeded" and e.step == "look" for e in streamed)
            if looked == 50 and first.process is not None and first.process.returncode is None:
                # It owns every task: of `look`, 25 waiting and 425 pending; of `hold`, 5
                # whose handlers are running.
                await first.kill()
                gate.open("hold")
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
    started = sorted(e.step or "" for e in stored if e.type == "step_started")
    assert started == ["done", "hold", "look"]
    held = Counter(e.task_id for e in stored if e.type == "task_succeeded" and e.step == "hold")
    assert len(held) == HELD
    assert set(held.values()) == {1}
    requeued = [e for e in stored if e.type == "task_requeued"]
    # Running handlers start again elsewhere: every one of `hold`, and any of `look` that
    # was still handing off when r1 died.
    assert Counter(e.step for e in requeued)["hold"] == HELD
    assert {e.data["reason"] for e in requeued} == {
        "its replica stopped renewing its lease while it ran"
    }
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
    assert done["output"] == {"look": TASKS, "hold": HELD}
    for server in replicas[1:]:
        assert await server.stop()


class Tracker:
    """A CRM that counts how many callers use it at once (each use takes 50 ms)."""

    def __init__(self) -> None:
        self.using = 0
        self.most = 0
        self.uses = 0
        self.url = ""

    async def use(self, request: Request) -> Response:
        self.using += 1
        self.uses += 1
        self.most = max(self.most, self.using)
        try:
            await asyncio.sleep(0.05)  # the service's work takes this long
        finally:
            self.using -= 1
        return JSONResponse({"ok": True})


@pytest.fixture
async def tracker() -> AsyncIterator[Tracker]:
    tracker = Tracker()
    app = Starlette(routes=[Route("/use", tracker.use, methods=["POST"])])
    sock = bound_socket()
    server = uvicorn.Server(uvicorn.Config(app, log_level="critical", lifespan="off"))
    tracker.url = f"http://127.0.0.1:{sock.getsockname()[1]}"
    task = asyncio.create_task(server.serve(sockets=[sock]))
    yield tracker
    server.should_exit = True
    await task
    sock.close()


async def test_an_exclusive_resource_is_used_by_one_task_at_a_time_across_replicas(
    tmp_path: Path,
    tracker: Tracker,
    orchestrators: Callable[..., Orchestrator],
    postgres_url: str,
) -> None:
    """Two replicas each start a run of 8 tasks naming `crm`: the 16 run one at a time."""
    config = tmp_path / "crm.toml"
    config.write_text(EXCLUSIVE)
    env = {"ORCHESTRATOR_DATABASE_URL": postgres_url}
    replicas = [
        await orchestrators(config, ORCHESTRATOR_REPLICA_ID=name, **env).start()
        for name in ("r1", "r2")
    ]
    payload = {"items": list(range(8)), "tracker": tracker.url}
    fired = []
    for server in replicas:
        async with server.client() as client:
            fired.append((server, (await client.fire("crm", payload))["run_id"]))
    for server, run_id in fired:
        history = await follow_to_end(server, run_id)
        assert history[-1].type == "run_succeeded"
    assert tracker.uses == 16
    assert tracker.most == 1, "crm was never used by two tasks at once"
    for server in replicas:
        assert await server.stop()
