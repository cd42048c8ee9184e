"""The admin API over a seeded database of 10,000 runs: filters and cursors, page by page."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path
from typing import Any

import httpx

from orchestrator.ids import new_id
from orchestrator.settings import Settings
from orchestrator.store.sqlite_schema import MIGRATIONS
from tests.engine.conftest import H

RUNS = 10_000
START = 1_790_000_000.0  # runs are created one second apart from here
AUTH = {"Authorization": "Bearer t"}


def settings_for(tmp_path: Path) -> Settings:
    database = tmp_path / "seeded.db"
    seed(database)
    return Settings.model_validate(
        {
            "database_url": f"sqlite:///{database}",
            "admin_token": "t",
            "workflows": {
                "even": {"steps": {"one": {"handler": H + "single"}}},
                "odd": {"steps": {"one": {"handler": H + "single"}}},
            },
        }
    )


def seed(database: Path) -> None:
    """10,000 finished runs with their events, in the store's own schema, in one transaction."""
    events, runs = [], []
    for number in range(RUNS):
        at = START + number
        workflow = "even" if number % 2 == 0 else "odd"
        status = "failed" if number % 10 == 0 else "succeeded"
        event_id = new_id("evt", at)
        events.append((event_id, f"manual:{workflow}", workflow, at, "{}", None))
        runs.append(
            (new_id("run", at), workflow, event_id, status, at, at + 1, json.dumps({"steps": {}}))
        )
    with sqlite3.connect(database) as db:
        db.executescript("".join(MIGRATIONS))
        db.execute("CREATE TABLE schema_version (version INTEGER NOT NULL)")
        db.execute("INSERT INTO schema_version VALUES (?)", (len(MIGRATIONS),))
        db.executemany(
            "INSERT INTO events (id, trigger, workflow, received_at, payload, dedup_key)"
            " VALUES (?, ?, ?, ?, ?, ?)",
            events,
        )
        db.executemany(
            "INSERT INTO runs (id, workflow, event_id, status, created_at, finished_at, spec)"
            " VALUES (?, ?, ?, ?, ?, ?, ?)",
            runs,
        )


async def all_pages(client: httpx.AsyncClient, **params: Any) -> tuple[list[dict[str, Any]], int]:
    seen: list[dict[str, Any]] = []
    pages, cursor = 0, None
    while True:
        query = {**params, "limit": "500", **({"cursor": cursor} if cursor else {})}
        page = (await client.get("/admin/runs", headers=AUTH, params=query)).json()
        assert len(page["runs"]) <= 500
        seen.extend(page["runs"])
        pages += 1
        cursor = page["next_cursor"]
        if cursor is None or pages > RUNS // 500 + 2:
            return seen, pages


async def test_every_run_is_listed_once_newest_first(client: httpx.AsyncClient) -> None:
    """Cursor paging over 10,000 runs returns each once, newest first, 500 at a time."""
    runs, pages = await all_pages(client)
    assert len(runs) == RUNS
    assert len({run["id"] for run in runs}) == RUNS
    created = [run["created_at"] for run in runs]
    assert created == sorted(created, reverse=True)
    assert pages == RUNS // 500


async def test_filters_combine_with_the_cursor(client: httpx.AsyncClient) -> None:
    """Workflow, status and a time window narrow the listing, and paging still covers it all."""
    failed_even, _ = await all_pages(client, workflow="even", status="failed")
    assert len(failed_even) == RUNS // 10
    assert {(run["workflow"], run["status"]) for run in failed_even} == {("even", "failed")}
    window, _ = await all_pages(client, since=str(START + 100), until="2026-09-21T14:48:20Z")
    expected = [n for n in range(RUNS) if START + 100 <= START + n < 1_790_002_100.0]
    assert len(window) == len(expected)
    assert min(run["created_at"] for run in window) == START + 100


async def test_bad_time_filter_is_a_400(client: httpx.AsyncClient) -> None:
    """A time filter that is neither epoch seconds nor ISO 8601 names the expected forms."""
    response = await client.get("/admin/runs", headers=AUTH, params={"since": "last week"})
    assert response.status_code == 400
    assert "ISO 8601" in response.json()["detail"]
