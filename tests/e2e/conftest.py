"""Real parts for end-to-end tests: the orchestrator as a subprocess, and a gate service."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import sys
from collections import Counter
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from handlers.fake_research import FakeResearch
from orchestrator.client import AdminClient
from orchestrator.serve import listening_socket

REPO = Path(__file__).resolve().parents[2]
TOKEN = "e2e-token"
START_TIMEOUT = 30.0


def bound_socket() -> socket.socket:
    """A listening socket on a free loopback port: clients may connect before serving starts."""
    return listening_socket("127.0.0.1", 0)


class Gate:
    """Holds every POST /arrive/{name} until that name's gate opens.

    A gate opens by hand (`open`) or by itself once `threshold[name]` requests arrived.
    `arrived(name, n)` lets a test wait until n requests have come in.
    """

    def __init__(self) -> None:
        self.counts: Counter[str] = Counter()
        self.threshold: dict[str, int] = {}
        self._open: dict[str, asyncio.Event] = {}
        self._changed = asyncio.Condition()
        self.url = ""

    def _event(self, name: str) -> asyncio.Event:
        return self._open.setdefault(name, asyncio.Event())

    def open(self, name: str) -> None:
        self._event(name).set()

    async def arrived(self, name: str, count: int, within: float = 20.0) -> None:
        async with asyncio.timeout(within), self._changed:
            await self._changed.wait_for(lambda: self.counts[name] >= count)

    async def arrive(self, request: Request) -> Response:
        name = request.path_params["name"]
        async with self._changed:
            self.counts[name] += 1
            if self.counts[name] >= self.threshold.get(name, 10**9):
                self.open(name)
            self._changed.notify_all()
        await self._event(name).wait()
        return JSONResponse({"ok": True})


@pytest.fixture
async def gate() -> AsyncIterator[Gate]:
    gate = Gate()
    app = Starlette(routes=[Route("/arrive/{name}", gate.arrive, methods=["POST"])])
    sock = bound_socket()
    config = uvicorn.Config(app, log_level="critical", lifespan="off", timeout_graceful_shutdown=1)
    server = uvicorn.Server(config)
    gate.url = f"http://127.0.0.1:{sock.getsockname()[1]}"
    task = asyncio.create_task(server.serve(sockets=[sock]))
    yield gate
    for event in gate._open.values():
        event.set()
    server.should_exit = True
    await task
    sock.close()


class Orchestrator:
    """`orchestrator serve` in a real subprocess, on a free loopback port."""

    def __init__(self, config: Path, database: Path, extra_env: dict[str, str] | None = None):
        self.config = config
        self.database = database
        self.extra_env = extra_env or {}
        self.process: asyncio.subprocess.Process | None = None
        self.url = ""
        self.stdout: list[str] = []
        self._printed = asyncio.Condition()
        self.logs: list[dict[str, object]] = []
        self._logged = asyncio.Condition()
        self._readers: list[asyncio.Task[None]] = []

    async def start(
        self, *args: str, port: int = 0, command: list[str] | None = None
    ) -> Orchestrator:
        """Run `orchestrator serve` on the test's config (or exactly `command`, if given)."""
        env = {
            **os.environ,
            "PYTHONPATH": str(REPO),
            "ORCHESTRATOR_DATABASE_URL": f"sqlite:///{self.database}",
            "ORCHESTRATOR_ADMIN_TOKEN": TOKEN,
            "ORCHESTRATOR_LOG_FORMAT": "json",
            **self.extra_env,
        }
        argv = command or [
            sys.executable, "-m", "orchestrator", "serve", "--config", str(self.config),
            "--port", str(port), *args,
        ]  # fmt: skip
        self.process = await asyncio.create_subprocess_exec(
            *argv, cwd=REPO, env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
        )
        ready: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        assert self.process.stderr is not None
        assert self.process.stdout is not None
        self._readers = [
            asyncio.create_task(self._read_logs(self.process.stderr, ready)),
            asyncio.create_task(self._read_stdout(self.process.stdout)),
        ]
        async with asyncio.timeout(START_TIMEOUT):
            self.url = await ready
        return self

    async def _read_logs(self, stream: asyncio.StreamReader, ready: asyncio.Future[str]) -> None:
        async for raw in stream:
            line = raw.decode(errors="replace").strip()
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                record = {"event": "stderr", "line": line}
            async with self._logged:
                self.logs.append(record)
                self._logged.notify_all()
            if record.get("event") == "server_ready" and not ready.done():
                ready.set_result(str(record["url"]))
        if not ready.done():
            ready.set_exception(RuntimeError(f"server exited before it was ready: {self.logs}"))

    async def _read_stdout(self, stream: asyncio.StreamReader) -> None:
        async for raw in stream:
            async with self._printed:
                self.stdout.append(raw.decode(errors="replace").rstrip("\n"))
                self._printed.notify_all()

    async def printed(self, text: str, within: float = 30.0) -> str:
        """Wait until the server prints a line containing `text`; returns that line."""

        def found() -> str | None:
            return next((line for line in self.stdout if text in line), None)

        async with asyncio.timeout(within), self._printed:
            await self._printed.wait_for(lambda: found() is not None)
        line = found()
        assert line is not None
        return line

    async def logged(self, event: str, within: float = 30.0) -> dict[str, object]:
        """Wait until the server logs a line with this event name; returns that record."""

        def found() -> dict[str, object] | None:
            return next((record for record in self.logs if record.get("event") == event), None)

        async with asyncio.timeout(within), self._logged:
            await self._logged.wait_for(lambda: found() is not None)
        record = found()
        assert record is not None
        return record

    @property
    def port(self) -> int:
        return int(self.url.rsplit(":", 1)[1])

    def client(self) -> AdminClient:
        return AdminClient(self.url, TOKEN)

    async def kill(self) -> None:
        """SIGKILL: no shutdown code runs, exactly like a crash."""
        await self._stop(signal.SIGKILL)

    async def stop(self) -> bool:
        """SIGTERM: a graceful shutdown; True if the process shut down cleanly (exit status 0
        and the log line written at the end of the lifespan)."""
        code = await self._stop(signal.SIGTERM)
        clean = any(record.get("event") == "shutdown_complete" for record in self.logs)
        return clean and code == 0

    async def _stop(self, sig: int) -> int:
        assert self.process is not None
        if self.process.returncode is None:
            self.process.send_signal(sig)
        async with asyncio.timeout(15):
            code = await self.process.wait()
            await asyncio.gather(*self._readers)
        return code


@pytest.fixture
async def orchestrators(tmp_path: Path) -> AsyncIterator[Callable[..., Orchestrator]]:
    """Make orchestrator processes; any still running at the end are killed."""
    made: list[Orchestrator] = []

    def make(config: Path, database: Path | None = None, **env: str) -> Orchestrator:
        server = Orchestrator(config, database or tmp_path / "orchestrator.db", env)
        made.append(server)
        return server

    yield make
    for server in made:
        if server.process is not None and server.process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                await server.kill()


class Research:
    """The simulated research service on a loopback port, with hooks a test can wait on."""

    def __init__(self, service: FakeResearch) -> None:
        self.service = service
        self.url = ""
        self.failed_deliveries = 0
        self._changed = asyncio.Condition()
        service.on_failed = self._failed
        service.on_delivered = self._delivered
        self.deliveries = 0

    def _delivered(self, job_id: str, status: int) -> None:
        self.deliveries += 1
        asyncio.get_running_loop().create_task(self._notify())

    async def delivered(self, count: int, within: float = 60.0) -> None:
        """Wait until `count` callbacks (duplicates included) got a final answer."""
        async with asyncio.timeout(within), self._changed:
            await self._changed.wait_for(lambda: self.deliveries >= count)

    def _failed(self, job_id: str) -> None:
        self.failed_deliveries += 1
        asyncio.get_running_loop().create_task(self._notify())

    async def _notify(self) -> None:
        async with self._changed:
            self._changed.notify_all()

    async def failing(self, within: float = 20.0) -> None:
        """Wait until at least one callback delivery has failed (the server is down)."""
        async with asyncio.timeout(within), self._changed:
            await self._changed.wait_for(lambda: self.failed_deliveries > 0)


@pytest.fixture
async def research() -> AsyncIterator[Research]:
    service = Research(FakeResearch(delay=(0.5, 0.5), duplicates=1, retry_base=0.1))
    sock = bound_socket()
    config = uvicorn.Config(
        service.service.app(), log_level="critical", lifespan="on", timeout_graceful_shutdown=1
    )
    server = uvicorn.Server(config)
    service.url = f"http://127.0.0.1:{sock.getsockname()[1]}/research"
    task = asyncio.create_task(server.serve(sockets=[sock]))
    yield service
    server.should_exit = True
    await task
    sock.close()
