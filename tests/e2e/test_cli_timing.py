"""`orchestrator show` and `fire --wait` print each task's wait apart from its run, and a
summary whose speedup a reader can redo from the printed figures."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.e2e.conftest import TOKEN, Orchestrator
from tests.e2e.test_cli import run_cli
from tests.summary_check import assert_checkable_by_hand, printed

pytestmark = pytest.mark.e2e

CONFIG = """
[workflows.paced.steps.fan]
handler = "tests.e2e.handlers:echo"
for_each = "event.items"
rate = "1/100ms"

[workflows.flaky.steps.fan]
handler = "tests.engine.handlers:fail_first_attempt"
for_each = "event.items"
retries = 1
backoff = "50ms"
"""
ENV = {"ORCHESTRATOR_ADMIN_TOKEN": TOKEN}


async def fired(server: Orchestrator, tmp_path: Path, workflow: str, items: list[int]) -> str:
    payload = tmp_path / f"{workflow}.json"
    payload.write_text(json.dumps({"items": items}))
    code, out, err = await run_cli(
        "fire", workflow, "--payload", str(payload), "--wait", "--json", "--url", server.url,
        env=ENV,
    )  # fmt: skip
    assert code == 0, err
    run_id: str = json.loads(out)["run_id"]
    return run_id


async def test_show_prints_waits_apart_from_runs_and_a_checkable_speedup(
    tmp_path: Path, orchestrators: Callable[..., Orchestrator]
) -> None:
    """A rate-limited fan-out: `show` lists each task's wait and run, and its summary counts
    the rate's gaps as paced waits, so the speedup reads about 1x and adds up."""
    config = tmp_path / "timing.toml"
    config.write_text(CONFIG)
    server = await orchestrators(config).start("--no-progress")
    run_id = await fired(server, tmp_path, "paced", [1, 2, 3, 4])
    code, out, err = await run_cli("show", run_id, "--url", server.url, env=ENV)
    assert code == 0, err
    header = next(line for line in out.splitlines() if line.startswith("tasks:"))
    assert re.search(r"STATE +ATTEMPT +WAITED +RAN$", header)
    rows = [line for line in out.splitlines() if line.startswith("  fan[")]
    assert len(rows) == 4
    waits = []
    for row in rows:
        match = re.fullmatch(r"  fan\[\d\] +succeeded +1 +([0-9.]+)s +([0-9.]+)s", row)
        assert match is not None, row
        waits.append(float(match.group(1)))
    assert max(waits) >= 0.29, "the fourth start came three gaps of 100 ms after the first"
    summary = out[out.index("■ paced") :]
    for figure in ("sum of run times", "sum of waits", "paced waits"):
        assert figure in summary
    assert printed(summary, "sum of waits") >= sum(waits) - 0.01
    assert "0.0x" not in summary
    assert_checkable_by_hand(summary)
    assert await server.stop()


async def test_show_counts_a_retried_task_s_earlier_attempt(
    tmp_path: Path, orchestrators: Callable[..., Orchestrator]
) -> None:
    """Tasks that failed once: `show` notes the earlier attempt, and the summary counts both
    attempts and shows the retry on the critical path."""
    config = tmp_path / "timing.toml"
    config.write_text(CONFIG)
    server = await orchestrators(config).start("--no-progress")
    run_id = await fired(server, tmp_path, "flaky", [1, 2])
    code, out, err = await run_cli("show", run_id, "--url", server.url, env=ENV)
    assert code == 0, err
    rows = [line for line in out.splitlines() if line.startswith("  fan[")]
    assert len(rows) == 2
    assert all(
        re.search(r"succeeded +2 .*\(\+1 earlier attempt\(s\), ran [0-9.]+s\)", r) for r in rows
    )
    assert "2 tasks, 4 attempts (2 retried)" in out
    # The backoff has full jitter: its wait may be too short to be shown on the path.
    assert re.search(
        r"critical path +fan\[\d\] ran [0-9.]+s \(failed\) → (waited [0-9.]+s → )?ran", out
    )
    assert_checkable_by_hand(out[out.index("■ flaky") :])
    code, out, _ = await run_cli("show", run_id, "--json", "--url", server.url, env=ENV)
    timing = json.loads(out)["timing"]
    assert timing["attempts"] == 4
    assert timing["paced_seconds"] > 0
    assert await server.stop()
