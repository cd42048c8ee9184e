"""Join latency: the last callback of a step -> the first task of the step that needs it.

Workflow `join`: step `a` (remote) and step `b` (remote, needs a). This driver plays the
service: a receiver in this process takes each dispatch; the driver sends a's callback on
a pre-opened keep-alive connection with pre-built bytes. The transaction that accepts
the callback also opens the barrier and marks b dispatched (the history shows a's
completion by callback and b's dispatch at the same instant), and the answer is sent after that commit; so the time from sending the
callback to its answer bounds "accepted -> dispatched" from above, reading and verifying
the callback included. The round trip to b's dispatch arriving at the service adds b's
handler and its HTTP request.
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from bench.figures import Figure, percentile
from bench.procs import TOKEN
from bench.rawhttp import RawClient, request_bytes
from orchestrator.client import AdminClient
from orchestrator.serve import listening_socket
from orchestrator.signing import sign_headers

Arrival = tuple[float, dict[str, Any]]


class Receiver:
    """The service side: every dispatch lands in a queue with its arrival time."""

    def __init__(self) -> None:
        self.arrivals: asyncio.Queue[Arrival] = asyncio.Queue()

    async def register(self, request: Request) -> Response:
        arrived = time.perf_counter()
        self.arrivals.put_nowait((arrived, await request.json()))
        return JSONResponse({"accepted": True}, status_code=202)

    def app(self) -> Starlette:
        return Starlette(routes=[Route("/jobs", self.register, methods=["POST"])])


def _callback(registration: dict[str, Any]) -> bytes:
    body = json.dumps({"status": "succeeded", "output": {"ok": True}}).encode()
    headers = {
        **sign_headers(registration["callback_secret"], body),
        "Content-Type": "application/json",
    }
    return request_bytes("POST", registration["callback_url"], headers, body)


async def measure(orchestrator: str, runs: int) -> list[Figure]:
    receiver = Receiver()
    sock = listening_socket("127.0.0.1", 0)
    server = uvicorn.Server(uvicorn.Config(receiver.app(), log_level="warning", access_log=False))
    serving = asyncio.ensure_future(server.serve(sockets=[sock]))
    service = f"http://127.0.0.1:{sock.getsockname()[1]}/jobs"
    callbacks = RawClient(orchestrator, 2)
    answers: list[float] = []
    spans: list[float] = []
    run_ids: list[str] = []
    try:
        async with AdminClient(orchestrator, TOKEN) as client:
            for _ in range(runs + 5):  # the first five warm up and are not counted
                fired = await client.fire("join", {"service": service})
                _, a = await asyncio.wait_for(receiver.arrivals.get(), 10)
                request = _callback(a)
                sent = time.perf_counter()
                status, _ = await callbacks.send(request)
                answered = time.perf_counter()
                arrived, b = await asyncio.wait_for(receiver.arrivals.get(), 10)
                if status != 200:
                    raise RuntimeError(f"join: the callback of a was answered {status}")
                await callbacks.send(_callback(b))
                answers.append((answered - sent) * 1000)
                spans.append((arrived - sent) * 1000)
                run_ids.append(str(fired["run_id"]))
            together = [await _same_commit(client, run_id) for run_id in run_ids[5:]]
    finally:
        callbacks.close()
        server.should_exit = True
        await serving
    answers, spans = answers[5:], spans[5:]
    p50, p99 = percentile(answers, 50), percentile(answers, 99)
    note = (
        f"callback sent -> answered; b dispatched by the same commit in "
        f"{sum(together)} of {runs} runs"
    )
    outer = f"callback sent -> b's dispatch received by the service; {runs} runs"
    return [
        Figure("join_latency_p50", round(p50, 3), "ms", "-", None, note=f"absolute; {note}"),
        Figure("join_latency_p99", round(p99, 3), "ms", "-", None, note=f"absolute; {note}"),
        Figure("join_round_trip_p50", round(percentile(spans, 50), 3), "ms", "-", None, note=outer),
        Figure("join_round_trip_p99", round(percentile(spans, 99), 3), "ms", "-", None, note=outer),
    ]


async def _same_commit(client: AdminClient, run_id: str) -> bool:
    """Whether b was marked dispatched in the transaction that accepted a's callback."""
    history = await client.history(run_id)
    accepted = next(
        e.at
        for e in history
        if e.type == "task_succeeded" and e.step == "a" and "webhook_id" in e.data
    )
    dispatched = next(e.at for e in history if e.type == "task_dispatched" and e.step == "b")
    return accepted == dispatched
