"""A real server runs a three-level workflow over real HTTP, and history proves its shape."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from orchestrator.records import HistoryEntry
from tests.e2e.conftest import Gate, Orchestrator

pytestmark = pytest.mark.e2e

THREE_LEVELS = """
[workflows.levels.steps.wide]
handler = "tests.e2e.handlers:gated"
for_each = "event.items"

[workflows.levels.steps.first_join]
handler = "tests.e2e.handlers:five"
needs = ["wide"]

[workflows.levels.steps.narrow]
handler = "tests.e2e.handlers:echo"
needs = ["first_join"]
for_each = "first_join.items"

[workflows.levels.steps.final_join]
handler = "tests.e2e.handlers:join"
needs = ["narrow", "wide"]
"""

RUN_END = ("run_succeeded", "run_failed", "run_cancelled")


async def follow_to_end(server: Orchestrator, run_id: str) -> list[HistoryEntry]:
    """The run's history from the live SSE stream, up to and including its end."""
    seen = []
    async with server.client() as client:
        async for entry in client.stream(after=0, run_id=run_id):
            seen.append(entry)
            if entry.type in RUN_END:
                return seen
    raise AssertionError("the stream ended before the run")


async def test_three_level_workflow_fans_out_concurrently_and_joins_in_order(
    tmp_path: Path, gate: Gate, orchestrators: Callable[..., Orchestrator]
) -> None:
    """50 tasks that each wait until all 50 started, then join -> 5 -> final join, in order."""
    config = tmp_path / "levels.toml"
    config.write_text(THREE_LEVELS)
    gate.threshold["main"] = 50
    server = await orchestrators(config).start()
    async with server.client() as client:
        fired = await client.fire("levels", {"items": list(range(50)), "gate": gate.url})
    history = await follow_to_end(server, fired["run_id"])

    assert history[-1].type == "run_succeeded"
    assert gate.counts["main"] == 50

    def ids(type: str, step: str) -> list[int]:
        return [e.id or 0 for e in history if e.type == type and e.step == step]

    def opened(step: str) -> int:
        (entry_id,) = ids("barrier_opened", step)
        return entry_id

    assert len(ids("task_succeeded", "wide")) == 50
    assert (
        max(ids("task_succeeded", "wide"))
        < opened("wide")
        < min(ids("task_dispatched", "first_join"))
    )
    assert opened("first_join") < min(ids("task_dispatched", "narrow"))
    assert len(ids("task_succeeded", "narrow")) == 5
    assert max(opened("narrow"), opened("wide")) < min(ids("task_dispatched", "final_join"))

    async with server.client() as client:
        detail = await client.run(fired["run_id"])
    final = next(task for task in detail["tasks"] if task["step"] == "final_join")
    assert final["output"] == {"narrow": 5, "wide": 50}
    assert await server.stop(), "the server shuts down cleanly on SIGTERM"


async def test_history_stream_resumes_from_last_event_id(
    tmp_path: Path, gate: Gate, orchestrators: Callable[..., Orchestrator]
) -> None:
    """Reconnecting with the last seen id replays exactly the entries after it."""
    config = tmp_path / "levels.toml"
    config.write_text(THREE_LEVELS)
    gate.threshold["main"] = 3
    server = await orchestrators(config).start()
    async with server.client() as client:
        fired = await client.fire("levels", {"items": [1, 2, 3], "gate": gate.url})
    full = await follow_to_end(server, fired["run_id"])
    cut = full[len(full) // 2].id
    async with server.client() as client:
        resumed = []
        async for entry in client.stream(after=cut, run_id=fired["run_id"]):
            resumed.append(entry)
            if entry.type in RUN_END:
                break
    assert [e.id for e in resumed] == [e.id for e in full if (e.id or 0) > (cut or 0)]
