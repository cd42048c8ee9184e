"""What older versions stored (NaN, Infinity, lone surrogates) still reads through every admin route."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import httpx
from starlette.applications import Starlette

from orchestrator.jsonread import read_json
from orchestrator.settings import Settings
from tests.api.conftest import engine_of
from tests.api.test_admin_api import AUTH, TOKEN, EventStream
from tests.engine.conftest import H, run_to_end

# As json.dumps wrote them before output was checked strictly: NaN and Infinity bare, and a
# lone surrogate as its escape.
OLD_OUTPUT = '{"score":NaN,"high":Infinity,"low":-Infinity,"name":"\\ud800lead","\\udfffkey":1}'
SHOWN_OUTPUT = {
    "score": "NaN",
    "high": "Infinity",
    "low": "-Infinity",
    "name": "\ufffdlead",
    "\ufffdkey": 1,
}


def settings_for(tmp_path: Path) -> Settings:
    return Settings.model_validate(
        {
            "database_url": f"sqlite:///{tmp_path / 'stored.db'}",
            "admin_token": TOKEN,
            "workflows": {"wf": {"steps": {"one": {"handler": H + "single"}}}},
        }
    )


def write_as_an_old_version(database: Path, run_id: str) -> None:
    """Put non-strict JSON into the output, history and payload columns, as sqlite3 allows."""
    with sqlite3.connect(database) as db:
        db.execute("UPDATE tasks SET output = ? WHERE run_id = ?", (OLD_OUTPUT, run_id))
        db.execute("UPDATE history SET data = ? WHERE run_id = ?", (OLD_OUTPUT, run_id))
        db.execute(
            "UPDATE events SET payload = ? WHERE id = (SELECT event_id FROM runs WHERE id = ?)",
            (OLD_OUTPUT, run_id),
        )
    db.close()


def strict(response: httpx.Response) -> Any:
    """The body, read by the strict reader: an answer must be JSON any parser accepts."""
    assert response.status_code == 200, response.text
    return read_json(response.content)


async def test_a_run_with_old_non_strict_output_reads_with_substitutes(
    app: Starlette, client: httpx.AsyncClient, tmp_path: Path
) -> None:
    """GET /admin/runs/{id} answers strict JSON: non-finite numbers as strings, U+FFFD for halves."""
    run_id = (await run_to_end(engine_of(app), "wf")).run_id
    write_as_an_old_version(tmp_path / "stored.db", run_id)
    (task,) = strict(await client.get(f"/admin/runs/{run_id}", headers=AUTH))["tasks"]
    assert task["output"] == SHOWN_OUTPUT


async def test_history_with_old_non_strict_data_lists_and_streams(
    app: Starlette, client: httpx.AsyncClient, tmp_path: Path
) -> None:
    """/admin/events and its stream render old non-strict history data as strict JSON."""
    run_id = (await run_to_end(engine_of(app), "wf")).run_id
    write_as_an_old_version(tmp_path / "stored.db", run_id)
    listed = strict(await client.get(f"/admin/events?run={run_id}", headers=AUTH))["events"]
    assert listed
    assert all(entry["data"] == SHOWN_OUTPUT for entry in listed)
    async with EventStream(app, f"after=0&run={run_id}") as stream:
        streamed = await stream.until(lambda entry: entry["id"] == listed[-1]["id"])
    assert [entry["data"] for entry in streamed] == [SHOWN_OUTPUT] * len(listed)
