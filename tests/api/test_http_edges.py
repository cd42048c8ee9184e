"""The HTTP edge as RFC 9110 and hostile clients see it: HEAD on the stream, header floods,
trailing slashes, cursors and idempotency keys that cannot be used, and bugs answered as JSON."""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx
import pytest
from starlette.applications import Starlette

from orchestrator.settings import Settings
from tests.api.conftest import engine_of

ADMIN = {"Authorization": "Bearer t"}


def settings_for(tmp_path: Path) -> Settings:
    return Settings.model_validate(
        {
            "database_url": f"sqlite:///{tmp_path / 'edges.db'}",
            "admin_token": "t",
            "workflows": {"wf": {"steps": {"a": {"handler": "tests.e2e.handlers:five"}}}},
            "triggers": {"open": {"workflow": "wf", "webhook": {"scheme": "none"}}},
        }
    )


async def test_head_on_the_event_stream_answers_the_headers_and_ends(
    client: httpx.AsyncClient,
) -> None:
    """HEAD /admin/events/stream gets a GET's status and headers with no body, and the answer
    is over (it does not hold a subscription open like the stream it describes)."""
    async with asyncio.timeout(5):
        head = await client.head("/admin/events/stream", headers=ADMIN)
    assert head.status_code == 200
    assert head.headers["content-type"].startswith("text/event-stream")
    assert head.headers["cache-control"] == "no-cache"
    assert head.content == b""


async def test_an_oversized_header_block_is_431_and_fires_nothing(
    app: Starlette, client: httpx.AsyncClient
) -> None:
    """Header fields over the limit (32 KiB by default) get 431 with a JSON body naming the
    size, before any route runs: an open hook fires no event."""
    padding = {f"x-pad-{i}": "p" * 1000 for i in range(40)}
    answer = await client.post("/hooks/open", json={}, headers=padding)
    assert answer.status_code == 431
    assert answer.json()["error"] == "headers_too_large"
    assert "over the limit of 32768" in answer.json()["detail"]
    assert (await engine_of(app).store.list_runs()).items == []
    within = await client.post("/hooks/open", json={}, headers=dict(list(padding.items())[:20]))
    assert within.status_code == 202


@pytest.mark.parametrize(
    ("method", "path"),
    [("POST", "/hooks/open/"), ("GET", "/healthz/"), ("POST", "/callbacks/abc/")],
)
async def test_a_trailing_slash_too_many_is_not_found_not_redirected(
    client: httpx.AsyncClient, method: str, path: str
) -> None:
    """A path with an extra trailing slash is a JSON 404 (a webhook sender does not follow a
    307 on POST), not a redirect."""
    answer = await client.request(method, path, json={})
    assert (answer.status_code, answer.json()["error"]) == (404, "not_found")


async def test_the_dashboard_without_its_slash_redirects_to_it(client: httpx.AsyncClient) -> None:
    """GET /admin, as a person types it, is sent on to the dashboard at /admin/."""
    answer = await client.get("/admin")
    assert (answer.status_code, answer.headers["location"]) == (308, "/admin/")


@pytest.mark.parametrize(
    "cursor", ["zzz", "run_", "run_" + "!" * 26, "evt_01m8t4ageae2p8t8e9vd20zx9s"]
)
async def test_a_runs_cursor_that_is_not_a_run_id_is_refused(
    client: httpx.AsyncClient, cursor: str
) -> None:
    """GET /admin/runs?cursor= takes the previous page's next_cursor; anything else is 400
    rather than a page of arbitrary runs."""
    answer = await client.get("/admin/runs", params={"cursor": cursor}, headers=ADMIN)
    assert (answer.status_code, answer.json()["error"]) == (400, "bad_parameter")
    assert "cursor" in answer.json()["detail"]


async def test_a_runs_cursor_from_a_previous_page_pages_on(
    app: Starlette, client: httpx.AsyncClient
) -> None:
    """The next_cursor of one page is a valid cursor for the next: the pages do not overlap."""
    for _ in range(3):
        assert (await client.post("/hooks/open", json={})).status_code == 202
    first = (await client.get("/admin/runs", params={"limit": 2}, headers=ADMIN)).json()
    rest = await client.get(
        "/admin/runs", params={"limit": 2, "cursor": first["next_cursor"]}, headers=ADMIN
    )
    assert rest.status_code == 200
    shown = [run["id"] for run in first["runs"] + rest.json()["runs"]]
    assert len(shown) == len(set(shown)) == 3


@pytest.mark.parametrize("key", ["k" * 256, "caf\u00e9", "tab\there"])
async def test_an_unusable_idempotency_key_is_400_and_fires_nothing(
    app: Starlette, client: httpx.AsyncClient, key: str
) -> None:
    """An Idempotency-Key over 255 characters, or not printable ASCII, is refused by name on
    a hook and on admin fire, and no event is stored."""
    headers = {b"idempotency-key": key.encode("utf-8")}
    admin = {b"authorization": b"Bearer t", **headers}
    hook = await client.post("/hooks/open", json={}, headers=headers)
    fire = await client.post("/admin/triggers/open/fire", json={}, headers=admin)
    for answer in (hook, fire):
        assert (answer.status_code, answer.json()["error"]) == (400, "bad_idempotency_key")
    assert (await engine_of(app).store.list_runs()).items == []


async def test_an_idempotency_key_at_the_limit_deduplicates(
    app: Starlette, client: httpx.AsyncClient
) -> None:
    """A 255-character key is accepted, and a second delivery with it starts nothing new."""
    headers = {"Idempotency-Key": "k" * 255}
    first = await client.post("/hooks/open", json={}, headers=headers)
    again = await client.post("/hooks/open", json={}, headers=headers)
    assert (first.status_code, again.status_code) == (202, 200)
    assert again.json()["run_id"] == first.json()["run_id"]


async def test_a_bug_in_a_route_is_a_json_500(
    app: Starlette, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An unexpected exception answers 500 with a JSON error body like every other answer
    (the traceback is the log's business, not the client's)."""

    async def broken(**_: object) -> None:
        raise RuntimeError("a bug")

    monkeypatch.setattr(engine_of(app).store, "list_runs", broken)
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        answer = await client.get("/admin/runs", headers=ADMIN)
    assert answer.status_code == 500
    assert answer.json()["error"] == "internal_error"
    assert "a bug" not in answer.text
