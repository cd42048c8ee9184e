"""Readiness and liveness through the ASGI app, before and during a graceful shutdown."""

from __future__ import annotations

from pathlib import Path

import httpx
from starlette.applications import Starlette

from orchestrator.drain import Drain
from orchestrator.settings import Settings


def settings_for(tmp_path: Path) -> Settings:
    return Settings.model_validate(
        {"database_url": f"sqlite:///{tmp_path / 'ready.db'}", "admin_token": "t"}
    )


async def test_readyz_turns_503_when_the_drain_begins_and_healthz_stays_200(
    app: Starlette, client: httpx.AsyncClient
) -> None:
    """The drain flips readiness (the load balancer stops sending), not liveness (no restart)."""
    assert (await client.get("/readyz")).json() == {"status": "ready"}
    drain: Drain = app.state.drain
    drain.begin()
    ready = await client.get("/readyz")
    assert (ready.status_code, ready.json()["status"]) == (503, "draining")
    assert ready.json()["error"] == "draining"
    assert ready.json()["detail"]
    assert ready.headers["retry-after"] == "1"
    assert ready.headers["connection"] == "close"
    assert (await client.get("/healthz")).status_code == 200
