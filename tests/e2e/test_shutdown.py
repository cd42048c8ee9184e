"""SIGTERM with a request in flight: readiness turns 503 first, the request finishes, exit 0."""

from __future__ import annotations

import asyncio
import json
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from orchestrator.signing import new_secret, sign_headers
from tests.e2e.conftest import Gate, Orchestrator
from tests.e2e.test_run_end_to_end import follow_to_end

pytestmark = pytest.mark.e2e

SECRET = new_secret()

CONFIG = f"""
[triggers.upload]
workflow = "gated"
webhook = {{ scheme = "standard", secret = "{SECRET}" }}

[workflows.gated.steps.work]
handler = "tests.e2e.handlers:gated"
for_each = "event.items"

[workflows.gated.steps.done]
handler = "tests.e2e.handlers:join"
needs = ["work"]
"""


@dataclass
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes


class SlowUpload:
    """A POST whose body the test sends when it chooses, over a raw connection.

    It asks for `100 Continue`, which uvicorn sends when the app first reads the body: the
    proof that the request is in flight inside the server, without guessing at timing.
    """

    def __init__(self, url: str, path: str, body: bytes, headers: dict[str, str]) -> None:
        self.host, port = url.removeprefix("http://").split(":")
        self.port = int(port)
        self.path = path
        self.body = body
        self.headers = headers
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def send_head(self) -> None:
        """Send the request line and headers, and wait until the app reads the body."""
        self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
        lines = [
            f"POST {self.path} HTTP/1.1",
            f"host: {self.host}:{self.port}",
            "content-type: application/json",
            f"content-length: {len(self.body)}",
            "expect: 100-continue",
            *(f"{name}: {value}" for name, value in self.headers.items()),
        ]
        self.writer.write(("\r\n".join(lines) + "\r\n\r\n").encode())
        await self.writer.drain()
        async with asyncio.timeout(10):
            interim = await self.reader.readuntil(b"\r\n\r\n")
        assert interim.startswith(b"HTTP/1.1 100"), interim

    async def answer(self, send_body: bool = True) -> Answer:
        """Send the body (unless told not to) and read the final answer."""
        assert self.reader is not None
        assert self.writer is not None
        if send_body:
            self.writer.write(self.body)
            await self.writer.drain()
        async with asyncio.timeout(30):
            head = await self.reader.readuntil(b"\r\n\r\n")
            status_line, *header_lines = head.decode().strip().split("\r\n")
            headers = {}
            for line in header_lines:
                name, _, value = line.partition(":")
                headers[name.strip().lower()] = value.strip()
            body = await self.reader.readexactly(int(headers.get("content-length", "0")))
        await self.close()
        return Answer(int(status_line.split()[1]), headers, body)

    async def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            await self.writer.wait_closed()


def upload(server: Orchestrator, gate: Gate, items: int) -> SlowUpload:
    body = json.dumps({"items": list(range(items)), "gate": gate.url}).encode()
    headers = sign_headers(SECRET, body, message_id="delivery-1")
    return SlowUpload(server.url, "/hooks/upload", body, headers)


async def test_sigterm_drains_then_exits_and_a_restart_finishes_the_run(
    tmp_path: Path, gate: Gate, orchestrators: Callable[..., Orchestrator]
) -> None:
    """During the drain /readyz is 503 on a kept-alive connection, new connections are
    refused, the request in flight is answered 202, and the process exits 0 in the grace."""
    config = tmp_path / "gated.toml"
    config.write_text(CONFIG)
    database = tmp_path / "drain.db"
    grace = 30.0
    server = await orchestrators(config, database, ORCHESTRATOR_SHUTDOWN_GRACE=f"{grace}s").start()
    assert server.process is not None
    limits = httpx.Limits(max_connections=1)
    async with httpx.AsyncClient(base_url=server.url, limits=limits) as kept_alive:
        assert (await kept_alive.get("/readyz")).status_code == 200
        slow = upload(server, gate, items=3)
        await slow.send_head()

        signalled = time.monotonic()
        server.process.send_signal(signal.SIGTERM)
        started = await server.logged("shutdown_started")
        assert started["requests_in_flight"] == 1
        assert started["grace"] == grace

        draining = await kept_alive.get("/readyz")
        assert (draining.status_code, draining.json()["status"]) == (503, "draining")
        assert draining.headers["connection"] == "close"
        with pytest.raises(httpx.ConnectError):
            async with httpx.AsyncClient(base_url=server.url) as fresh:
                await fresh.get("/healthz")

        answer = await slow.answer()
    assert answer.status == 202, answer.body
    run_id = json.loads(answer.body)["run_id"]
    async with asyncio.timeout(grace):
        code = await server.process.wait()
    assert code == 0
    assert time.monotonic() - signalled < grace
    assert await server.stop(), "shutdown_complete was logged"
    complete = await server.logged("shutdown_complete")
    assert complete["requests_cut_off"] == 0
    assert isinstance(complete["seconds"], float)
    assert complete["seconds"] < grace

    gate.open("main")
    restarted = await orchestrators(config, database).start()
    history = await follow_to_end(restarted, run_id)
    assert history[-1].type == "run_succeeded"
    assert sum(e.type == "task_succeeded" and e.step == "work" for e in history) == 3
    assert await restarted.stop()


async def test_a_request_still_running_at_the_end_of_the_grace_is_answered_503(
    tmp_path: Path, gate: Gate, orchestrators: Callable[..., Orchestrator]
) -> None:
    """A body that never arrives is cut off when the grace ends: 503 shutting_down, exit 0."""
    config = tmp_path / "gated.toml"
    config.write_text(CONFIG)
    server = await orchestrators(config, ORCHESTRATOR_SHUTDOWN_GRACE="1s").start()
    slow = upload(server, gate, items=1)
    await slow.send_head()

    assert await server.stop(), "exit 0 and shutdown_complete after the grace"
    answer = await slow.answer(send_body=False)
    assert answer.status == 503
    assert json.loads(answer.body)["error"] == "shutting_down"
    assert answer.headers["connection"] == "close"
    complete = await server.logged("shutdown_complete")
    assert complete["requests_cut_off"] == 1
    assert any(record.get("event") == "shutdown_grace_expired" for record in server.logs)


async def test_a_second_signal_forces_the_exit(
    tmp_path: Path, gate: Gate, orchestrators: Callable[..., Orchestrator]
) -> None:
    """SIGTERM starts a long drain; a second SIGTERM ends the process at once, still 0."""
    config = tmp_path / "gated.toml"
    config.write_text(CONFIG)
    server = await orchestrators(config, ORCHESTRATOR_SHUTDOWN_GRACE="300s").start()
    assert server.process is not None
    slow = upload(server, gate, items=1)
    await slow.send_head()

    server.process.send_signal(signal.SIGTERM)
    await server.logged("shutdown_started")
    server.process.send_signal(signal.SIGTERM)
    async with asyncio.timeout(20):
        code = await server.process.wait()
    assert code == 0
    await slow.close()
    await server.stop()
    assert any(record.get("event") == "shutdown_forced" for record in server.logs)


async def test_an_open_event_stream_ends_cleanly_and_does_not_hold_the_drain(
    tmp_path: Path, gate: Gate, orchestrators: Callable[..., Orchestrator]
) -> None:
    """A live SSE stream is not waited for: it ends with a complete body and exit 0 follows."""
    config = tmp_path / "gated.toml"
    config.write_text(CONFIG)
    server = await orchestrators(config, ORCHESTRATOR_SHUTDOWN_GRACE="300s").start()
    first_entry = asyncio.Event()
    seen: list[str] = []

    async def follow() -> None:
        async with server.client() as client:
            async for entry in client.stream(after=0):
                seen.append(entry.type)
                first_entry.set()

    following = asyncio.create_task(follow())
    async with server.client() as client:
        await client.fire("gated", {"items": [0], "gate": gate.url})
    async with asyncio.timeout(20):
        await first_entry.wait()
    assert await server.stop(), "exit 0 long before the 300 s grace"
    async with asyncio.timeout(20):
        await following  # the stream ended without a protocol error
    complete = await server.logged("shutdown_complete")
    assert complete["streams_ended"] == 1
    assert complete["requests_cut_off"] == 0
    assert seen
