"""Admin routes: fire triggers, read runs and history, follow history live, cancel runs."""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator, Iterable
from datetime import UTC, datetime
from typing import Any

from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

from orchestrator import tracing
from orchestrator.attempts import read_attempts, timing_of
from orchestrator.barrier import Barrier
from orchestrator.cron import fires_after
from orchestrator.engine import Engine, Fired, RunStateError, UnknownTarget
from orchestrator.history_types import UnknownHistoryType, parse_types
from orchestrator.http import (
    HttpError,
    dumps_tolerant,
    idempotency_key,
    parse_json_object,
    read_body,
)
from orchestrator.http import TolerantJSONResponse as JSONResponse  # renders old stored data
from orchestrator.model import TriggerSpec
from orchestrator.records import HistoryEntry, Run, Task
from orchestrator.scheduler import fire_key, schedule_of
from orchestrator.states import RunState
from orchestrator.store import Store
from orchestrator.timing import Attempt
from orchestrator.timing_json import timing_json

SSE_KEEPALIVE_SECONDS = 15.0
BACKLOG_PAGE = 500


def _engine(request: Request) -> Engine:
    engine: Engine = request.app.state.engine
    return engine


def _time_param(request: Request, name: str) -> float | None:
    """Epoch seconds or an ISO 8601 time (UTC unless it says otherwise); 400 if neither."""
    raw = request.query_params.get(name)
    if raw is None:
        return None
    try:
        return float(raw) if re.fullmatch(r"[0-9]{1,12}(\.[0-9]+)?", raw) else _iso(raw)
    except ValueError:
        raise HttpError(
            400, "bad_parameter", f"{name} must be epoch seconds or ISO 8601 (2026-11-23T07:42:00Z)"
        ) from None


def _iso(text: str) -> float:
    moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    return (moment if moment.tzinfo else moment.replace(tzinfo=UTC)).timestamp()


def _int_param(request: Request, name: str, default: int, low: int, high: int) -> int:
    raw = request.query_params.get(name)
    if raw is None:
        return default
    if not re.fullmatch(r"[0-9]{1,18}", raw) or not low <= int(raw) <= high:
        raise HttpError(400, "bad_parameter", f"{name} must be a whole number from {low} to {high}")
    return int(raw)


async def fire_trigger(request: Request) -> Response:
    """Fire a trigger (or a workflow by name) with the JSON body as payload: 202 with the ids.

    A valid `traceparent` (and `tracestate`) is kept with the event; an invalid one ignored."""
    engine = _engine(request)
    name = request.path_params["name"]
    trace = tracing.from_headers(request.headers.items())
    with tracing.logged(trace):
        try:
            engine.resolve(name)
        except UnknownTarget as error:
            raise HttpError(404, "unknown_trigger", str(error)) from None
        dedup = idempotency_key(request)
        payload = parse_json_object(await read_body(request), empty_ok=True)
        fired = await engine.fire(name, payload, dedup_key=dedup, source="admin", trace=trace)
        return await fired_response(engine, fired)


async def fired_response(engine: Engine, fired: Fired) -> Response:
    """202 with the new event and run; 200 for a duplicate, with the run its first delivery
    started (a sender retrying a delivery wants the same answer again). `completed`: the
    tasks waiting on its key that it completed; `kept`: the keys it was kept under for
    waits registered later (both 0 for a duplicate)."""
    run_id = fired.run_id
    if fired.duplicate and run_id is None:
        runs = await engine.store.runs_of_event(fired.event_id)
        run_id = runs[0].id if runs else None
    body = {
        "event_id": fired.event_id, "run_id": run_id, "duplicate": fired.duplicate,
        "completed": fired.completed, "kept": fired.kept,
    }  # fmt: skip
    return JSONResponse(body, status_code=200 if fired.duplicate else 202)


async def list_runs(request: Request) -> Response:
    status = request.query_params.get("status")
    if status is not None and status not in RunState.__members__.values():
        choices = ", ".join(state.value for state in RunState)
        raise HttpError(400, "bad_parameter", f"status must be one of {choices}")
    page = await _engine(request).store.list_runs(
        workflow=request.query_params.get("workflow"),
        status=None if status is None else RunState(status),
        since=_time_param(request, "since"),
        until=_time_param(request, "until"),
        cursor=_run_cursor(request),
        limit=_int_param(request, "limit", 50, 1, 500),
    )
    return JSONResponse(
        {"runs": [run_json(run) for run in page.items], "next_cursor": page.next_cursor}
    )


RUN_ID = re.compile(r"run_[0-9a-hjkmnp-tv-z]{26}")


def _run_cursor(request: Request) -> str | None:
    """A page of runs starts after a run id (the previous page's next_cursor); anything else
    would list an arbitrary page, so it is refused."""
    cursor = request.query_params.get("cursor")
    if cursor is not None and not RUN_ID.fullmatch(cursor):
        raise HttpError(400, "bad_parameter", "cursor must be next_cursor of the previous page")
    return cursor


async def show_run(request: Request) -> Response:
    detail = await run_detail(_engine(request).store, request.path_params["run_id"])
    if detail is None:
        raise HttpError(404, "unknown_run", f"no run {request.path_params['run_id']!r}")
    return JSONResponse(detail)


async def cancel_run(request: Request) -> Response:
    engine = _engine(request)
    try:
        changed = await engine.cancel_run(request.path_params["run_id"])
    except LookupError as error:
        raise HttpError(404, "unknown_run", str(error)) from None
    if not changed:
        raise HttpError(409, "run_not_running", "only a running run can be cancelled")
    return JSONResponse({"run_id": request.path_params["run_id"], "status": "cancelled"})


async def retry_run(request: Request) -> Response:
    """Re-run the failed, timed-out and cancelled tasks of a failed or cancelled run."""
    run_id = request.path_params["run_id"]
    try:
        retried = await _engine(request).retry_run(run_id)
    except LookupError as error:
        raise HttpError(404, "unknown_run", str(error)) from None
    except RunStateError as error:
        raise HttpError(409, "run_not_retryable", str(error)) from None
    return JSONResponse({"run_id": run_id, "status": "running", "retried_tasks": retried})


async def replay_event(request: Request) -> Response:
    """Start a new run from a stored event (refused while one of its runs is active)."""
    force = request.query_params.get("force", "false").lower() in ("1", "true", "yes")
    try:
        fired = await _engine(request).replay(request.path_params["event_id"], force=force)
    except LookupError as error:
        raise HttpError(404, "unknown_event", str(error)) from None
    except RunStateError as error:
        raise HttpError(409, "event_run_active", str(error)) from None
    return JSONResponse({"event_id": fired.event_id, "run_id": fired.run_id}, status_code=202)


def _types_param(request: Request) -> tuple[str, ...] | None:
    """`type=a,b`: entries of any of these types; 400 naming the known types otherwise."""
    raw = request.query_params.get("type")
    if raw is None:
        return None
    try:
        return parse_types(raw)
    except UnknownHistoryType as error:
        raise HttpError(400, "bad_parameter", str(error)) from None


async def list_events(request: Request) -> Response:
    cursor = "cursor" if "cursor" in request.query_params else "after"
    entries = await _engine(request).store.history(
        after=_int_param(request, cursor, 0, 0, 2**62),
        run_id=request.query_params.get("run"),
        task_id=request.query_params.get("task"),
        types=_types_param(request),
        since=_time_param(request, "since"),
        limit=_int_param(request, "limit", 100, 1, 1000),
    )
    last = entries[-1].id if entries else None
    body = {
        "events": [entry.to_json() for entry in entries],
        "next_after": last,
        "next_cursor": last,
    }
    return JSONResponse(body)


async def stream_events(request: Request) -> Response:
    """History as Server-Sent Events; Last-Event-ID (or ?after=) replays what was missed first."""
    resume = request.headers.get("last-event-id") or request.query_params.get("after")
    if resume is not None and not re.fullmatch(r"[0-9]{1,18}", resume):
        raise HttpError(400, "bad_parameter", "Last-Event-ID / after must be a history id")
    engine = _engine(request)
    run_filter = request.query_params.get("run")
    listed = _types_param(request)
    types = None if listed is None else frozenset(listed)
    headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
    if request.method == "HEAD":  # the headers a GET would get, and the answer is over
        head = Response(media_type="text/event-stream", headers=headers)
        del head.headers["content-length"]  # a stream has no length
        return head
    subscription = engine.bus.subscribe()

    def wanted(entry: HistoryEntry) -> bool:
        return (run_filter is None or entry.run_id == run_filter) and (
            types is None or entry.type in types
        )

    async def events() -> AsyncIterator[str]:
        with subscription:
            yield "retry: 1000\n\n"
            last = int(resume) if resume is not None else None
            if last is not None:
                async for entry in _backlog(engine.store, last, run_filter):
                    last = entry.id
                    if wanted(entry):
                        yield _sse(entry)
            iterator = aiter(subscription)
            while True:
                try:
                    # A timer per wait, not a task per entry as wait_for would make.
                    async with asyncio.timeout(SSE_KEEPALIVE_SECONDS):
                        entry = await anext(iterator)
                except TimeoutError:
                    yield ": keep-alive\n\n"
                    continue
                except StopAsyncIteration:
                    return  # fell behind: the client reconnects with Last-Event-ID
                if last is not None and entry.id is not None and entry.id <= last:
                    continue
                if wanted(entry):
                    yield _sse(entry)

    return StreamingResponse(events(), media_type="text/event-stream", headers=headers)


async def _backlog(store: Store, after: int, run_id: str | None) -> AsyncIterator[HistoryEntry]:
    while True:
        page = await store.history(after=after, run_id=run_id, limit=BACKLOG_PAGE)
        for entry in page:
            yield entry
        if len(page) < BACKLOG_PAGE:
            return
        after = page[-1].id or after


def _sse(entry: HistoryEntry) -> str:
    return f"id: {entry.id}\nevent: {entry.type}\ndata: {dumps_tolerant(entry.to_json())}\n\n"


def run_json(run: Run) -> dict[str, Any]:
    return {
        "id": run.id,
        "workflow": run.workflow,
        "event_id": run.event_id,
        "status": run.status.value,
        "created_at": run.created_at,
        "finished_at": run.finished_at,
    }


def task_json(task: Task, earlier: Iterable[Attempt] = ()) -> dict[str, Any]:
    """A task's current attempt: `waited` (queued -> started) apart from `duration` (the run,
    started -> finished); `earlier_attempts` are the attempts a retry replaced."""
    return {
        "id": task.id,
        "step": task.step,
        "item": task.item_key,
        "state": task.state.value,
        "attempt": task.attempt,
        "queued_at": task.queued_at,
        "started_at": task.started_at,
        "finished_at": task.finished_at,
        "waited": task.waited,
        "duration": task.ran,
        "error": task.error,
        "output": task.output,
        "earlier_attempts": [attempt_json(attempt) for attempt in earlier],
    }


def attempt_json(attempt: Attempt) -> dict[str, Any]:
    return {
        "attempt": attempt.number,
        "queued_at": attempt.queued,
        "started_at": attempt.started,
        "finished_at": attempt.finished,
        "waited": attempt.waited,
        "duration": attempt.ran,
        "failed": attempt.failed,
    }


def barrier_json(barrier: Barrier) -> dict[str, Any]:
    return {
        "step": barrier.step,
        "status": barrier.status.value,
        "succeeded": barrier.succeeded,
        "failed": barrier.failed,
        "expected": barrier.expected,
        "required": barrier.required,
        "policy": barrier.policy.model_dump(),
        "deadline_at": barrier.deadline_at,
        "reason": barrier.reason,
    }


async def run_detail(store: Store, run_id: str) -> dict[str, Any] | None:
    run = await store.get_run(run_id)
    if run is None:
        return None
    tasks = await store.tasks_of_run(run_id)
    found = await read_attempts(store, tasks, run_id)
    return {
        **run_json(run),
        "barriers": [barrier_json(barrier) for barrier in await store.barriers_of_run(run_id)],
        "tasks": [task_json(task, found.earlier.get(task.id, ())) for task in tasks],
        "timing": timing_json(timing_of(run, found)),
    }


def trigger_preview(name: str, trigger: TriggerSpec, count: int, now: datetime) -> dict[str, Any]:
    """A trigger and its next `count` fire times, local and UTC: DST made visible in advance."""
    preview: dict[str, Any] = {
        "name": name,
        "kind": trigger.kind,
        "workflow": trigger.workflow,
        "description": trigger.description,
    }
    if trigger.cron is not None:
        schedule = schedule_of(trigger)
        fires = fires_after(schedule, now, count) if count else []
        preview.update(
            cron=trigger.cron,
            timezone=trigger.timezone.key,
            on_gap=schedule.on_gap,
            on_overlap=schedule.on_overlap,
            misfire=trigger.misfire,
            next=[
                {"utc": fire_key(at), "local": at.astimezone(trigger.timezone).isoformat()}
                for at in fires
            ],
        )
    if trigger.webhook is not None:
        preview.update(scheme=trigger.webhook.scheme, path=f"/hooks/{name}")
        if trigger.webhook.completes:
            preview.update(
                completes=list(trigger.webhook.completes),
                starts_runs=trigger.webhook.starts_runs,
                keep_unmatched=trigger.webhook.keep_unmatched,
            )
    return preview


async def list_triggers(request: Request) -> Response:
    engine = _engine(request)
    count = _int_param(request, "next", 5, 0, 100)
    now = datetime.fromtimestamp(engine.clock(), UTC)
    previews = [trigger_preview(n, t, count, now) for n, t in engine.triggers.items()]
    return JSONResponse({"triggers": previews})


routes = [
    Route("/triggers", list_triggers, methods=["GET"]),
    Route("/triggers/{name}/fire", fire_trigger, methods=["POST"]),
    Route("/runs", list_runs, methods=["GET"]),
    Route("/runs/{run_id}", show_run, methods=["GET"]),
    Route("/runs/{run_id}/cancel", cancel_run, methods=["POST"]),
    Route("/runs/{run_id}/retry", retry_run, methods=["POST"]),
    Route("/events/{event_id}/replay", replay_event, methods=["POST"]),
    Route("/events", list_events, methods=["GET"]),
    Route("/events/stream", stream_events, methods=["GET"]),
]
