"""Arbitrary bodies on the routes that read JSON: a documented answer, and nothing changed on rejection."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import urlsplit

import httpx
from hypothesis import example, given
from hypothesis import strategies as st
from starlette.applications import Starlette

from orchestrator.jsonread import read_json
from orchestrator.settings import Settings
from orchestrator.signing import sign_headers
from tests.api.conftest import engine_of
from tests.api.test_callbacks import handed_off
from tests.engine.conftest import H
from tests.fuzz.budget import budget
from tests.fuzz.test_json_properties import near_json

AUTH = {"Authorization": "Bearer t"}
bodies = st.binary(max_size=200) | near_json() | st.just(b'{"status":"succeeded","output":1}')


def settings_for(tmp_path: Path) -> Settings:
    return Settings.model_validate(
        {
            "database_url": f"sqlite:///{tmp_path / 'bodies.db'}",
            "admin_token": "t",
            "workflows": {
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


async def runs_since(app: Starlette, since: float) -> list[str]:
    return [run.id for run in (await engine_of(app).store.list_runs(since=since)).items]


def documented_error(response: httpx.Response) -> None:
    """A rejection is strict JSON naming the error and saying why."""
    body = read_json(response.content)
    assert isinstance(body["error"], str)
    assert body["detail"]


@given(raw=bodies)
@example(raw=b"[" * 100_000)
@budget(quick=100, long=3_000)
async def test_any_signed_callback_body_is_answered_and_a_rejection_changes_nothing(
    app: Starlette, client: httpx.AsyncClient, raw: bytes
) -> None:
    """A correctly signed callback with any body gets 200, 400 or 422; a rejection leaves the task waiting."""
    run_id, (ctx,) = await handed_off(app, "wf")
    store = engine_of(app).store
    before = await store.history(run_id=run_id, limit=1000)
    headers = {**sign_headers(ctx.callback_secret, raw), "content-type": "application/json"}
    response = await client.post(urlsplit(ctx.callback_url).path, content=raw, headers=headers)
    assert response.status_code in (200, 400, 422), response.text
    if response.status_code == 200:
        return
    documented_error(response)
    (task,) = await store.tasks_of_run(run_id)
    assert (task.state.value, task.awaiting) == ("dispatched", True)
    after = await store.history(run_id=run_id, after=before[-1].id or 0, limit=1000)
    assert [entry.type for entry in after] == ["callback_rejected"]  # one row per rejection


@given(raw=bodies)
@example(raw=b'{"a":' + b"9" * 5000 + b"}")
@budget(quick=100, long=3_000)
async def test_any_hook_body_is_answered_and_a_rejection_starts_nothing(
    app: Starlette, client: httpx.AsyncClient, raw: bytes
) -> None:
    """Any body on an unsigned hook gets 202, 400 or 422; a rejection starts no run."""
    since = engine_of(app).clock()
    response = await client.post("/hooks/open", content=raw)
    assert response.status_code in (202, 400, 422), response.text
    if response.status_code == 202:
        assert await runs_since(app, since) == [response.json()["run_id"]]
    else:
        documented_error(response)
        assert await runs_since(app, since) == []


@given(raw=bodies)
@budget(quick=100, long=3_000)
async def test_any_admin_fire_body_is_answered_and_a_rejection_starts_nothing(
    app: Starlette, client: httpx.AsyncClient, raw: bytes
) -> None:
    """Any admin fire body gets 202, 400 or 422; a rejection starts no run."""
    since = engine_of(app).clock()
    response = await client.post("/admin/triggers/one/fire", content=raw, headers=AUTH)
    assert response.status_code in (202, 400, 422), response.text
    if response.status_code == 202:
        assert await runs_since(app, since) == [response.json()["run_id"]]
    else:
        documented_error(response)
        assert await runs_since(app, since) == []
