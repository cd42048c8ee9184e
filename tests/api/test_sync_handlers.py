"""Plain-function handlers: told through ctx.cancelled when their attempt ends; warned about."""

from __future__ import annotations

import asyncio
from pathlib import Path

import structlog
from starlette.applications import Starlette

from orchestrator.app import create_app
from orchestrator.settings import Settings
from tests.api import sync_handlers
from tests.api.conftest import engine_of
from tests.engine.conftest import run_to_end

S = "tests.api.sync_handlers:"


def settings_for(tmp_path: Path) -> Settings:
    return Settings.model_validate(
        {
            "database_url": f"sqlite:///{tmp_path / 'sync.db'}",
            "admin_token": "t",
            "workflows": {
                "looping": {
                    "steps": {
                        "slow": {"handler": S + "loop_until_cancelled", "timeout": "200ms"},
                    }
                },
                "mixed": {
                    "steps": {
                        "sync_timed": {"handler": S + "quick", "timeout": "5s"},
                        "sync_untimed": {"handler": S + "quick"},
                        "async_timed": {"handler": S + "quick_async", "timeout": "5s"},
                    }
                },
                "other": {"steps": {"also": {"handler": S + "quick", "timeout": "1m"}}},
            },
        }
    )


async def test_a_sync_handler_sees_its_timeout_and_stops(app: Starlette) -> None:
    """A plain function waiting on ctx.cancelled returns soon after its attempt times out."""
    sync_handlers.SEEN = sync_handlers.Seen()
    finished = await run_to_end(engine_of(app), "looping", within=10)
    assert finished.status == "failed"
    assert [entry.step for entry in finished.of_type("task_timed_out")] == ["slow"]
    returned = await asyncio.to_thread(sync_handlers.SEEN.returned.wait, 5.0)
    assert returned, "the handler's thread never returned"
    assert sync_handlers.SEEN.was_cancelled
    assert sync_handlers.SEEN.waits < sync_handlers.MAX_WAITS


async def test_start_up_warns_once_per_sync_step_with_a_timeout(tmp_path: Path) -> None:
    """Each step whose plain-function handler has a timeout gets one sync_handler_timeout warning."""
    app = create_app(settings_for(tmp_path))
    with structlog.testing.capture_logs() as logs:
        async with app.router.lifespan_context(app):
            pass
    warned = [
        (entry["workflow"], entry["step"])
        for entry in logs
        if entry["event"] == "sync_handler_timeout"
    ]
    assert sorted(warned) == [("looping", "slow"), ("mixed", "sync_timed"), ("other", "also")]
    assert all(e["log_level"] == "warning" for e in logs if e["event"] == "sync_handler_timeout")
