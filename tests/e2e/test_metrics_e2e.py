"""/metrics of the real server after a run: its tasks, barriers, dispatches and callbacks
counted, timers fired, no status checks."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.e2e.conftest import Gate, Orchestrator, Research
from tests.e2e.test_run_end_to_end import follow_to_end

pytestmark = pytest.mark.e2e

METERED = """
[workflows.metered.steps.look]
handler = "tests.e2e.handlers:research"
for_each = "event.items"

[workflows.metered.steps.slow]
handler = "tests.e2e.handlers:never"
for_each = "event.one"
deadline = "1s"
on_deadline = "proceed"

[workflows.metered.steps.done]
handler = "tests.e2e.handlers:join"
needs = ["look", "slow"]
"""


async def test_a_run_shows_in_metrics_with_callbacks_wakeups_and_no_status_checks(
    tmp_path: Path, research: Research, gate: Gate, orchestrators: Callable[..., Orchestrator]
) -> None:
    """Five callbacks (each sent twice) and one step deadline: 10 callbacks, a wake-up, 0 checks."""
    config = tmp_path / "metered.toml"
    config.write_text(METERED)
    server = await orchestrators(config).start()
    payload = {"items": list(range(5)), "one": [0], "service": research.url, "gate": gate.url}
    async with server.client() as client:
        fired = await client.fire("metered", payload)
    history = await follow_to_end(server, fired["run_id"])
    assert history[-1].type == "run_succeeded"
    await research.delivered(10)

    async with httpx.AsyncClient(base_url=server.url) as scraper:
        response = await scraper.get("/metrics")
    assert response.status_code == 200
    samples = {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(response.text)
        for sample in family.samples
    }
    callbacks = {
        labels: count
        for (name, labels), count in samples.items()
        if name == "orchestrator_callbacks_total"
    }
    assert callbacks == {
        (("result", "200"), ("route", "/callbacks/{token}")): float(research.deliveries)
    }
    assert research.deliveries == 10
    assert samples[("orchestrator_status_checks_total", ())] == 0.0
    assert samples[("orchestrator_wakeups_total", ())] >= 1.0  # the step deadline fired
    assert samples[("orchestrator_timers_armed_total", ())] >= 1.0
    finished = {
        labels: count
        for (name, labels), count in samples.items()
        if name == "orchestrator_tasks_finished_total"
    }
    assert finished == {
        (("state", "succeeded"), ("step", "look"), ("workflow", "metered")): 5.0,
        (("state", "cancelled"), ("step", "slow"), ("workflow", "metered")): 1.0,
        (("state", "succeeded"), ("step", "done"), ("workflow", "metered")): 1.0,
    }
    opened = {
        dict(labels)["step"]
        for (name, labels), count in samples.items()
        if name == "orchestrator_barrier_openings_total" and count == 1.0
    }
    assert opened == {"look", "slow", "done"}
    assert samples[("orchestrator_dispatches_total", (("result", "started"),))] == 7.0
    assert samples[("orchestrator_join_latency_seconds_count", ())] == 1.0, "done waited on both"
    assert samples[("orchestrator_store_transactions_total", ())] >= 3.0
    assert await server.stop()
