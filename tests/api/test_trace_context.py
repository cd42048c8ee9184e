"""W3C trace context through the real app: hooks, fires and callbacks keep it, history and
logs show it, and spans are made where a tracer records them."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
import structlog
from starlette.applications import Starlette
from structlog.testing import capture_logs

from orchestrator import tracing
from orchestrator.invoke import Context
from orchestrator.records import HistoryEntry
from orchestrator.settings import Settings
from orchestrator.tracecontext import TraceContext, new_trace
from tests.api.conftest import engine_of
from tests.api.test_callbacks import GOOD, history_of, signed
from tests.engine import handlers
from tests.engine.conftest import H, wait_for_end

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
TRACEPARENT = f"00-{TRACE_ID}-00f067aa0ba902b7-01"
TRACESTATE = "congo=t61rcWkgMzE,rojo=00f067aa0ba902b7"
SERVICE_TRACEPARENT = f"00-{TRACE_ID}-b7ad6b7169203331-01"  # the service's own span
INVALID = [
    f"ff-{TRACE_ID}-00f067aa0ba902b7-01",  # version ff
    f"00-{'0' * 32}-00f067aa0ba902b7-01",  # all-zero trace id
    f"00-{TRACE_ID}-{'0' * 16}-01",  # all-zero parent id
    f"00-{TRACE_ID}-00f067aa0ba902b7",  # flags missing
]
ADMIN = {"Authorization": "Bearer t"}


def settings_for(tmp_path: Path) -> Settings:
    return Settings.model_validate(
        {
            "database_url": f"sqlite:///{tmp_path / 'trace.db'}",
            "admin_token": "t",
            "workflows": {
                "wf": {
                    "steps": {
                        "wait": {"handler": H + "hand_off", "for_each": "event.items"},
                        "after": {"handler": H + "single", "needs": ["wait"]},
                    }
                },
            },
            "triggers": {"open": {"workflow": "wf", "webhook": {"scheme": "none"}}},
        }
    )


async def started(
    app: Starlette, send: Any, items: int = 1
) -> tuple[dict[str, Any], list[Context]]:
    """Send the request that starts a run (`send()`), and wait until its tasks await
    their callbacks; the answer's body and the tasks' contexts."""
    with engine_of(app).bus.subscribe() as subscription:
        response = await send()
        assert response.status_code == 202, response.text
        waiting = 0
        async with asyncio.timeout(5):
            async for entry in subscription:
                waiting += entry.type == "task_awaiting_callback"
                if waiting == items:
                    break
    body: dict[str, Any] = response.json()
    return body, [handlers.STATE.handed_off[str(index)] for index in range(items)]


def hook(client: httpx.AsyncClient, **headers: str) -> Any:
    return lambda: client.post("/hooks/open", json={"items": [0]}, headers=headers)


def fire(client: httpx.AsyncClient, **headers: str) -> Any:
    return lambda: client.post(
        "/admin/triggers/wf/fire", json={"items": [0]}, headers={**ADMIN, **headers}
    )


def entry(history: list[HistoryEntry], kind: str) -> HistoryEntry:
    return next(item for item in history if item.type == kind)


@pytest.mark.parametrize("send", [hook, fire])
async def test_a_valid_trace_is_kept_and_shown(
    app: Starlette, client: httpx.AsyncClient, send: Any
) -> None:
    """A hook's or a fire's traceparent and tracestate are kept with the event, its trace id
    is in event_received and task_dispatched, and the task continues it under its own span."""
    body, (ctx,) = await started(app, send(client, traceparent=TRACEPARENT, tracestate=TRACESTATE))
    event = await engine_of(app).store.get_event(body["event_id"])
    assert event is not None
    assert (event.traceparent, event.tracestate) == (TRACEPARENT, TRACESTATE)
    history = await history_of(app, body["run_id"])
    assert entry(history, "event_received").data["trace_id"] == TRACE_ID
    assert entry(history, "task_dispatched").data["trace_id"] == TRACE_ID
    assert ctx.trace is not None
    assert ctx.trace.parent.trace_id == TRACE_ID
    assert ctx.trace.parent.parent_id != "00f067aa0ba902b7"
    assert ctx.trace.headers()["tracestate"] == TRACESTATE


@pytest.mark.parametrize("send", [hook, fire])
@pytest.mark.parametrize("traceparent", INVALID)
async def test_an_invalid_trace_is_ignored(
    app: Starlette, client: httpx.AsyncClient, send: Any, traceparent: str
) -> None:
    """An invalid traceparent is no error and is not stored: no trace, its tracestate neither."""
    body, (ctx,) = await started(app, send(client, traceparent=traceparent, tracestate=TRACESTATE))
    event = await engine_of(app).store.get_event(body["event_id"])
    assert event is not None
    assert (event.traceparent, event.tracestate) == (None, None)
    history = await history_of(app, body["run_id"])
    assert "trace_id" not in entry(history, "event_received").data
    assert "trace_id" not in entry(history, "task_dispatched").data
    assert ctx.trace is None


async def test_an_invalid_tracestate_keeps_the_traceparent(
    app: Starlette, client: httpx.AsyncClient
) -> None:
    """A tracestate with a bad member is dropped whole, the traceparent kept."""
    body, _ = await started(app, hook(client, traceparent=TRACEPARENT, tracestate="Bad Key=1"))
    event = await engine_of(app).store.get_event(body["event_id"])
    assert event is not None
    assert (event.traceparent, event.tracestate) == (TRACEPARENT, None)


async def test_no_trace_is_no_trace(app: Starlette, client: httpx.AsyncClient) -> None:
    """A hook without a traceparent starts no trace of its own where nothing records spans."""
    body, (ctx,) = await started(app, hook(client))
    event = await engine_of(app).store.get_event(body["event_id"])
    assert event is not None
    assert event.traceparent is None
    assert ctx.trace is None


async def test_a_replay_continues_the_events_trace(
    app: Starlette, client: httpx.AsyncClient
) -> None:
    """A replayed event's new run continues the trace the event was kept with."""
    first, _ = await started(app, hook(client, traceparent=TRACEPARENT, tracestate=TRACESTATE))
    replay = f"/admin/events/{first['event_id']}/replay?force=true"
    body, (ctx,) = await started(app, lambda: client.post(replay, headers=ADMIN))
    assert body["run_id"] != first["run_id"]
    history = await history_of(app, body["run_id"])
    assert entry(history, "event_replayed").data["trace_id"] == TRACE_ID
    assert entry(history, "task_dispatched").data["trace_id"] == TRACE_ID
    assert ctx.trace is not None
    assert ctx.run_id == body["run_id"]
    assert (ctx.trace.parent.trace_id, ctx.trace.headers()["tracestate"]) == (TRACE_ID, TRACESTATE)


async def test_a_callbacks_trace_is_in_the_completion_entry(
    app: Starlette, client: httpx.AsyncClient
) -> None:
    """A callback's traceparent is recorded in the task's completion entry; an invalid one
    is ignored, and so is a missing one."""
    body, (ctx,) = await started(app, hook(client, traceparent=TRACEPARENT), items=1)
    with engine_of(app).bus.subscribe() as subscription:
        raw = await call_back_with(client, ctx, traceparent=SERVICE_TRACEPARENT)
        await wait_for_end(subscription, body["run_id"])
    assert raw.status_code == 200
    done = next(
        e for e in await history_of(app, body["run_id"])
        if e.type == "task_succeeded" and e.step == "wait"
    )  # fmt: skip
    assert (done.data["trace_id"], done.data["traceparent"]) == (TRACE_ID, SERVICE_TRACEPARENT)


async def test_a_callback_with_an_invalid_trace_records_none(
    app: Starlette, client: httpx.AsyncClient
) -> None:
    """An invalid traceparent on a callback is no error and is not recorded."""
    body, (ctx,) = await started(app, hook(client))
    with engine_of(app).bus.subscribe() as subscription:
        raw = await call_back_with(client, ctx, traceparent=INVALID[0])
        await wait_for_end(subscription, body["run_id"])
    assert raw.status_code == 200
    done = next(e for e in await history_of(app, body["run_id"]) if e.type == "task_succeeded")
    assert "trace_id" not in done.data
    assert "traceparent" not in done.data


async def call_back_with(client: httpx.AsyncClient, ctx: Context, **headers: str) -> httpx.Response:
    """The service's signed callback, with these headers too."""
    raw, signature = signed(GOOD, ctx.callback_secret)
    path = urlsplit(ctx.callback_url).path
    return await client.post(path, content=raw, headers={**signature, **headers})


async def test_the_requests_log_lines_carry_the_trace_id(
    app: Starlette, client: httpx.AsyncClient
) -> None:
    """Log lines written while a traced hook is handled carry its trace id."""
    processors = [structlog.contextvars.merge_contextvars, tracing.own_trace_only]
    with capture_logs(processors=processors) as logs:
        await started(app, hook(client, traceparent=TRACEPARENT))
    run_started = next(line for line in logs if line["event"] == "run_started")
    assert run_started["trace_id"] == TRACE_ID


# -- spans, with a tracer that records them -----------------------------------------------------


@dataclass
class Recorded:
    name: str
    parent: TraceContext | None
    context: TraceContext
    start: float | None
    attributes: dict[str, Any] = field(default_factory=dict)

    def annotate(self, **attributes: Any) -> None:
        self.attributes.update(attributes)


class RecordingTracer:
    """Records each span with a context of its own, as an OpenTelemetry SDK would."""

    def __init__(self) -> None:
        self.spans: list[Recorded] = []

    @contextlib.contextmanager
    def span(
        self,
        name: str,
        parent: TraceContext | None,
        *,
        start: float | None = None,
        **attributes: Any,
    ) -> Iterator[Recorded]:
        own = parent.child() if parent is not None else new_trace(sampled=True)
        recorded = Recorded(name, parent, own, start, dict(attributes))
        self.spans.append(recorded)
        yield recorded

    def named(self, name: str) -> list[Recorded]:
        return [span for span in self.spans if span.name == name]


@pytest.fixture
def recorder() -> Iterator[RecordingTracer]:
    """A recording tracer installed for this test only."""
    tracer = RecordingTracer()
    tracing.use(tracer)
    yield tracer
    tracing.use(None)


async def test_spans_for_fire_dispatch_callback_and_join(
    app: Starlette, client: httpx.AsyncClient, recorder: RecordingTracer
) -> None:
    """Where a tracer records, the fire span continues the sender's trace and the event keeps
    the fire span's context; each task's dispatch span is its child, the callback's span the
    service's, and the join, from the last callback to the next step's start, the fire's."""
    body, (ctx,) = await started(app, hook(client, traceparent=TRACEPARENT))
    with engine_of(app).bus.subscribe() as subscription:
        await call_back_with(client, ctx, traceparent=SERVICE_TRACEPARENT)
        await wait_for_end(subscription, body["run_id"])

    (fired,) = recorder.named("fire")
    assert fired.parent is not None
    assert fired.parent.parent.header() == TRACEPARENT
    assert fired.attributes["run_id"] == body["run_id"]
    event = await engine_of(app).store.get_event(body["event_id"])
    assert event is not None
    assert event.traceparent == fired.context.parent.header()
    dispatches = recorder.named("dispatch")
    assert [span.attributes["step"] for span in dispatches] == ["wait", "after"]
    assert all(span.parent == fired.context for span in dispatches)
    assert ctx.trace == dispatches[0].context
    (called_back,) = recorder.named("callback")
    assert called_back.parent is not None
    assert called_back.parent.parent.header() == SERVICE_TRACEPARENT
    assert called_back.attributes["status"] == 200
    (joined,) = recorder.named("join")
    assert (joined.parent, joined.attributes["step"]) == (fired.context, "after")
    (task,) = [
        t for t in await engine_of(app).store.tasks_of_run(body["run_id"]) if t.step == "wait"
    ]
    assert joined.start == task.finished_at
