"""Kill -9 in the middle of a run; the next process on the same database finishes it."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.e2e.conftest import Gate, Orchestrator
from tests.e2e.test_run_end_to_end import follow_to_end

pytestmark = pytest.mark.e2e

CRASHY = """
[workflows.crashy.steps.work]
handler = "tests.e2e.handlers:fast_or_gated"
for_each = "event.items"

[workflows.crashy.steps.slow]
handler = "tests.e2e.handlers:never"
for_each = "event.one"
deadline = "6s"
on_deadline = "proceed"

[workflows.crashy.steps.done]
handler = "tests.e2e.handlers:join"
needs = ["work", "slow"]
"""


async def test_sigkill_mid_run_loses_nothing_and_counts_each_completion_once(
    tmp_path: Path, gate: Gate, orchestrators: Callable[..., Orchestrator]
) -> None:
    """After SIGKILL with 25 tasks done and 25 in flight, a restart finishes the run exactly once."""
    config = tmp_path / "crashy.toml"
    config.write_text(CRASHY)
    database = tmp_path / "crash.db"
    payload = {"items": list(range(50)), "one": [0], "fast": 25, "gate": gate.url}

    first = await orchestrators(config, database).start()
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
    second = await orchestrators(config, database).start()
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
