"""The app under test, over a real SQLite file: each test module says how via settings_for()."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from starlette.applications import Starlette

from orchestrator.app import create_app
from orchestrator.engine import Engine


@pytest.fixture
async def app(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Starlette]:
    """The app built from the test module's `settings_for(tmp_path)`, with its lifespan run."""
    app = create_app(request.module.settings_for(tmp_path))
    async with app.router.lifespan_context(app):
        yield app


@pytest.fixture
async def client(app: Starlette) -> AsyncIterator[httpx.AsyncClient]:
    """An HTTP client speaking to the app through its ASGI interface."""
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        yield client


def engine_of(app: Starlette) -> Engine:
    engine: Engine = app.state.engine
    return engine
