"""POST /callbacks/{token} through the real ASGI app: every answer, and what each changes."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
from starlette.applications import Starlette

from orchestrator.invoke import Context
from orchestrator.records import HistoryEntry
from orchestrator.settings import Settings
from orchestrator.signing import new_secret, sign_headers
from orchestrator.states import Outcome, TaskState
from orchestrator.store import StoreUnavailable
from tests.api.conftest import engine_of
from tests.api.rejected import counted
from tests.engine import handlers
from tests.engine.conftest import H, wait_for_end

SERVICE_SECRET = new_secret()
ROTATED_SECRET = new_secret()
GOOD = {"status": "succeeded", "output": {"name": "lead", "count": 3}}


def settings_for(tmp_path: Path) -> Settings:
    step = {"handler": H + "hand_off", "for_each": "event.items"}
    return Settings.model_validate(
        {
            "database_url": f"sqlite:///{tmp_path / 'callbacks.db'}",
            "admin_token": "t",
            "body_limit": 4096,
            "services": {"svc": {"secrets": [SERVICE_SECRET, ROTATED_SECRET]}},
            "workflows": {
                "wf": {"steps": {"wait": step}},
                "signed": {"steps": {"wait": {**step, "service": "svc"}}},
                "short": {"steps": {"wait": {**step, "timeout": "50ms"}}},
                "retried": {
                    "steps": {"wait": {**step, "timeout": "30s", "retries": 1, "backoff": "10ms"}}
                },
                "flaky": {
                    "steps": {
                        "wait": {
                            "handler": H + "hand_off_after_failures",
                            "for_each": "event.items",
                            "backoff": "10ms",
                        }
                    }
                },
            },
        }
    )


async def handed_off(app: Starlette, workflow: str, items: int = 1) -> tuple[str, list[Context]]:
    """Fire `workflow` and wait (on the history bus) until every task awaits its callback."""
    engine = engine_of(app)
    with engine.bus.subscribe() as subscription:
        fired = await engine.fire(workflow, {"items": list(range(items))})
        waiting = 0
        async with asyncio.timeout(5):
            async for entry in subscription:
                waiting += entry.type == "task_awaiting_callback"
                if waiting == items:
                    break
    assert fired.run_id is not None
    return fired.run_id, [handlers.STATE.handed_off[str(index)] for index in range(items)]


def signed(
    body: Any, secret: str, message_id: str = "msg-1", timestamp: int | None = None
) -> tuple[bytes, dict[str, str]]:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    headers = sign_headers(secret, raw, message_id=message_id, timestamp=timestamp)
    return raw, {**headers, "content-type": "application/json"}


async def call_back(
    client: httpx.AsyncClient,
    ctx: Context,
    body: Any = GOOD,
    secret: str | None = None,
    message_id: str = "msg-1",
    timestamp: int | None = None,
    suffix: str = "",
) -> httpx.Response:
    raw, headers = signed(body, secret or ctx.callback_secret, message_id, timestamp)
    path = urlsplit(ctx.callback_url).path + suffix
    return await client.post(path, content=raw, headers=headers)


async def history_of(app: Starlette, run_id: str) -> list[HistoryEntry]:
    return await engine_of(app).store.history(run_id=run_id, limit=1000)


async def test_signed_callback_completes_the_task_and_the_run(
    app: Starlette, client: httpx.AsyncClient
) -> None:
    """A callback signed with the attempt's secret answers 200 and completes the run."""
    run_id, (ctx,) = await handed_off(app, "wf")
    with engine_of(app).bus.subscribe() as subscription:
        response = await call_back(client, ctx)
        finished = await wait_for_end(subscription, run_id)
    assert (response.status_code, response.json()["status"]) == (200, "accepted")
    assert finished.status == "succeeded"
    (task,) = await engine_of(app).store.tasks_of_run(run_id)
    assert (task.state, task.output) == (TaskState.SUCCEEDED, GOOD["output"])


async def test_the_callback_url_is_not_the_task_id(app: Starlette) -> None:
    """The capability in the URL is an unguessable token, not the plain task id."""
    _, (ctx,) = await handed_off(app, "wf")
    token = urlsplit(ctx.callback_url).path.rsplit("/", 1)[-1]
    assert ctx.task_id not in token
    assert len(token) >= 22  # at least 128 bits in URL-safe base64


async def test_same_webhook_id_again_is_a_duplicate_counted_once(
    app: Starlette, client: httpx.AsyncClient
) -> None:
    """Redelivering the same webhook-id and body answers 200 duplicate; the barrier counts one."""
    run_id, (ctx,) = await handed_off(app, "wf")
    assert (await call_back(client, ctx)).status_code == 200
    again = await call_back(client, ctx)
    assert (again.status_code, again.json()["status"]) == (200, "duplicate")
    (barrier,) = await engine_of(app).store.barriers_of_run(run_id)
    assert (barrier.succeeded, barrier.failed) == (1, 0)
    rejected = [e for e in await history_of(app, run_id) if e.type == "callback_rejected"]
    assert [e.data["reason"] for e in rejected] == ["duplicate received, not applied"]


async def test_reused_webhook_id_with_another_body_is_a_conflict(
    app: Starlette, client: httpx.AsyncClient
) -> None:
    """The same webhook-id with a different body answers 409 and changes nothing."""
    run_id, (ctx,) = await handed_off(app, "wf")
    await call_back(client, ctx)
    other = {"status": "succeeded", "output": {"name": "other", "count": 9}}
    response = await call_back(client, ctx, body=other)
    assert response.status_code == 409
    (task,) = await engine_of(app).store.tasks_of_run(run_id)
    assert task.output == GOOD["output"]


async def test_new_delivery_with_the_same_result_is_a_duplicate(
    app: Starlette, client: httpx.AsyncClient
) -> None:
    """Another webhook-id carrying the result already applied answers 200 duplicate."""
    _, (ctx,) = await handed_off(app, "wf")
    await call_back(client, ctx, message_id="first")
    response = await call_back(client, ctx, message_id="second")
    assert (response.status_code, response.json()["status"]) == (200, "duplicate")


async def test_different_result_after_completion_is_a_conflict(
    app: Starlette, client: httpx.AsyncClient
) -> None:
    """A later callback with another outcome answers 409 and the first result stands."""
    run_id, (ctx,) = await handed_off(app, "wf")
    await call_back(client, ctx, message_id="first")
    failed = {"status": "failed", "error": "changed my mind"}
    response = await call_back(client, ctx, body=failed, message_id="second")
    assert response.status_code == 409
    (task,) = await engine_of(app).store.tasks_of_run(run_id)
    assert task.state is TaskState.SUCCEEDED


async def test_failed_callback_fails_the_task_with_its_error(
    app: Starlette, client: httpx.AsyncClient
) -> None:
    """status = failed completes the task as failed, with the sender's error."""
    run_id, (ctx,) = await handed_off(app, "wf")
    response = await call_back(client, ctx, body={"status": "failed", "error": "no such lead"})
    assert response.status_code == 200
    (task,) = await engine_of(app).store.tasks_of_run(run_id)
    assert (task.state, task.error) == (TaskState.FAILED, "no such lead")


async def test_service_secrets_sign_too_and_either_rotated_secret_works(
    app: Starlette, client: httpx.AsyncClient
) -> None:
    """A step's service secrets are accepted beside the attempt's secret, old and new alike."""
    _, (first, second) = await handed_off(app, "signed", items=2)
    assert (await call_back(client, first, secret=SERVICE_SECRET)).status_code == 200
    assert (await call_back(client, second, secret=ROTATED_SECRET)).status_code == 200


def _forged(ctx: Context) -> list[tuple[str, dict[str, str]]]:
    _, good = signed(GOOD, ctx.callback_secret)
    now = int(time.time())
    return [
        ("wrong secret", signed(GOOD, new_secret())[1]),
        ("missing headers", {"content-type": "application/json"}),
        ("stale timestamp", signed(GOOD, ctx.callback_secret, timestamp=now - 3600)[1]),
        ("future timestamp", signed(GOOD, ctx.callback_secret, timestamp=now + 3600)[1]),
        ("non-numeric timestamp", {**good, "webhook-timestamp": "yesterday"}),
        ("no v1 signature", {**good, "webhook-signature": "v0,abc"}),
        ("bad base64", {**good, "webhook-signature": "v1,%%%not-base64%%%"}),
        ("other message id", {**good, "webhook-id": "msg-other"}),
    ]


async def test_forged_or_malformed_signatures_answer_401_and_change_nothing(
    app: Starlette, client: httpx.AsyncClient
) -> None:
    """Every bad signature answers 401 with a JSON reason, is counted, and leaves the task;
    the task's history gets one sampled row a minute (two if the requests straddle one)."""
    run_id, (ctx,) = await handed_off(app, "wf")
    path = urlsplit(ctx.callback_url).path
    raw = json.dumps(GOOD).encode()
    with engine_of(app).bus.subscribe() as subscription:
        for name, headers in _forged(ctx):
            response = await client.post(path, content=raw, headers=headers)
            assert response.status_code == 401, name
            assert response.json()["error"] == "bad_signature", name
        async with asyncio.timeout(5):  # the sampled row is written in the background
            async for entry in subscription:
                if entry.type == "callback_rejected":
                    break
    (task,) = await engine_of(app).store.tasks_of_run(run_id)
    assert task.state is TaskState.DISPATCHED
    assert await counted(client) == {("/callbacks/{token}", "bad_signature"): len(_forged(ctx))}
    rejected = [e for e in await history_of(app, run_id) if e.type == "callback_rejected"]
    assert 1 <= len(rejected) <= 2
    assert {(e.data["status"], e.data["sampled"], e.task_id) for e in rejected} == {
        (401, True, ctx.task_id)
    }


async def test_unknown_token_answers_404(client: httpx.AsyncClient) -> None:
    """A token no task was given answers 404 with a JSON body."""
    raw, headers = signed(GOOD, new_secret())
    response = await client.post("/callbacks/not-a-token", content=raw, headers=headers)
    assert (response.status_code, response.json()["error"]) == (404, "unknown_token")


@pytest.mark.parametrize(
    ("body", "status", "error"),
    [
        (b"{not json", 400, "malformed_json"),
        (b"[1]", 422, "not_an_object"),
        (b'{"status": "finished"}', 422, "invalid_callback"),
        (b'{"status": "succeeded", "extra": 1}', 422, "invalid_callback"),
        (b'{"status": "succeeded", "output": {"name": "x"}}', 422, "invalid_output"),
    ],
    ids=["not-json", "not-object", "bad-status", "unknown-field", "output-model"],
)
async def test_malformed_callbacks_are_refused_and_change_nothing(
    app: Starlette, client: httpx.AsyncClient, body: bytes, status: int, error: str
) -> None:
    """A signed but malformed body, or output that fails the declared model, changes nothing."""
    run_id, (ctx,) = await handed_off(app, "wf")
    response = await call_back(client, ctx, body=body)
    assert (response.status_code, response.json()["error"]) == (status, error)
    (task,) = await engine_of(app).store.tasks_of_run(run_id)
    assert task.state is TaskState.DISPATCHED


async def test_oversized_body_answers_413_before_it_is_read_whole(
    app: Starlette, client: httpx.AsyncClient
) -> None:
    """A body over the limit answers 413, even when streamed without a Content-Length."""
    _, (ctx,) = await handed_off(app, "wf")
    path = urlsplit(ctx.callback_url).path
    big = b"x" * 5000
    _, headers = signed(big, ctx.callback_secret)

    async def chunks() -> AsyncIterator[bytes]:
        for start in range(0, len(big), 1000):
            yield big[start : start + 1000]

    declared = await client.post(path, content=big, headers=headers)
    streamed = await client.post(path, content=chunks(), headers=headers)
    assert declared.status_code == streamed.status_code == 413


async def test_callback_after_the_timeout_is_gone(
    app: Starlette, client: httpx.AsyncClient
) -> None:
    """Once the task timed out, its late callback answers 410 and the run stays failed."""
    engine = engine_of(app)
    with engine.bus.subscribe() as subscription:
        run_id, (ctx,) = await handed_off(app, "short")
        finished = await wait_for_end(subscription, run_id)
    assert finished.status == "failed"
    response = await call_back(client, ctx)
    assert response.status_code == 410
    assert "timed_out" in response.json()["detail"]


async def test_callback_after_cancel_is_gone(app: Starlette, client: httpx.AsyncClient) -> None:
    """A cancelled run's task answers its callback with 410."""
    run_id, (ctx,) = await handed_off(app, "wf")
    await engine_of(app).cancel_run(run_id)
    assert (await call_back(client, ctx)).status_code == 410


async def test_callback_of_a_replaced_attempt_is_gone(
    app: Starlette, client: httpx.AsyncClient
) -> None:
    """After a timeout and retry, the first attempt's token answers 410; the new one works."""
    engine = engine_of(app)
    with engine.bus.subscribe() as subscription:
        _, (first,) = await handed_off(app, "retried")
        # The first attempt times out (an operator says so: its timer would wait for the
        # deadline, and ignores a report before it).
        assert await engine.report(first.task_id, 1, Outcome.TIMED_OUT, source="operator")
        async with asyncio.timeout(5):
            async for entry in subscription:
                if entry.type == "task_awaiting_callback" and entry.data["attempt"] == 2:
                    break
    second = handlers.STATE.handed_off["0"]
    assert second.attempt == 2
    assert second.callback_url != first.callback_url
    stale = await call_back(client, first)
    assert (stale.status_code, stale.json()["error"]) == (410, "gone")
    assert (await call_back(client, second)).status_code == 200


async def test_callback_before_the_handler_returns_counts_once(
    app: Starlette, client: httpx.AsyncClient
) -> None:
    """A service that calls back before its registration call returns gets 200, counted once."""
    answers: list[int] = []
    answered = asyncio.Event()

    async def synchronous_service(ctx: Context) -> None:
        answers.append((await call_back(client, ctx)).status_code)
        answered.set()

    handlers.STATE.before_return = synchronous_service
    engine = engine_of(app)
    with engine.bus.subscribe() as subscription:
        fired = await engine.fire("wf", {"items": [0]})
        assert fired.run_id is not None
        finished = await wait_for_end(subscription, fired.run_id)
    async with asyncio.timeout(5):
        await answered.wait()
    assert answers == [200]
    assert finished.status == "succeeded"
    assert not finished.of_type("task_awaiting_callback")
    (barrier,) = await engine.store.barriers_of_run(fired.run_id)
    assert barrier.succeeded == 1


async def test_heartbeat_extends_the_deadline(app: Starlette, client: httpx.AsyncClient) -> None:
    """A signed heartbeat pushes a waiting task's deadline; after completion it answers 410."""
    handlers.STATE.await_timeouts = {1: "30s"}
    run_id, (ctx,) = await handed_off(app, "wf")
    (before,) = await engine_of(app).store.tasks_of_run(run_id)
    response = await call_back(client, ctx, body=b"", suffix="/heartbeat", message_id="hb-1")
    assert response.status_code == 200
    (after,) = await engine_of(app).store.tasks_of_run(run_id)
    assert before.due_at is not None
    assert after.due_at is not None
    assert after.due_at > before.due_at
    assert response.json()["deadline"] == after.due_at
    await call_back(client, ctx)
    late = await call_back(client, ctx, body=b"", suffix="/heartbeat", message_id="hb-2")
    assert late.status_code == 410


async def test_failed_hand_off_is_dispatched_again_with_the_same_attempt(app: Starlette) -> None:
    """A DispatchError re-dispatches the same attempt from the timer heap, using no retry."""
    handlers.STATE.dispatch_failures = 2
    run_id, (ctx,) = await handed_off(app, "flaky")
    assert ctx.attempt == 1
    failures = [e for e in await history_of(app, run_id) if e.type == "task_dispatch_failed"]
    assert [e.data["tries"] for e in failures] == [1, 2]
    (task,) = await engine_of(app).store.tasks_of_run(run_id)
    assert (task.state, task.attempt, task.awaiting) == (TaskState.DISPATCHED, 1, True)


async def test_busy_store_answers_503_with_retry_after(
    app: Starlette, client: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A temporary store problem is a 503 with Retry-After, never a 4xx that senders drop."""
    _, (ctx,) = await handed_off(app, "wf")

    async def busy(*args: object, **kwargs: object) -> None:
        raise StoreUnavailable("database is locked")

    monkeypatch.setattr(engine_of(app), "callback", busy)
    response = await call_back(client, ctx)
    assert response.status_code == 503
    assert response.headers["retry-after"] == "1"


async def test_secrets_never_appear_in_history_or_answers(
    app: Starlette, client: httpx.AsyncClient
) -> None:
    """No secret (service or per-attempt) shows in any answer or history entry."""
    run_id, (ctx,) = await handed_off(app, "signed")
    answers = [
        (await call_back(client, ctx, secret=new_secret())).text,
        (await call_back(client, ctx, body=b"{bad")).text,
        (await call_back(client, ctx)).text,
    ]
    entries = json.dumps([e.to_json() for e in await history_of(app, run_id)])
    for secret in (SERVICE_SECRET, ROTATED_SECRET, ctx.callback_secret):
        key = secret.removeprefix("whsec_")
        assert all(key not in text for text in [*answers, entries])


async def test_callback_for_an_attempt_pending_after_a_doubtful_hand_off_is_accepted(
    app: Starlette, client: httpx.AsyncClient
) -> None:
    """A hand-off that timed out may still have reached the service: its callback completes the
    task while it waits to be re-dispatched, and the re-dispatch then does nothing."""
    handlers.STATE.dispatch_failures = 1
    handlers.STATE.retry_after = 3600.0
    engine = engine_of(app)
    with engine.bus.subscribe() as subscription:
        fired = await engine.fire("flaky", {"items": [0]})
        assert fired.run_id is not None
        async with asyncio.timeout(5):
            async for entry in subscription:
                if entry.type == "task_dispatch_failed":
                    break
        ctx = handlers.STATE.doubtful["0"]
        response = await call_back(client, ctx)
        finished = await wait_for_end(subscription, fired.run_id)
    assert (response.status_code, response.json()["status"]) == (200, "accepted")
    assert finished.status == "succeeded"
    (task,) = await engine.store.tasks_of_run(fired.run_id)
    assert (task.state, task.attempt) == (TaskState.SUCCEEDED, 1)
    assert engine.timers.due_of(("task", task.id)) is None, "the queued re-dispatch was dropped"


async def test_operator_retry_gives_a_new_token_and_the_old_one_is_gone(
    app: Starlette, client: httpx.AsyncClient
) -> None:
    """After a timed-out run is retried, its old callback answers 410 and the new one completes it."""
    # The retried attempt must wait as long as the test needs.
    handlers.STATE.await_timeouts = {2: "30s"}
    engine = engine_of(app)
    with engine.bus.subscribe() as subscription:
        run_id, (old,) = await handed_off(app, "short")
        await wait_for_end(subscription, run_id)
    response = await client.post(
        f"/admin/runs/{run_id}/retry", headers={"Authorization": "Bearer t"}
    )
    assert (response.status_code, response.json()["retried_tasks"]) == (200, 1)
    with engine.bus.subscribe() as subscription:
        async with asyncio.timeout(5):
            async for entry in subscription:
                if entry.type == "task_awaiting_callback":
                    break
        new = handlers.STATE.handed_off["0"]
        assert (new.attempt, new.callback_url != old.callback_url) == (2, True)
        assert (await call_back(client, old)).status_code == 410
        assert (await call_back(client, new)).status_code == 200
        finished = await wait_for_end(subscription, run_id)
    assert finished.status == "succeeded"
    again = await client.post(f"/admin/runs/{run_id}/retry", headers={"Authorization": "Bearer t"})
    assert (again.status_code, again.json()["error"]) == (409, "run_not_retryable")
