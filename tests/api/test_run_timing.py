"""GET /admin/runs/{id} keeps each task's wait apart from its run, and its timing adds up."""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette

from orchestrator import attempts
from orchestrator.settings import Settings
from tests.api.conftest import engine_of
from tests.engine import handlers
from tests.engine.conftest import H, wait_for_end

TOKEN = "timing-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


def settings_for(tmp_path: Path) -> Settings:
    fan = {"handler": H + "echo", "for_each": "event.items"}
    return Settings.model_validate(
        {
            "database_url": f"sqlite:///{tmp_path / 'timing.db'}",
            "admin_token": TOKEN,
            "workflows": {
                "one_at_a_time": {"steps": {"fan": {**fan, "concurrency": 1}}},
                "flaky": {
                    "steps": {
                        "fan": {
                            "handler": H + "fail_first_attempt", "for_each": "event.items",
                            "retries": 1, "backoff": "50ms",
                        }
                    }
                },
                "limited": {"steps": {"fan": {**fan, "rate": "1/100ms"}}},
                "fixable": {
                    "steps": {"fan": {"handler": H + "odd_fails_until_fixed", "for_each": "event.items"}}
                },
            },
        }
    )  # fmt: skip


async def finished(app: Starlette, client: httpx.AsyncClient, name: str, items: list[int]) -> str:
    with engine_of(app).bus.subscribe() as subscription:
        response = await client.post(
            f"/admin/triggers/{name}/fire", json={"items": items}, headers=AUTH
        )
        assert response.status_code == 202
        run_id: str = response.json()["run_id"]
        await wait_for_end(subscription, run_id)
    return run_id


async def detail(client: httpx.AsyncClient, run_id: str) -> dict[str, Any]:
    response = await client.get(f"/admin/runs/{run_id}", headers=AUTH)
    assert response.status_code == 200
    body: dict[str, Any] = response.json()
    return body


def assert_adds_up(timing: dict[str, Any]) -> None:
    """The documented arithmetic of a timing object."""
    assert timing["active_seconds"] == pytest.approx(
        timing["wall_seconds"] - timing["paused_seconds"]
    )
    assert timing["sequential_seconds"] == pytest.approx(
        timing["run_seconds"] + timing["paced_seconds"]
    )
    assert timing["speedup"] == pytest.approx(
        timing["sequential_seconds"] / timing["active_seconds"]
    )
    assert timing["task_seconds"] == timing["run_seconds"]
    path = timing["critical_path"]
    for before, after in itertools.pairwise(path):
        assert before["finished"] == after["started"], "the path's segments are contiguous"


async def test_each_task_shows_its_wait_apart_from_its_run(
    app: Starlette, client: httpx.AsyncClient
) -> None:
    """Behind concurrency = 1, tasks wait their turn: waited = started - queued, duration =
    finished - started, and the run's wait_seconds sums the waits."""
    body = await detail(client, await finished(app, client, "one_at_a_time", [1, 2, 3]))
    tasks = body["tasks"]
    for task in tasks:
        assert task["waited"] == pytest.approx(task["started_at"] - task["queued_at"])
        assert task["duration"] == pytest.approx(task["finished_at"] - task["started_at"])
        assert task["earlier_attempts"] == []
    waits = sorted(task["waited"] for task in tasks)
    assert waits[-1] > 0, "the last one waited for the others"
    timing = body["timing"]
    assert timing["wait_seconds"] == pytest.approx(sum(waits))
    assert timing["run_seconds"] == pytest.approx(sum(task["duration"] for task in tasks))
    assert (timing["tasks"], timing["attempts"], timing["paced_seconds"]) == (3, 3, 0.0)
    assert_adds_up(timing)


async def test_a_retried_task_lists_its_earlier_attempt_and_counts_it(
    app: Starlette, client: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The failed first attempt is listed and its run counted; the backoff before the retry
    is paced, as the history's not_before says."""
    monkeypatch.setattr(attempts, "PAGE", 3)  # the run's history is read over several pages
    run_id = await finished(app, client, "flaky", [1, 2])
    body = await detail(client, run_id)
    for task in body["tasks"]:
        assert task["attempt"] == 2
        (earlier,) = task["earlier_attempts"]
        assert earlier["attempt"] == 1
        assert earlier["failed"] is True
        assert earlier["finished_at"] <= task["queued_at"]
    timing = body["timing"]
    assert (timing["tasks"], timing["attempts"]) == (2, 4)
    runs = [t["duration"] for t in body["tasks"]]
    runs += [t["earlier_attempts"][0]["duration"] for t in body["tasks"]]
    assert timing["run_seconds"] == pytest.approx(sum(runs))
    history = (
        await client.get(f"/admin/events?run={run_id}&type=task_retry_scheduled", headers=AUTH)
    ).json()["events"]
    backoffs = [entry["data"]["not_before"] - entry["at"] for entry in history]
    assert timing["paced_seconds"] == pytest.approx(sum(backoffs))
    kinds = [(hop["kind"], hop["failed"]) for hop in timing["critical_path"]]
    assert kinds == [("waited", False), ("ran", True), ("waited", False), ("ran", False)]
    assert_adds_up(timing)


async def test_a_rate_limit_is_paced(app: Starlette, client: httpx.AsyncClient) -> None:
    """Three starts at one per 100 ms: the gaps are paced waits, so the speedup is about 1x."""
    timing = (await detail(client, await finished(app, client, "limited", [1, 2, 3])))["timing"]
    assert timing["paced_seconds"] >= 0.2 - timing["run_seconds"] - 1e-3
    assert timing["wall_seconds"] >= 0.2 - 1e-3
    assert_adds_up(timing)


async def test_the_time_a_run_stood_failed_before_its_retry_is_not_active(
    app: Starlette, client: httpx.AsyncClient
) -> None:
    """A run that failed and was retried by an operator: paused_seconds is the time between
    the failure and the retry, and the failed attempt is an earlier attempt."""
    run_id = await finished(app, client, "fixable", [1])
    handlers.STATE.fixed = True
    with engine_of(app).bus.subscribe() as subscription:
        response = await client.post(f"/admin/runs/{run_id}/retry", headers=AUTH)
        assert response.status_code == 200
        await wait_for_end(subscription, run_id)
    body = await detail(client, run_id)
    assert body["status"] == "succeeded"
    (task,) = body["tasks"]
    assert [attempt["attempt"] for attempt in task["earlier_attempts"]] == [1]
    events = (
        await client.get(f"/admin/events?run={run_id}&type=run_failed,run_retried", headers=AUTH)
    ).json()["events"]
    failed_at, retried_at = (entry["at"] for entry in events)
    timing = body["timing"]
    assert timing["paused_seconds"] == pytest.approx(retried_at - failed_at)
    assert timing["attempts"] == 2
    assert_adds_up(timing)


def conforms(value: Any, schema: dict[str, Any], schemas: dict[str, Any], where: str) -> None:
    """`value` has exactly the documented fields, of the documented types (a small subset of
    JSON Schema: $ref, type, enum, oneOf, required, properties, items)."""
    if "$ref" in schema:
        schema = schemas[schema["$ref"].rsplit("/", 1)[1]]
    if "oneOf" in schema:
        errors = []
        for option in schema["oneOf"]:
            try:
                conforms(value, option, schemas, where)
                return
            except AssertionError as error:
                errors.append(str(error))
        raise AssertionError(f"{where}: matches none of {errors}")
    if "enum" in schema:
        assert value in schema["enum"], where
    kinds = schema.get("type")
    if kinds is not None:
        names = {bool: "boolean", int: "integer", float: "number", str: "string"}
        found = "null" if value is None else names.get(type(value), type(value).__name__)
        allowed = set(kinds if isinstance(kinds, list) else [kinds])
        if "number" in allowed:
            allowed.add("integer")
        found = {"dict": "object", "list": "array"}.get(found, found)
        assert found in allowed, f"{where}: {found} is not {kinds}"
    if "properties" in schema and isinstance(value, dict):
        assert set(value) == set(schema["properties"]), f"{where}: fields differ from the document"
        assert set(schema.get("required", [])) <= set(value), where
        for name, inner in schema["properties"].items():
            conforms(value[name], inner, schemas, f"{where}.{name}")
    if "items" in schema and isinstance(value, list):
        for index, inner in enumerate(value):
            conforms(inner, schema["items"], schemas, f"{where}[{index}]")


async def test_the_run_detail_answers_as_the_openapi_document_says(
    app: Starlette, client: httpx.AsyncClient
) -> None:
    """A retried run's detail has exactly the fields /openapi.json documents, of their types."""
    body = await detail(client, await finished(app, client, "flaky", [1]))
    document = (await client.get("/openapi.json")).json()
    operation = document["paths"]["/admin/runs/{run_id}"]["get"]
    schema = operation["responses"]["200"]["content"]["application/json"]["schema"]
    assert body["tasks"][0]["earlier_attempts"], "the document's Attempt is exercised"
    assert body["timing"]["slowest"] is not None
    conforms(body, schema, document["components"]["schemas"], "run")
