"""Real providers' ways of completing tasks, over real HTTP against `orchestrator serve`:
each callback scheme signed with the provider's own library where one exists, and Stripe
events completing tasks by key, one of them sent before its wait was registered."""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import urlencode

import httpx
import pytest
import stripe
import uvicorn
from standardwebhooks.webhooks import Webhook
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from twilio.request_validator import RequestValidator

from tests.e2e.conftest import Orchestrator, bound_socket
from tests.e2e.test_run_end_to_end import follow_to_end

pytestmark = pytest.mark.e2e

HEADER_SECRET = "transcriber-header-secret-e2e"
TWILIO_TOKEN = "fedcba9876543210fedcba9876543210"
STRIPE_SECRET = "whsec_e2e_stripe_signing_secret"

SCHEMES = """
[services.transcriber]
auth = "header"
header = "X-Webhook-Token"
secret = "env:TRANSCRIBER_TOKEN"
result = { status_field = "status", succeeded_when = ["completed"], output_field = "text" }

[services.sms]
auth = "twilio"
secret = "env:TWILIO_AUTH_TOKEN"
result = { status_field = "MessageStatus", succeeded_when = ["delivered"], failed_when = ["failed", "undelivered"] }

[services.waitpoint]
auth = "capability"
result = {}

[services.scorer]
description = "signs the Standard Webhooks way with the attempt's own secret"

[workflows.schemes.steps.header]
handler = "tests.e2e.key_handlers:hand_to_provider"
service = "transcriber"

[workflows.schemes.steps.twilio]
handler = "tests.e2e.key_handlers:hand_to_provider"
service = "sms"

[workflows.schemes.steps.capability]
handler = "tests.e2e.key_handlers:hand_to_provider"
service = "waitpoint"

[workflows.schemes.steps.standard]
handler = "tests.e2e.key_handlers:hand_to_provider"
service = "scorer"

[workflows.payments.steps.pay]
handler = "tests.e2e.key_handlers:await_payment"
for_each = "event.intents"

[triggers.stripe.webhook]
scheme = "stripe"
secret = "env:STRIPE_WEBHOOK_SECRET"
completes = "data.object.id"
completes_when = { type = ["payment_intent.succeeded", "payment_intent.payment_failed"] }
fails_when = { type = "payment_intent.payment_failed" }
starts_runs = false
"""


def stripe_delivery(
    intent: str, type: str = "payment_intent.succeeded"
) -> tuple[str, dict[str, str]]:
    """A Stripe event for a payment intent, signed by stripe's own library."""
    body = json.dumps({"id": f"evt_{intent}", "type": type, "data": {"object": {"id": intent}}})
    header = stripe.WebhookSignature.generate_signature_header(body, STRIPE_SECRET)
    return body, {"Stripe-Signature": header, "content-type": "application/json"}


class Provider:
    """A fake provider on loopback: it takes jobs (callback URLs) and payments; for a
    payment named `early_...` it delivers the Stripe webhook before it answers."""

    def __init__(self) -> None:
        self.url = ""
        self.hook_url = ""
        self.jobs: dict[str, dict[str, str]] = {}
        self.early: list[httpx.Response] = []
        self._changed = asyncio.Condition()

    async def take_job(self, request: Request) -> Response:
        job = await request.json()
        async with self._changed:
            self.jobs[job["step"]] = job
            self._changed.notify_all()
        return JSONResponse({"accepted": True}, status_code=202)

    async def pay(self, request: Request) -> Response:
        intent = (await request.json())["intent"]
        if intent.startswith("early_"):
            body, headers = stripe_delivery(intent)
            async with httpx.AsyncClient() as client:
                self.early.append(await client.post(self.hook_url, content=body, headers=headers))
        return JSONResponse({"id": intent, "status": "processing"})

    async def jobs_arrived(self, count: int, within: float = 30.0) -> None:
        async with asyncio.timeout(within), self._changed:
            await self._changed.wait_for(lambda: len(self.jobs) >= count)


@pytest.fixture
async def provider() -> AsyncIterator[Provider]:
    fake = Provider()
    app = Starlette(
        routes=[
            Route("/jobs", fake.take_job, methods=["POST"]),
            Route("/pay", fake.pay, methods=["POST"]),
        ]
    )
    sock = bound_socket()
    server = uvicorn.Server(uvicorn.Config(app, log_level="critical", lifespan="off"))
    fake.url = f"http://127.0.0.1:{sock.getsockname()[1]}"
    task = asyncio.create_task(server.serve(sockets=[sock]))
    yield fake
    server.should_exit = True
    await task
    sock.close()


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


async def start(tmp_path: Path, orchestrators: Callable[..., Orchestrator]) -> Orchestrator:
    """The server on a port chosen first, so that its public URL (which a Twilio signature
    covers) can name it: as `localhost`, while the test posts to 127.0.0.1."""
    config = tmp_path / "schemes.toml"
    config.write_text(SCHEMES)
    port = free_port()
    server = orchestrators(
        config,
        TRANSCRIBER_TOKEN=HEADER_SECRET,
        TWILIO_AUTH_TOKEN=TWILIO_TOKEN,
        STRIPE_WEBHOOK_SECRET=STRIPE_SECRET,
        ORCHESTRATOR_PUBLIC_URL=f"http://localhost:{port}",
    )
    return await server.start(port=port)


def direct(url: str) -> str:
    """A callback URL as this test reaches it (the public URL names localhost)."""
    return url.replace("http://localhost:", "http://127.0.0.1:", 1)


async def call_back_each_way(http: httpx.AsyncClient, jobs: dict[str, dict[str, str]]) -> None:
    """Complete each job the way its provider does."""
    header = jobs["header"]
    answer = await http.post(
        direct(header["callback_url"]),
        json={"id": "tr_1", "status": "completed", "text": "hello from the transcriber"},
        headers={"X-Webhook-Token": HEADER_SECRET},
    )
    assert answer.status_code == 200, answer.text

    sms = jobs["twilio"]
    for status in ("sent", "delivered"):
        fields = {"MessageSid": "SM42", "MessageStatus": status, "To": "+15550100"}
        signature = RequestValidator(TWILIO_TOKEN).compute_signature(sms["callback_url"], fields)
        answer = await http.post(
            direct(sms["callback_url"]),
            content=urlencode(fields),
            headers={
                "X-Twilio-Signature": signature,
                "content-type": "application/x-www-form-urlencoded",
            },
        )
        assert (answer.status_code, answer.json()["status"]) == (
            200,
            "progress" if status == "sent" else "accepted",
        ), answer.text

    answer = await http.post(direct(jobs["capability"]["callback_url"]), json={"approved": True})
    assert answer.status_code == 200, answer.text

    scorer = jobs["standard"]
    body = json.dumps({"status": "succeeded", "output": {"score": 0.9}})
    signature = Webhook(scorer["secret"]).sign("msg_e2e", datetime.now(UTC), body)
    answer = await http.post(
        direct(scorer["callback_url"]),
        content=body,
        headers={
            "webhook-id": "msg_e2e",
            "webhook-timestamp": str(int(datetime.now(UTC).timestamp())),
            "webhook-signature": signature,
            "content-type": "application/json",
        },
    )
    assert answer.status_code == 200, answer.text


async def test_each_callback_scheme_completes_its_task_over_real_http(
    tmp_path: Path, provider: Provider, orchestrators: Callable[..., Orchestrator]
) -> None:
    """A secret header, Twilio's signed form (progress, then delivery), the capability URL
    alone and Standard Webhooks each complete their task; the run succeeds."""
    server = await start(tmp_path, orchestrators)
    assert (await server.logged("callback_capability_only"))["service"] == "waitpoint"
    async with server.client() as client:
        fired = await client.fire("schemes", {"provider": provider.url})
    await provider.jobs_arrived(4)
    async with httpx.AsyncClient(timeout=30.0) as http:
        await call_back_each_way(http, provider.jobs)
    history = await follow_to_end(server, fired["run_id"])
    assert history[-1].type == "run_succeeded"
    async with server.client() as client:
        detail = await client.run(fired["run_id"])
    outputs = {task["step"]: task["output"] for task in detail["tasks"]}
    assert outputs["header"] == "hello from the transcriber"
    assert outputs["twilio"]["MessageStatus"] == "delivered"
    assert outputs["capability"] == {"approved": True}
    assert outputs["standard"] == {"score": 0.9}
    assert "callback_progress" in [entry.type for entry in history]
    assert await server.stop()


async def test_stripe_events_complete_tasks_by_key_even_one_sent_before_the_wait(
    tmp_path: Path, provider: Provider, orchestrators: Callable[..., Orchestrator]
) -> None:
    """The provider sends `early_1`'s event before the handler returns (it is kept, then
    completes the wait at once); `pi_2`'s event is sent once its task waits; a redelivery
    completes nothing."""
    server = await start(tmp_path, orchestrators)
    provider.hook_url = f"{server.url}/hooks/stripe"
    async with server.client() as client:
        fired = await client.fire(
            "payments", {"intents": ["early_1", "pi_2"], "provider": provider.url}
        )
        awaiting: set[str] = set()
        async with asyncio.timeout(30):
            async for entry in client.stream(after=0, run_id=fired["run_id"]):
                if entry.type == "task_awaiting_event":
                    awaiting.add(entry.data["key"])
                if awaiting == {"early_1", "pi_2"}:
                    break
    assert [(r.status_code, r.json()["kept"]) for r in provider.early] == [(202, 1)]
    body, headers = stripe_delivery("pi_2")
    async with httpx.AsyncClient() as http:
        first = await http.post(provider.hook_url, content=body, headers=headers)
        again = await http.post(provider.hook_url, content=body, headers=headers)
    assert (first.status_code, first.json()["completed"]) == (202, 1)
    assert (again.status_code, again.json()["duplicate"], again.json()["completed"]) == (
        200,
        True,
        0,
    )
    history = await follow_to_end(server, fired["run_id"])
    assert history[-1].type == "run_succeeded"
    done = {e.data["key"]: e.data for e in history if e.type == "task_succeeded"}
    assert done["early_1"]["early"] is True
    assert done["early_1"]["event_id"] == provider.early[0].json()["event_id"]
    assert (done["pi_2"]["source"], done["pi_2"]["event_id"]) == ("event", first.json()["event_id"])
    async with server.client() as client:
        assert (await client._json("GET", "/admin/waits"))["waits"] == []
    assert await server.stop()
