"""Hostile input against the real server: cut-short uploads, bodies json cannot parse, old data."""

from __future__ import annotations

import asyncio
import json
import sqlite3
from collections.abc import AsyncIterator, Callable, MutableMapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
import structlog
import uvicorn
from starlette.applications import Starlette

from orchestrator.app import create_app
from orchestrator.jsonread import read_json
from orchestrator.settings import Settings
from tests.api.test_stored_values import OLD_OUTPUT, SHOWN_OUTPUT
from tests.e2e.conftest import TOKEN, Orchestrator, bound_socket
from tests.e2e.test_cli import run_cli
from tests.e2e.test_run_end_to_end import follow_to_end
from tests.engine import handlers
from tests.engine.conftest import H

pytestmark = pytest.mark.e2e

CONFIG = """
[workflows.simple.steps.one]
handler = "tests.e2e.handlers:five"

[triggers.open]
workflow = "simple"
webhook = { scheme = "none" }
"""
DEEP = b'{"items":' + b"[" * 100_000 + b"]" * 100_000 + b"}"


async def cut_short(port: int, path: str, declared: int = 1000, sent: bytes = b'{"a": ') -> None:
    """POST with a Content-Length larger than what is sent, then hang up."""
    _, writer = await asyncio.open_connection("127.0.0.1", port)
    head = (
        f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        f"Content-Length: {declared}\r\n\r\n"
    )
    writer.write(head.encode() + sent)
    await writer.drain()
    writer.close()
    await writer.wait_closed()


class LogWatch:
    """A structlog processor that keeps every entry and wakes whoever waits for one."""

    def __init__(self) -> None:
        self.entries: list[dict[str, Any]] = []
        self._loop = asyncio.get_running_loop()
        self._wake = asyncio.Event()

    def __call__(self, logger: Any, method: str, event: MutableMapping[str, Any]) -> Any:
        self.entries.append({**event, "log_level": method})
        self._loop.call_soon_threadsafe(self._wake.set)  # handlers may log from threads
        raise structlog.DropEvent

    async def seen(self, name: str, count: int, within: float = 10.0) -> list[dict[str, Any]]:
        """The entries named `name`, once there are at least `count` of them."""
        async with asyncio.timeout(within):
            while len(found := [e for e in self.entries if e["event"] == name]) < count:
                self._wake.clear()
                await self._wake.wait()
        return found


def in_process_settings(tmp_path: Path) -> Settings:
    return Settings.model_validate(
        {
            "database_url": f"sqlite:///{tmp_path / 'cut.db'}",
            "admin_token": TOKEN,
            "workflows": {
                "wf": {"steps": {"wait": {"handler": H + "hand_off", "for_each": "event.items"}}},
                "one": {"steps": {"only": {"handler": H + "single"}}},
            },
            "triggers": {"open": {"workflow": "one", "webhook": {"scheme": "none"}}},
        }
    )


@pytest.fixture
async def served(tmp_path: Path) -> AsyncIterator[tuple[Starlette, int, LogWatch]]:
    """The app under a real uvicorn on a loopback port, its structlog entries watched."""
    watch = LogWatch()
    before = structlog.get_config()
    structlog.configure(processors=[watch])
    app = create_app(in_process_settings(tmp_path))
    sock = bound_socket()  # listening already: a client may connect before serve() runs
    # log_config=None: uvicorn's own records (a traceback would be one) reach pytest's caplog.
    config = uvicorn.Config(app, log_config=None, lifespan="off", timeout_graceful_shutdown=2)
    server = uvicorn.Server(config)
    try:
        async with app.router.lifespan_context(app):
            task = asyncio.create_task(server.serve(sockets=[sock]))
            yield app, sock.getsockname()[1], watch
            server.should_exit = True
            await task
    finally:
        sock.close()
        structlog.configure(**before)


async def test_a_cut_short_hook_upload_is_one_info_line_without_traceback(
    served: tuple[Starlette, int, LogWatch], caplog: pytest.LogCaptureFixture
) -> None:
    """A sender that hangs up mid-body on /hooks logs one client_disconnected line, no traceback."""
    app, port, watch = served
    await cut_short(port, "/hooks/open")
    (entry,) = await watch.seen("client_disconnected", 1)
    assert (entry["log_level"], entry["route"]) == ("info", "/hooks/{trigger}")
    assert not [r for r in caplog.records if r.exc_info or r.levelname == "ERROR"]
    assert await app.state.engine.store.history(types=["hook_rejected"]) == []


async def test_a_cut_short_callback_upload_is_one_info_line_without_traceback(
    served: tuple[Starlette, int, LogWatch], caplog: pytest.LogCaptureFixture
) -> None:
    """A service that hangs up mid-body on its callback logs one line; its task still waits."""
    app, port, watch = served
    engine = app.state.engine
    with engine.bus.subscribe() as subscription:
        fired = await engine.fire("wf", {"items": [0]})
        async with asyncio.timeout(10):
            async for history in subscription:
                if history.type == "task_awaiting_callback":
                    break
    ctx = handlers.STATE.handed_off["0"]
    await cut_short(port, urlsplit(ctx.callback_url).path)
    (entry,) = await watch.seen("client_disconnected", 1)
    assert (entry["log_level"], entry["route"]) == ("info", "/callbacks/{token}")
    assert not [r for r in caplog.records if r.exc_info or r.levelname == "ERROR"]
    (task,) = await engine.store.tasks_of_run(fired.run_id)
    assert task.awaiting


def write_as_an_old_version(database: Path, run_id: str) -> None:
    """Non-strict JSON in the output, history and payload columns, as an old version wrote it."""
    with sqlite3.connect(database) as db:
        db.execute("UPDATE tasks SET output = ? WHERE run_id = ?", (OLD_OUTPUT, run_id))
        db.execute("UPDATE history SET data = ? WHERE run_id = ?", (OLD_OUTPUT, run_id))
    db.close()


async def test_the_real_server_and_cli_survive_hostile_bodies_and_old_data(
    tmp_path: Path, orchestrators: Callable[..., Orchestrator]
) -> None:
    """Deep and cut-short bodies get answers, not tracebacks; old NaN output shows in `show`."""
    config = tmp_path / "hostile.toml"
    config.write_text(CONFIG)
    database = tmp_path / "hostile.db"
    first = await orchestrators(config, database).start()
    async with httpx.AsyncClient(base_url=first.url) as client:
        deep = await client.post("/hooks/open", content=DEEP)
        fired = await client.post("/hooks/open", content=b"{}")
    assert (deep.status_code, deep.json()["error"]) == (400, "json_too_deep")
    run_id = fired.json()["run_id"]
    assert (await follow_to_end(first, run_id))[-1].type == "run_succeeded"
    await cut_short(first.port, "/hooks/open")
    assert await first.stop()
    disconnected = [r for r in first.logs if r.get("event") == "client_disconnected"]
    assert [(r["level"], r["route"]) for r in disconnected] == [("info", "/hooks/{trigger}")]
    assert not [r for r in first.logs if "Traceback" in json.dumps(r) or r.get("level") == "error"]

    write_as_an_old_version(database, run_id)
    second = await orchestrators(config, database).start()
    env = {"ORCHESTRATOR_ADMIN_TOKEN": TOKEN}
    code, out, err = await run_cli("show", run_id, "--url", second.url, env=env)
    assert (code, err) == (0, "")
    assert "succeeded" in out.splitlines()[0]
    code, out, err = await run_cli("show", run_id, "--url", second.url, "--json", env=env)
    assert code == 0, err
    (task,) = read_json(out.encode())["tasks"]
    assert task["output"] == SHOWN_OUTPUT
    code, out, err = await run_cli(
        "events", "--run", run_id, "--url", second.url, "--json", env=env
    )
    assert code == 0, err
    assert all(read_json(line.encode())["data"] == SHOWN_OUTPUT for line in out.splitlines())
    assert await second.stop()
