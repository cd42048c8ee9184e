"""POST /hooks/{trigger}: GitHub, Stripe and Standard Webhooks senders start runs, once each."""

from __future__ import annotations

import hashlib
import hmac
import json
import time
from pathlib import Path

import httpx
import pytest
import stripe
from starlette.applications import Starlette

from orchestrator.settings import Settings
from orchestrator.signing import new_secret, sign_headers
from tests.api.conftest import engine_of
from tests.api.rejected import counted
from tests.engine.conftest import H

GITHUB_SECRET = "It's a Secret to Everybody"
STRIPE_SECRET = "whsec_test_secret_for_stripe"
STANDARD_SECRET = new_secret()
PUSH = json.dumps({"ref": "refs/heads/main", "commits": 2}).encode()


def settings_for(tmp_path: Path) -> Settings:
    return Settings.model_validate(
        {
            "database_url": f"sqlite:///{tmp_path / 'hooks.db'}",
            "admin_token": "t",
            "body_limit": 2048,
            "workflows": {"wf": {"steps": {"one": {"handler": H + "single"}}}},
            "triggers": {
                "github_push": {
                    "workflow": "wf",
                    "webhook": {
                        "scheme": "github",
                        "secret": GITHUB_SECRET,
                        "payload_model": "tests.engine.handlers:Push",
                    },
                },
                "stripe_events": {
                    "workflow": "wf",
                    "webhook": {
                        "scheme": "stripe",
                        "secrets": ["whsec_previous_rotated_secret", STRIPE_SECRET],
                    },
                },
                "standard": {
                    "workflow": "wf",
                    "webhook": {"scheme": "standard", "secret": STANDARD_SECRET},
                },
                "open": {"workflow": "wf", "webhook": {"scheme": "none"}},
                "nightly": {"workflow": "wf", "cron": "0 3 * * *", "timezone": "America/New_York"},
            },
        }
    )


def github_headers(
    body: bytes, delivery: str = "d-1", secret: str = GITHUB_SECRET
) -> dict[str, str]:
    digest = hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
    return {"X-Hub-Signature-256": f"sha256={digest}", "X-GitHub-Delivery": delivery}


async def runs(client: httpx.AsyncClient) -> list[dict[str, object]]:
    response = await client.get("/admin/runs", headers={"Authorization": "Bearer t"})
    runs: list[dict[str, object]] = response.json()["runs"]
    return runs


async def test_github_delivery_starts_one_run_and_a_redelivery_none(
    client: httpx.AsyncClient,
) -> None:
    """A signed GitHub push answers 202 with the event id; the same delivery again answers 200."""
    first = await client.post("/hooks/github_push", content=PUSH, headers=github_headers(PUSH))
    again = await client.post("/hooks/github_push", content=PUSH, headers=github_headers(PUSH))
    assert first.status_code == 202
    assert first.json()["run_id"]
    assert (again.status_code, again.json()["event_id"], again.json()["duplicate"]) == (
        200,
        first.json()["event_id"],
        True,
    )
    assert len(await runs(client)) == 1


async def test_a_redelivery_answers_the_run_its_first_delivery_started(
    client: httpx.AsyncClient,
) -> None:
    """A redelivered webhook answers the original run's id, not null, and starts no run."""
    first = await client.post("/hooks/github_push", content=PUSH, headers=github_headers(PUSH))
    again = await client.post("/hooks/github_push", content=PUSH, headers=github_headers(PUSH))
    (run,) = await runs(client)
    assert first.json()["run_id"] == run["id"]
    assert again.json() == {
        "event_id": first.json()["event_id"],
        "run_id": run["id"],
        "duplicate": True,
        "completed": 0,
        "kept": 0,
    }


async def test_same_body_in_two_deliveries_is_two_events(client: httpx.AsyncClient) -> None:
    """Deduplication is on the delivery id, never the body: identical bodies are two events."""
    one = await client.post("/hooks/github_push", content=PUSH, headers=github_headers(PUSH, "d-1"))
    two = await client.post("/hooks/github_push", content=PUSH, headers=github_headers(PUSH, "d-2"))
    assert (one.status_code, two.status_code) == (202, 202)
    assert one.json()["event_id"] != two.json()["event_id"]


async def test_the_event_payload_reaches_the_workflow(
    app: Starlette, client: httpx.AsyncClient
) -> None:
    """The verified JSON body is the event's payload."""
    response = await client.post("/hooks/github_push", content=PUSH, headers=github_headers(PUSH))
    event = await engine_of(app).store.get_event(response.json()["event_id"])
    assert event is not None
    assert event.payload == {"ref": "refs/heads/main", "commits": 2}
    assert event.dedup_key == "d-1"


async def test_stripe_signature_from_the_stripe_package_is_accepted_and_deduplicated(
    client: httpx.AsyncClient,
) -> None:
    """A Stripe-Signature made by stripe's own helper verifies; the event id deduplicates."""
    payload = json.dumps({"id": "evt_123", "type": "invoice.paid"})
    header = stripe.WebhookSignature.generate_signature_header(payload, STRIPE_SECRET)
    headers = {"Stripe-Signature": header, "content-type": "application/json"}
    first = await client.post("/hooks/stripe_events", content=payload, headers=headers)
    again = await client.post("/hooks/stripe_events", content=payload, headers=headers)
    assert (first.status_code, again.status_code) == (202, 200)
    assert again.json()["event_id"] == first.json()["event_id"]


async def test_stale_stripe_signature_is_refused(client: httpx.AsyncClient) -> None:
    """A Stripe-Signature older than 300 s answers 401."""
    payload = json.dumps({"id": "evt_9"})
    header = stripe.WebhookSignature.generate_signature_header(
        payload, STRIPE_SECRET, timestamp=int(time.time()) - 600
    )
    response = await client.post(
        "/hooks/stripe_events", content=payload, headers={"Stripe-Signature": header}
    )
    assert response.status_code == 401


async def test_standard_webhooks_dedup_on_the_signed_id_not_on_a_header(
    client: httpx.AsyncClient,
) -> None:
    """Standard Webhooks dedup on webhook-id; an added Idempotency-Key cannot make a replay new."""
    body = b'{"hello": "world"}'
    headers = sign_headers(STANDARD_SECRET, body, message_id="msg-1")
    first = await client.post("/hooks/standard", content=body, headers=headers)
    again = await client.post("/hooks/standard", content=body, headers=headers)
    replay = await client.post(
        "/hooks/standard", content=body, headers={**headers, "Idempotency-Key": "new"}
    )
    assert (first.status_code, again.status_code, replay.status_code) == (202, 200, 200)


async def test_idempotency_key_dedups_a_sender_without_delivery_ids(
    client: httpx.AsyncClient,
) -> None:
    """Where the sender has no delivery id, an Idempotency-Key makes a retry the same event."""
    headers = {"Idempotency-Key": "order-7"}
    first = await client.post("/hooks/open", json={"n": 1}, headers=headers)
    again = await client.post("/hooks/open", json={"n": 1}, headers=headers)
    assert (first.status_code, again.status_code) == (202, 200)
    assert again.json()["event_id"] == first.json()["event_id"]


async def test_unsigned_trigger_accepts_when_configured_so(client: httpx.AsyncClient) -> None:
    """scheme = none accepts any body (it is warned about at start-up)."""
    response = await client.post("/hooks/open", json={"any": "thing"})
    assert response.status_code == 202


@pytest.mark.parametrize(
    ("path", "body", "headers", "status", "error"),
    [
        ("/hooks/nope", PUSH, {}, 404, "unknown_trigger"),
        ("/hooks/nightly", PUSH, {}, 404, "unknown_trigger"),
        ("/hooks/github_push", PUSH, {}, 401, "bad_signature"),
        ("/hooks/github_push", PUSH, github_headers(PUSH, secret="wrong"), 401, "bad_signature"),
        ("/hooks/github_push", PUSH + b" ", github_headers(PUSH), 401, "bad_signature"),
        ("/hooks/standard", PUSH, {"webhook-id": "x", "webhook-timestamp": "soon", "webhook-signature": "v1,x"}, 401, "bad_signature"),
        ("/hooks/github_push", b"{oops", github_headers(b"{oops"), 400, "malformed_json"),
        ("/hooks/github_push", b"[]", github_headers(b"[]"), 422, "not_an_object"),
        ("/hooks/github_push", b'{"ref": 1}', github_headers(b'{"ref": 1}'), 422, "invalid_payload"),
        ("/hooks/github_push", b"x" * 4096, github_headers(b"x" * 4096), 413, "body_too_large"),
    ],
    ids=["unknown", "cron-only", "unsigned", "wrong-secret", "tampered", "bad-timestamp",
         "bad-json", "not-object", "payload-model", "too-large"],
)  # fmt: skip
async def test_rejected_deliveries_say_why_are_recorded_and_start_nothing(
    app: Starlette,
    client: httpx.AsyncClient,
    path: str,
    body: bytes,
    headers: dict[str, str],
    status: int,
    error: str,
) -> None:
    """Every rejection has its status and JSON reason, is counted, and starts no run; only
    one whose signature checked out is also a history entry."""
    response = await client.post(path, content=body, headers=headers)
    assert (response.status_code, response.json()["error"]) == (status, error)
    assert await runs(client) == []
    assert await counted(client) == {("/hooks/{trigger}", error): 1}
    entries = await engine_of(app).store.history(types=["hook_rejected"])
    if status in (400, 422):  # after the signature: the sender is who it says
        (entry,) = entries
        assert (entry.data["status"], entry.data["error"]) == (status, error)
        assert GITHUB_SECRET not in json.dumps(entry.data)
    else:
        assert entries == []


async def test_admin_lists_triggers_with_their_next_fires(client: httpx.AsyncClient) -> None:
    """GET /admin/triggers shows each trigger; cron ones with next fires in local time and UTC."""
    response = await client.get(
        "/admin/triggers", params={"next": "2"}, headers={"Authorization": "Bearer t"}
    )
    triggers = {t["name"]: t for t in response.json()["triggers"]}
    assert triggers["github_push"]["kind"] == "webhook"
    assert triggers["github_push"]["path"] == "/hooks/github_push"
    nightly = triggers["nightly"]
    assert nightly["timezone"] == "America/New_York"
    assert len(nightly["next"]) == 2
    assert all(fire["local"][11:16] == "03:00" for fire in nightly["next"])
    assert all(fire["utc"][11:16] in ("07:00", "08:00") for fire in nightly["next"])
