"""Real services' own ways of completing a task, through the ASGI app: a secret header,
Twilio's signed forms, the capability URL alone, a provider's body shape, and Stripe events
completing tasks by key; the admin listings of waits and kept events."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any
from urllib.parse import urlencode, urlsplit

import httpx
import stripe
from starlette.applications import Starlette
from twilio.request_validator import RequestValidator

from orchestrator.invoke import Context
from orchestrator.settings import Settings
from orchestrator.signing import sign_headers
from orchestrator.states import TaskState
from tests.api.conftest import engine_of
from tests.api.rejected import AUTH, counted
from tests.engine import handlers
from tests.engine.conftest import H, wait_for_end

PUBLIC = "https://orchestrator.example.com/base"
HEADER_SECRET = "transcriber-header-secret-1"
TWILIO_TOKEN = "0123456789abcdef0123456789abcdef"
STRIPE_SECRET = "whsec_stripe_test_secret_123"
PROVIDER_SECRET = "whsec_" + "QUJDREVGR0hJSktMTU5PUFFSU1RVVldYWVo="  # base64 of 26+ bytes


def settings_for(tmp_path: Path) -> Settings:
    step = {"handler": H + "hand_off_after_failures", "for_each": "event.items"}  # any output
    keyed = {"handler": "tests.engine.key_handlers:await_untyped", "for_each": "event.intents"}
    services = {
        "transcriber": {
            "auth": "header",
            "header": "X-Webhook-Token",
            "secret": HEADER_SECRET,
            "result": {
                "status_field": "status",
                "succeeded_when": ["completed"],
                "failed_when": ["error"],
                "output_field": "text",
                "error_field": "error",
            },
        },
        "sms": {
            "auth": "twilio",
            "secret": TWILIO_TOKEN,
            "result": {
                "status_field": "MessageStatus",
                "succeeded_when": ["delivered"],
                "failed_when": ["failed", "undelivered"],
                "error_field": "ErrorCode",
            },
        },
        "waitpoint": {"auth": "capability", "result": {}},
        "provider": {
            "secret": PROVIDER_SECRET,
            "result": {"status_field": "state", "succeeded_when": ["done"]},
        },
    }
    return Settings.model_validate(
        {
            "database_url": f"sqlite:///{tmp_path / 'schemes.db'}",
            "admin_token": "t",
            "public_url": PUBLIC,
            "services": services,
            "workflows": {
                **{name: {"steps": {"wait": {**step, "service": name}}} for name in services},
                "payments": {"steps": {"pay": keyed}},
            },
            "triggers": {
                "stripe": {
                    "webhook": {
                        "scheme": "stripe",
                        "secret": STRIPE_SECRET,
                        "starts_runs": False,
                        "completes": "data.object.id",
                        "completes_when": {
                            "type": ["payment_intent.succeeded", "payment_intent.payment_failed"]
                        },
                        "fails_when": {"type": "payment_intent.payment_failed"},
                    }
                }
            },
        }
    )


async def handed_off(app: Starlette, workflow: str, kind: str = "callback") -> tuple[str, Any]:
    """Fire `workflow` with one item; wait until its task awaits; (run id, its context)."""
    engine = engine_of(app)
    payload = {"items": [0]} if kind == "callback" else {"intents": ["pi_1"]}
    with engine.bus.subscribe() as subscription:
        fired = await engine.fire(workflow, payload)
        async with asyncio.timeout(5):
            async for entry in subscription:
                if entry.type == f"task_awaiting_{kind}":
                    break
    assert fired.run_id is not None
    return fired.run_id, handlers.STATE.handed_off.get("0")


def path_of(ctx: Context) -> str:
    return urlsplit(ctx.callback_url).path.removeprefix("/base")


async def task_of(app: Starlette, run_id: str) -> Any:
    (task,) = await engine_of(app).store.tasks_of_run(run_id)
    return task


async def history_types(app: Starlette, run_id: str) -> list[str]:
    return [e.type for e in await engine_of(app).store.history(run_id=run_id, limit=500)]


async def test_a_secret_header_completes_the_task_from_the_providers_own_body(
    app: Starlette, client: httpx.AsyncClient
) -> None:
    """The right X-Webhook-Token and {"status": "completed", "text": ...} succeed the task."""
    run_id, ctx = await handed_off(app, "transcriber")
    body = {"id": "tr_1", "status": "completed", "text": "hello world"}
    wrong = await client.post(path_of(ctx), json=body, headers={"X-Webhook-Token": "nope"})
    missing = await client.post(path_of(ctx), json=body)
    assert (wrong.status_code, missing.status_code) == (401, 401)
    assert "does not match" in wrong.json()["detail"]
    response = await client.post(
        path_of(ctx), json=body, headers={"X-Webhook-Token": HEADER_SECRET}
    )
    assert (response.status_code, response.json()["status"]) == (200, "accepted")
    task = await task_of(app, run_id)
    assert (task.state, task.output) == (TaskState.SUCCEEDED, "hello world")
    again = await client.post(path_of(ctx), json=body, headers={"X-Webhook-Token": HEADER_SECRET})
    assert (again.status_code, again.json()["status"]) == (200, "duplicate")
    assert (await counted(client))[("/callbacks/{token}", "bad_signature")] == 2


async def test_the_attempts_own_secret_works_as_the_header_and_error_fails_the_task(
    app: Starlette, client: httpx.AsyncClient
) -> None:
    """ctx.callback_secret may be handed to the provider as the header's value; its
    {"status": "error"} fails the task with the body's error."""
    run_id, ctx = await handed_off(app, "transcriber")
    body = {"status": "error", "error": "audio unreadable"}
    response = await client.post(
        path_of(ctx), json=body, headers={"X-Webhook-Token": ctx.callback_secret}
    )
    assert response.status_code == 200
    task = await task_of(app, run_id)
    assert (task.state, task.error) == (TaskState.FAILED, "audio unreadable")


def twilio_post(ctx: Context, fields: dict[str, str]) -> tuple[bytes, dict[str, str]]:
    """A Twilio status callback: the form and the signature twilio's library computes over
    the URL the service was handed."""
    signature = RequestValidator(TWILIO_TOKEN).compute_signature(ctx.callback_url, fields)
    headers = {"X-Twilio-Signature": signature, "content-type": "application/x-www-form-urlencoded"}
    return urlencode(fields).encode(), headers


async def test_twilio_status_callbacks_report_progress_then_delivery(
    app: Starlette, client: httpx.AsyncClient
) -> None:
    """ "sent" is progress (200, in history, still waiting); "delivered" completes the task
    with the form as its output; the signature covers the public URL."""
    run_id, ctx = await handed_off(app, "sms")
    assert ctx.callback_url.startswith(PUBLIC + "/callbacks/")
    sent = {"MessageSid": "SM1", "MessageStatus": "sent", "To": "+1 555 0100"}
    body, headers = twilio_post(ctx, sent)
    progress = await client.post(path_of(ctx), content=body, headers=headers)
    assert (progress.status_code, progress.json()["status"]) == (200, "progress")
    assert (await task_of(app, run_id)).state is TaskState.DISPATCHED
    delivered = {**sent, "MessageStatus": "delivered"}
    body, headers = twilio_post(ctx, delivered)
    response = await client.post(path_of(ctx), content=body, headers=headers)
    assert (response.status_code, response.json()["status"]) == (200, "accepted")
    task = await task_of(app, run_id)
    assert (task.state, task.output) == (TaskState.SUCCEEDED, delivered)
    types = await history_types(app, run_id)
    assert types.count("callback_progress") == 1


async def test_twilio_callbacks_that_are_forged_or_not_forms_change_nothing(
    app: Starlette, client: httpx.AsyncClient
) -> None:
    """A changed field fails the signature (401), JSON is 415, a broken form 400; counted."""
    run_id, ctx = await handed_off(app, "sms")
    _, headers = twilio_post(ctx, {"MessageStatus": "sent"})
    forged = await client.post(path_of(ctx), content=b"MessageStatus=delivered", headers=headers)
    as_json = await client.post(
        path_of(ctx),
        json={"MessageStatus": "delivered"},
        headers={"X-Twilio-Signature": headers["X-Twilio-Signature"]},
    )
    broken = await client.post(path_of(ctx), content=b"a=%zz", headers=headers)
    assert [r.status_code for r in (forged, as_json, broken)] == [401, 415, 400]
    assert (await task_of(app, run_id)).state is TaskState.DISPATCHED
    seen = await counted(client)
    assert seen[("/callbacks/{token}", "unsupported_media_type")] == 1
    assert seen[("/callbacks/{token}", "invalid_form")] == 1


async def test_a_capability_url_alone_completes_the_task_with_the_whole_body(
    app: Starlette, client: httpx.AsyncClient
) -> None:
    """auth = "capability" with result = {}: any JSON object POSTed completes the task."""
    run_id, ctx = await handed_off(app, "waitpoint")
    refused = await client.post(path_of(ctx), content=b"[1, 2]")
    assert refused.status_code == 422
    response = await client.post(path_of(ctx), json={"approved": True, "by": "ada"})
    assert response.status_code == 200
    task = await task_of(app, run_id)
    assert (task.state, task.output) == (TaskState.SUCCEEDED, {"approved": True, "by": "ada"})
    rejected = [
        e
        for e in await engine_of(app).store.history(run_id=run_id)
        if e.type == "callback_rejected"
    ]
    assert not [e for e in rejected if not e.data.get("sampled")], "never stored per request"
    assert (await counted(client))[("/callbacks/{token}", "not_an_object")] == 1


async def test_standard_webhooks_with_a_providers_body_shape(
    app: Starlette, client: httpx.AsyncClient
) -> None:
    """A Standard-Webhooks-signed body of the provider's shape completes through `result`."""
    run_id, ctx = await handed_off(app, "provider")
    raw = json.dumps({"state": "done", "rows": 3}).encode()
    response = await client.post(
        path_of(ctx), content=raw, headers=sign_headers(PROVIDER_SECRET, raw)
    )
    assert response.status_code == 200
    task = await task_of(app, run_id)
    assert (task.state, task.output) == (TaskState.SUCCEEDED, {"state": "done", "rows": 3})


def stripe_signed(
    payload: dict[str, Any], secret: str = STRIPE_SECRET
) -> tuple[str, dict[str, str]]:
    body = json.dumps(payload)
    header = stripe.WebhookSignature.generate_signature_header(body, secret)
    return body, {"Stripe-Signature": header, "content-type": "application/json"}


def payment_event(type: str = "payment_intent.succeeded", intent: str = "pi_1") -> dict[str, Any]:
    return {"id": f"evt_{type}_{intent}", "type": type, "data": {"object": {"id": intent}}}


async def test_a_stripe_event_completes_the_task_waiting_on_its_payment_intent(
    app: Starlette, client: httpx.AsyncClient
) -> None:
    """The hook answers 202 with completed = 1; a redelivery is 200 and completes nothing."""
    run_id, _ = await handed_off(app, "payments", kind="event")
    waits = await client.get("/admin/waits?trigger=stripe", headers=AUTH)
    assert [(w["key"], w["run_id"], w["step"]) for w in waits.json()["waits"]] == [
        ("pi_1", run_id, "pay")
    ]
    body, headers = stripe_signed(payment_event())
    with engine_of(app).bus.subscribe() as subscription:
        first = await client.post("/hooks/stripe", content=body, headers=headers)
        await wait_for_end(subscription, run_id)
    again = await client.post("/hooks/stripe", content=body, headers=headers)
    assert (first.status_code, first.json()["completed"], first.json()["run_id"]) == (202, 1, None)
    assert (again.status_code, again.json()["duplicate"], again.json()["completed"]) == (
        200,
        True,
        0,
    )
    task = await task_of(app, run_id)
    assert (task.state, task.output) == (TaskState.SUCCEEDED, payment_event())
    assert (await client.get("/admin/waits", headers=AUTH)).json()["waits"] == []


async def test_a_forged_or_unsigned_event_completes_nothing_and_keeps_nothing(
    app: Starlette, client: httpx.AsyncClient
) -> None:
    """Signed with another secret, or not at all: 401, and neither waits nor kept events change."""
    run_id, _ = await handed_off(app, "payments", kind="event")
    body, headers = stripe_signed(payment_event(), "whsec_someone_elses_secret")
    forged = await client.post("/hooks/stripe", content=body, headers=headers)
    unknown_key, other = stripe_signed(payment_event(intent="pi_nobody"), "whsec_other_secret_1")
    unsigned = await client.post(
        "/hooks/stripe", content=unknown_key, headers={"content-type": "application/json"}
    )
    assert (forged.status_code, unsigned.status_code) == (401, 401)
    assert (await task_of(app, run_id)).state is TaskState.DISPATCHED
    kept = await client.get("/admin/kept-events", headers=AUTH)
    assert kept.json() == {"kept_events": [], "next_cursor": None}
    assert other  # the headers of a delivery signed with a secret the trigger does not hold


async def test_an_event_before_the_wait_is_kept_listed_and_completes_the_wait(
    app: Starlette, client: httpx.AsyncClient
) -> None:
    """A failed-payment event nobody waits on yet is kept (listed); the task that then waits
    on its key fails at once from it."""
    body, headers = stripe_signed(payment_event("payment_intent.payment_failed"))
    early = await client.post("/hooks/stripe", content=body, headers=headers)
    assert (early.status_code, early.json()["kept"], early.json()["completed"]) == (202, 1, 0)
    listed = (await client.get("/admin/kept-events?trigger=stripe", headers=AUTH)).json()
    assert [(k["key"], k["outcome"], k["event_id"]) for k in listed["kept_events"]] == [
        ("pi_1", "failed", early.json()["event_id"])
    ]
    engine = engine_of(app)
    with engine.bus.subscribe() as subscription:
        fired = await engine.fire("payments", {"intents": ["pi_1"]})
        assert fired.run_id is not None
        ended = await wait_for_end(subscription, fired.run_id)
    (failed,) = ended.of_type("task_failed")
    assert (failed.data["source"], failed.data["early"], failed.data["key"]) == (
        "event",
        True,
        "pi_1",
    )


async def test_the_listings_page_and_refuse_bad_parameters(
    app: Starlette, client: httpx.AsyncClient
) -> None:
    """limit and cursor page the kept events; a bad trigger, cursor or limit is a 400."""
    for intent in ("pi_a", "pi_b", "pi_c"):
        body, headers = stripe_signed(payment_event(intent=intent))
        assert (
            await client.post("/hooks/stripe", content=body, headers=headers)
        ).status_code == 202
    first = (await client.get("/admin/kept-events?limit=2", headers=AUTH)).json()
    rest = (
        await client.get(f"/admin/kept-events?limit=2&cursor={first['next_cursor']}", headers=AUTH)
    ).json()
    keys = [k["key"] for k in first["kept_events"] + rest["kept_events"]]
    assert sorted(keys) == ["pi_a", "pi_b", "pi_c"]
    assert rest["next_cursor"] is None
    for query in ("trigger=no%20such", "limit=0", "cursor=" + "x" * 601):
        for route in ("/admin/waits", "/admin/kept-events"):
            response = await client.get(f"{route}?{query}", headers=AUTH)
            assert (response.status_code, response.json()["error"]) == (400, "bad_parameter")
    assert (await client.get("/admin/waits")).status_code == 401
