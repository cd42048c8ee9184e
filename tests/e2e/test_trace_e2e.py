"""A W3C trace runs from a hook through a real orchestrator to a real service and back."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from orchestrator.records import HistoryEntry
from orchestrator.tracecontext import TraceContext, parse_traceparent
from tests.e2e.conftest import Orchestrator, Research
from tests.e2e.test_run_end_to_end import follow_to_end

pytestmark = pytest.mark.e2e

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
SENDER_SPAN = "00f067aa0ba902b7"
TRACEPARENT = f"00-{TRACE_ID}-{SENDER_SPAN}-01"
TRACESTATE = "congo=t61rcWkgMzE,rojo=00f067aa0ba902b7"

RESEARCH = """
[workflows.research.steps.look]
handler = "tests.e2e.handlers:research"
for_each = "event.items"

[workflows.research.steps.done]
handler = "tests.e2e.handlers:join"
needs = ["look"]

[triggers.leads]
workflow = "research"
webhook = { scheme = "none" }
"""


def traces_by_lead(research: Research) -> dict[str, TraceContext | None]:
    """What trace context the service was sent each lead's job with."""
    return {
        json.loads(job.body)["output"]["id"]: job.trace for job in research.service.jobs.values()
    }


def of_type(history: list[HistoryEntry], kind: str, step: str | None = None) -> list[HistoryEntry]:
    return [e for e in history if e.type == kind and (step is None or e.step == step)]


async def hook(server: Orchestrator, items: list[int], url: str, **headers: str) -> Any:
    async with httpx.AsyncClient(base_url=server.url, timeout=30.0) as client:
        response = await client.post(
            "/hooks/leads", json={"items": items, "service": url}, headers=headers
        )
    assert response.status_code == 202, response.text
    return response.json()


async def test_the_service_continues_the_hooks_trace_and_calls_back_in_it(
    tmp_path: Path, research: Research, orchestrators: Callable[..., Orchestrator]
) -> None:
    """A hook's traceparent reaches the service with the same trace id and a new parent id per
    task, the service's callback in that trace is in history, and the logs carry the trace id."""
    config = tmp_path / "trace.toml"
    config.write_text(RESEARCH)
    server = await orchestrators(config).start()
    fired = await hook(server, [0, 1], research.url, traceparent=TRACEPARENT, tracestate=TRACESTATE)
    history = await follow_to_end(server, fired["run_id"])
    assert history[-1].type == "run_succeeded"

    sent = traces_by_lead(research)
    assert set(sent) == {"lead-0", "lead-1"}
    parents = set()
    for trace in sent.values():
        assert trace is not None
        assert (trace.parent.trace_id, trace.parent.sampled) == (TRACE_ID, True)
        assert trace.headers()["tracestate"] == TRACESTATE
        parents.add(trace.parent.parent_id)
    assert len(parents) == 2, "each task calls under a span of its own"
    assert SENDER_SPAN not in parents

    assert of_type(history, "event_received")[0].data["trace_id"] == TRACE_ID
    dispatched = of_type(history, "task_dispatched")
    assert [e.data["trace_id"] for e in dispatched] == [TRACE_ID] * 3  # two looks, the join
    for done in of_type(history, "task_succeeded", "look"):
        called_back = parse_traceparent(str(done.data["traceparent"]))
        assert called_back is not None
        assert called_back.trace_id == TRACE_ID
        assert called_back.parent_id not in parents | {SENDER_SPAN}, "the service's own span"
    run_started = await server.logged("run_started")
    assert run_started["trace_id"] == TRACE_ID
    assert await server.stop()


async def test_an_invalid_traceparent_starts_the_run_and_sends_none(
    tmp_path: Path, research: Research, orchestrators: Callable[..., Orchestrator]
) -> None:
    """A hook with an all-zero trace id is accepted as usual; no trace is kept or sent on."""
    config = tmp_path / "trace.toml"
    config.write_text(RESEARCH)
    server = await orchestrators(config).start()
    zero = f"00-{'0' * 32}-{SENDER_SPAN}-01"
    fired = await hook(server, [0], research.url, traceparent=zero, tracestate=TRACESTATE)
    history = await follow_to_end(server, fired["run_id"])
    assert history[-1].type == "run_succeeded"

    assert traces_by_lead(research) == {"lead-0": None}
    assert all("trace_id" not in entry.data for entry in history)
    assert all("trace_id" not in line for line in server.logs)
    assert await server.stop()
