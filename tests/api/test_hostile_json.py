"""Hostile JSON bodies on every route that reads one: a named 400, recorded, nothing changed."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest
from starlette.applications import Starlette

from orchestrator.settings import Settings
from orchestrator.states import TaskState
from tests.api.conftest import engine_of
from tests.api.rejected import counted
from tests.api.test_callbacks import call_back, handed_off, history_of
from tests.engine.conftest import H

AUTH = {"Authorization": "Bearer t"}
DEEP = b'{"items":' + b"[" * 100_000 + b"]" * 100_000 + b"}"
HUGE_INTEGER = b'{"status":"succeeded","output":' + b"7" * 5000 + b"}"

# (raw body, the error it is answered with); each is signed with the task's own secret.
HOSTILE = [
    pytest.param(DEEP, "json_too_deep", id="100k-brackets"),
    pytest.param(HUGE_INTEGER, "json_number_too_large", id="5000-digit-integer"),
    pytest.param(b'{"status":"succeeded","output":NaN}', "malformed_json", id="nan"),
    pytest.param(b'{"status":"succeeded","output":-Infinity}', "malformed_json", id="infinity"),
    pytest.param(b'{"status":"succeeded","output":1e999}', "json_number_too_large", id="1e999"),
    pytest.param(b'{"status":"succeeded","output":"\\ud800"}', "json_lone_surrogate", id="lone"),
    pytest.param(b'{"status":"succeeded","\\udfff":1}', "json_lone_surrogate", id="lone-key"),
    pytest.param(b'{"status":"succeeded","status":"failed"}', "json_duplicate_key", id="dup"),
    pytest.param(b'{"status":"succeeded","output":"\xff"}', "invalid_utf8", id="bad-utf8"),
    pytest.param(b'\xef\xbb\xbf{"status":"succeeded"}', "malformed_json", id="bom"),
    pytest.param(b'{"status": "succeeded"', "malformed_json", id="truncated"),
]


def settings_for(tmp_path: Path) -> Settings:
    return Settings.model_validate(
        {
            "database_url": f"sqlite:///{tmp_path / 'hostile.db'}",
            "admin_token": "t",
            "body_limit": 512 * 1024,
            "workflows": {
                # A hand-off whose callback output is not checked: only the JSON reader stands guard.
                "wf": {
                    "steps": {
                        "wait": {
                            "handler": H + "hand_off_after_failures",
                            "for_each": "event.items",
                        }
                    }
                },
                "one": {"steps": {"only": {"handler": H + "single"}}},
            },
            "triggers": {"open": {"workflow": "one", "webhook": {"scheme": "none"}}},
        }
    )


@pytest.mark.parametrize(("body", "error"), HOSTILE)
async def test_hostile_callback_bodies_are_a_named_400_recorded_in_the_task_history(
    app: Starlette, client: httpx.AsyncClient, body: bytes, error: str
) -> None:
    """A signed callback body that strict JSON refuses answers 400 with its name; the task waits on."""
    run_id, (ctx,) = await handed_off(app, "wf")
    response = await call_back(client, ctx, body)
    assert (response.status_code, response.json()["error"]) == (400, error)
    assert response.json()["detail"]
    (task,) = await engine_of(app).store.tasks_of_run(run_id)
    assert (task.state, task.awaiting) == (TaskState.DISPATCHED, True)
    rejected = [e for e in await history_of(app, run_id) if e.type == "callback_rejected"]
    assert [(e.data["status"], e.data["error"]) for e in rejected] == [(400, error)]
    assert (await client.get(f"/admin/runs/{run_id}", headers=AUTH)).status_code == 200


@pytest.mark.parametrize(("body", "error"), HOSTILE)
async def test_hostile_hook_bodies_are_a_named_400_and_start_nothing(
    app: Starlette, client: httpx.AsyncClient, body: bytes, error: str
) -> None:
    """A webhook body that strict JSON refuses answers 400 with its name and fires no run;
    on an unsigned hook it is counted, not stored."""
    response = await client.post("/hooks/open", content=body)
    assert (response.status_code, response.json()["error"]) == (400, error)
    assert (await engine_of(app).store.list_runs(limit=10)).items == []
    assert await engine_of(app).store.history(types=["hook_rejected"]) == []
    assert await counted(client) == {("/hooks/{trigger}", error): 1}


@pytest.mark.parametrize(("body", "error"), HOSTILE)
async def test_hostile_admin_fire_bodies_are_a_named_400_and_start_nothing(
    app: Starlette, client: httpx.AsyncClient, body: bytes, error: str
) -> None:
    """An admin fire whose payload strict JSON refuses answers 400 with its name and fires nothing."""
    response = await client.post("/admin/triggers/one/fire", content=body, headers=AUTH)
    assert (response.status_code, response.json()["error"]) == (400, error)
    assert (await engine_of(app).store.list_runs(limit=10)).items == []


async def test_a_valid_callback_at_the_limits_is_accepted(
    app: Starlette, client: httpx.AsyncClient
) -> None:
    """Output nested 60 deep with a 100-digit integer and an escaped emoji is accepted as sent."""
    run_id, (ctx,) = await handed_off(app, "wf")
    output = "[" * 60 + "1" * 100 + "]" * 60
    body = f'{{"status":"succeeded","output":{{"n":{output},"e":"\\ud83d\\ude00"}}}}'.encode()
    response = await call_back(client, ctx, body)
    assert response.status_code == 200, response.text
    (task,) = await engine_of(app).store.tasks_of_run(run_id)
    assert task.output["e"] == "\N{GRINNING FACE}"
    value = task.output["n"]
    for _ in range(60):
        (value,) = value
    assert value == int("1" * 100)


async def test_routing_misses_are_json_errors_too(client: httpx.AsyncClient) -> None:
    """A path no route matches is a JSON 404, a method a route lacks a JSON 405."""
    missing = await client.post("/hooks/a%0Ab")  # a newline: no {trigger} matches it
    assert (missing.status_code, missing.json()["error"]) == (404, "not_found")
    wrong = await client.delete("/healthz")
    assert (wrong.status_code, wrong.json()["error"]) == (405, "method_not_allowed")
    assert wrong.headers["allow"]
