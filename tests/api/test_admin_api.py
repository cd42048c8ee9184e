"""The HTTP surface through its real ASGI interface: auth, firing, reading runs and history."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette
from starlette.types import Message

from orchestrator.app import create_app
from orchestrator.settings import Settings
from tests.api.conftest import engine_of
from tests.engine.conftest import H, wait_for_end

TOKEN = "test-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


def settings_for(tmp_path: Path, admin_token: str | None = f"{TOKEN},rotated-token") -> Settings:
    return Settings.model_validate(
        {
            "database_url": f"sqlite:///{tmp_path / 'api.db'}",
            "admin_token": admin_token,
            "workflows": {
                "wf": {
                    "steps": {
                        "fan": {"handler": H + "echo", "for_each": "event.items"},
                        "after": {"handler": H + "join", "needs": ["fan"]},
                    }
                },
                "stuck": {"steps": {"wait": {"handler": H + "hang"}}},
            },
            "triggers": {"t": {"workflow": "wf", "payload": {"items": [1, 2]}}},
        }
    )


async def fire_and_finish(app: Starlette, client: httpx.AsyncClient, name: str = "t") -> str:
    with engine_of(app).bus.subscribe() as subscription:
        response = await client.post(f"/admin/triggers/{name}/fire", headers=AUTH)
        assert response.status_code == 202
        run_id: str = response.json()["run_id"]
        await wait_for_end(subscription, run_id)
    return run_id


class EventStream:
    """GET /admin/events/stream through the app's ASGI interface, read while it is written
    (httpx's ASGITransport would wait for the end of a response that never ends)."""

    def __init__(self, app: Starlette, query: str) -> None:
        self._app = app
        self._query = query.encode()
        self._body: asyncio.Queue[bytes] = asyncio.Queue()
        self._requested = False
        self._gone = asyncio.Event()
        self._unread = ""
        self._task: asyncio.Future[None] | None = None

    async def __aenter__(self) -> EventStream:
        scope = {
            "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "GET",
            "scheme": "http", "path": "/admin/events/stream", "raw_path": b"/admin/events/stream",
            "query_string": self._query, "root_path": "", "client": ("127.0.0.1", 50000),
            "server": ("test", 80), "headers": [(b"authorization", f"Bearer {TOKEN}".encode())],
        }  # fmt: skip
        self._task = asyncio.ensure_future(self._app(scope, self._receive, self._send))
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        self._gone.set()  # the client disconnects; the response ends
        assert self._task is not None
        async with asyncio.timeout(2):
            await self._task

    async def _receive(self) -> Message:
        if not self._requested:
            self._requested = True
            return {"type": "http.request", "body": b"", "more_body": False}
        await self._gone.wait()
        return {"type": "http.disconnect"}

    async def _send(self, message: Message) -> None:
        if message["type"] == "http.response.start":
            assert message["status"] == 200
        elif message["type"] == "http.response.body":
            self._body.put_nowait(message.get("body", b""))

    async def until(self, last: Callable[[dict[str, Any]], bool]) -> list[dict[str, Any]]:
        """The streamed entries up to and including the first for which `last` is true."""
        entries: list[dict[str, Any]] = []
        async with asyncio.timeout(5):
            while not entries or not last(entries[-1]):
                while "\n\n" not in self._unread:
                    self._unread += (await self._body.get()).decode()
                frame, self._unread = self._unread.split("\n\n", 1)
                data = [line[5:] for line in frame.splitlines() if line.startswith("data:")]
                if data:  # not the retry hint or a keep-alive comment
                    entries.append(json.loads("".join(data)))
        return entries


async def test_health_and_readiness_answer_without_auth(client: httpx.AsyncClient) -> None:
    """/healthz and /readyz need no token and report ok once the store is open."""
    assert (await client.get("/healthz")).json() == {"status": "ok"}
    assert (await client.get("/readyz")).json() == {"status": "ready"}


@pytest.mark.parametrize(
    "headers",
    [{}, {"Authorization": "Bearer wrong"}, {"Authorization": f"Basic {TOKEN}"}],
    ids=["missing", "wrong-token", "wrong-scheme"],
)
async def test_admin_routes_refuse_without_the_bearer_token(
    client: httpx.AsyncClient, headers: dict[str, str]
) -> None:
    """Every admin route answers 401 with a JSON body unless the bearer token matches."""
    for method, path in [("GET", "/admin/runs"), ("POST", "/admin/triggers/t/fire")]:
        response = await client.request(method, path, headers=headers)
        assert response.status_code == 401
        assert response.json()["error"] == "unauthorized"
    assert (await client.get("/admin/runs")).headers["www-authenticate"].startswith("Bearer")
    assert (await client.get("/admin/events")).status_code == 401


async def test_every_configured_token_is_accepted_for_rotation(client: httpx.AsyncClient) -> None:
    """Both comma-separated admin tokens are valid while a rotation is under way."""
    for token in (TOKEN, "rotated-token"):
        response = await client.get("/admin/runs", headers={"Authorization": f"Bearer {token}"})
        assert response.status_code == 200


async def test_admin_without_any_configured_token_refuses_everyone(tmp_path: Path) -> None:
    """With no admin token configured, /admin answers 401 and says how to set one."""
    app = create_app(settings_for(tmp_path, admin_token=None))
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            response = await client.get("/admin/runs", headers={"Authorization": "Bearer "})
    assert response.status_code == 401
    assert "ORCHESTRATOR_ADMIN_TOKEN" in response.json()["detail"]


async def test_fire_answers_202_with_ids_and_runs_the_workflow(
    app: Starlette, client: httpx.AsyncClient
) -> None:
    """POST /admin/triggers/{name}/fire persists an event, starts a run and returns both ids."""
    run_id = await fire_and_finish(app, client)
    detail = (await client.get(f"/admin/runs/{run_id}", headers=AUTH)).json()
    assert detail["status"] == "succeeded"
    assert [barrier["step"] for barrier in detail["barriers"]] == ["fan", "after"]
    assert {task["state"] for task in detail["tasks"]} == {"succeeded"}
    assert detail["timing"]["wall_seconds"] >= 0
    path = detail["timing"]["critical_path"]
    assert [hop["step"] for hop in path if hop["kind"] == "ran"] == ["fan", "after"]


async def test_fire_with_a_repeated_idempotency_key_answers_the_same_event(
    client: httpx.AsyncClient,
) -> None:
    """A second fire with the same Idempotency-Key answers 200 with the first event and run."""
    headers = {**AUTH, "Idempotency-Key": "abc"}
    first = await client.post("/admin/triggers/t/fire", headers=headers, json={"items": []})
    second = await client.post("/admin/triggers/t/fire", headers=headers, json={"items": []})
    assert (first.status_code, second.status_code) == (202, 200)
    assert first.json()["run_id"] is not None
    assert second.json() == {
        "event_id": first.json()["event_id"],
        "run_id": first.json()["run_id"],
        "duplicate": True,
        "completed": 0,
        "kept": 0,
    }
    runs = (await client.get("/admin/runs", headers=AUTH)).json()["runs"]
    assert len(runs) == 1


@pytest.mark.parametrize(
    ("path", "body", "status", "error"),
    [
        ("/admin/triggers/nope/fire", b"{}", 404, "unknown_trigger"),
        ("/admin/triggers/t/fire", b"{not json", 400, "malformed_json"),
        ("/admin/triggers/t/fire", b"[1, 2]", 422, "not_an_object"),
        ("/admin/triggers/t/fire", b"{" + b" " * (1024 * 1024) + b"}", 413, "body_too_large"),
    ],
    ids=["unknown", "malformed", "not-object", "too-large"],
)
async def test_bad_fire_requests_get_a_clear_error_and_change_nothing(
    client: httpx.AsyncClient, path: str, body: bytes, status: int, error: str
) -> None:
    """Each bad fire request gets its status and a JSON error, and starts no run."""
    response = await client.post(path, headers=AUTH, content=body)
    assert response.status_code == status
    assert response.json()["error"] == error
    assert response.json()["detail"]
    assert (await client.get("/admin/runs", headers=AUTH)).json()["runs"] == []


async def test_runs_are_listed_newest_first_with_a_stable_cursor(
    app: Starlette, client: httpx.AsyncClient
) -> None:
    """Paging /admin/runs with limit and cursor returns every run once, newest first."""
    fired = [await fire_and_finish(app, client) for _ in range(5)]
    seen: list[str] = []
    cursor = None
    while True:
        params = {"limit": "2", **({"cursor": cursor} if cursor else {})}
        page = (await client.get("/admin/runs", headers=AUTH, params=params)).json()
        seen.extend(run["id"] for run in page["runs"])
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == list(reversed(fired))
    filtered = await client.get("/admin/runs", headers=AUTH, params={"status": "failed"})
    assert filtered.json()["runs"] == []


@pytest.mark.parametrize(
    ("path", "params"),
    [
        ("/admin/runs", {"limit": "0"}),
        ("/admin/runs", {"limit": "x"}),
        ("/admin/runs", {"status": "sideways"}),
        ("/admin/events", {"after": "-1"}),
    ],
)
async def test_bad_query_parameters_answer_400_naming_the_parameter(
    client: httpx.AsyncClient, path: str, params: dict[str, str]
) -> None:
    """A malformed filter or limit answers 400 with the parameter's name in the detail."""
    response = await client.get(path, headers=AUTH, params=params)
    assert response.status_code == 400
    assert next(iter(params)) in response.json()["detail"]


async def test_history_filters_by_run_and_type_and_pages_by_id(
    app: Starlette, client: httpx.AsyncClient
) -> None:
    """/admin/events narrows to one run and one type, and `after` pages through it."""
    first = await fire_and_finish(app, client)
    await fire_and_finish(app, client)
    body = (await client.get("/admin/events", headers=AUTH, params={"run": first})).json()
    assert {event["run_id"] for event in body["events"]} == {first}
    types = [event["type"] for event in body["events"]]
    assert types[0] == "event_received"
    assert types[-1] == "run_succeeded"
    only = await client.get(
        "/admin/events", headers=AUTH, params={"run": first, "type": "task_succeeded"}
    )
    assert len(only.json()["events"]) == 3
    page = await client.get(
        "/admin/events", headers=AUTH, params={"run": first, "limit": "2", "after": "0"}
    )
    after = page.json()["next_after"]
    rest = await client.get("/admin/events", headers=AUTH, params={"run": first, "after": after})
    assert [e["type"] for e in page.json()["events"] + rest.json()["events"]] == types


async def test_history_takes_a_comma_separated_list_of_types(
    app: Starlette, client: httpx.AsyncClient
) -> None:
    """/admin/events?type=a,b returns the entries of either type, oldest first, as the stream does."""
    run_id = await fire_and_finish(app, client)
    params = {"run": run_id, "type": "run_started,run_succeeded"}
    listed = (await client.get("/admin/events", headers=AUTH, params=params)).json()["events"]
    assert [entry["type"] for entry in listed] == ["run_started", "run_succeeded"]
    params["type"] = "task_succeeded, run_succeeded"
    listed = (await client.get("/admin/events", headers=AUTH, params=params)).json()["events"]
    assert [entry["type"] for entry in listed] == ["task_succeeded"] * 3 + ["run_succeeded"]


@pytest.mark.parametrize("path", ["/admin/events", "/admin/events/stream"])
@pytest.mark.parametrize("value", ["run_succeeded,run_done", "tsak_succeeded", ""])
async def test_an_unknown_history_type_answers_400_naming_the_known_ones(
    client: httpx.AsyncClient, path: str, value: str
) -> None:
    """An unknown or empty type filter answers 400 listing the known types, instead of []."""
    response = await client.get(path, headers=AUTH, params={"type": value})
    assert response.status_code == 400
    body = response.json()
    assert body["error"] == "bad_parameter"
    assert body["detail"].startswith("type: ")
    assert "task_succeeded" in body["detail"]
    assert "run_cancelled" in body["detail"]


async def test_event_stream_sends_only_the_listed_types(
    app: Starlette, client: httpx.AsyncClient
) -> None:
    """/admin/events/stream?type=a,b streams only entries of those types, replayed and live."""
    first = await fire_and_finish(app, client)

    def end_of(run_id: str) -> Callable[[dict[str, Any]], bool]:
        return lambda entry: (entry["type"], entry["run_id"]) == ("run_succeeded", run_id)

    query = "after=0&type=task_succeeded,run_succeeded"
    async with EventStream(app, query) as stream:
        replayed = await stream.until(end_of(first))
        second = await fire_and_finish(app, client)
        live = await stream.until(end_of(second))
    for run_id, entries in ((first, replayed), (second, live)):
        expected = ["task_succeeded"] * 3 + ["run_succeeded"]
        assert [entry["type"] for entry in entries] == expected
        assert {entry["run_id"] for entry in entries} == {run_id}


async def test_cancel_stops_a_running_run_once(app: Starlette, client: httpx.AsyncClient) -> None:
    """POST /admin/runs/{id}/cancel cancels a running run; a second cancel answers 409."""
    fired = (await client.post("/admin/triggers/stuck/fire", headers=AUTH)).json()
    run_id = fired["run_id"]
    assert (await client.post(f"/admin/runs/{run_id}/cancel", headers=AUTH)).status_code == 200
    again = await client.post(f"/admin/runs/{run_id}/cancel", headers=AUTH)
    assert (again.status_code, again.json()["error"]) == (409, "run_not_running")
    missing = await client.post("/admin/runs/run_nope/cancel", headers=AUTH)
    assert missing.status_code == 404
    assert (await client.get("/admin/runs/run_nope", headers=AUTH)).status_code == 404
