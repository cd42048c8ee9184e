"""The external service every benchmark talks to: jobs finish after a fixed delay.

POST /jobs registers a job and answers 202 at once. A job that came with a callback URL is
reported there, signed with the secret it came with (the orchestrator's path), through the
lean keep-alive client in rawhttp.py so that the service is not the bottleneck; GET
/jobs/{id} answers its status (the polling baselines' path). Completion is a timer, never a
sleep. GET /stats tells when the first and last registrations arrived, and how many
callbacks went to each origin.

POST /spread {"origins": [...]} plays a load balancer in front of several replicas: each
callback delivery goes to the next origin in turn (its URL's host:port rewritten; the path,
the token, is valid on every replica that shares the callback key). An empty list sends
each callback where its URL says again.

    python -m bench.fake_service --port 9001 --delay 0.5
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import socket
import time
from collections.abc import AsyncIterator
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from bench.rawhttp import RawClient, request_bytes
from orchestrator.signing import sign_headers


class Service:
    def __init__(self, delay: float) -> None:
        self.delay = delay
        self.jobs: dict[str, dict[str, Any]] = {}
        self.first: float | None = None
        self.last: float | None = None
        self.clients: dict[str, RawClient] = {}
        self.answers: dict[int, int] = {}
        self.spread: list[str] = []
        self.delivered: dict[str, int] = {}
        self._turn = 0
        self._tasks: set[asyncio.Task[None]] = set()

    async def register(self, request: Request) -> Response:
        now = time.time()
        self.first = self.first or now
        self.last = now
        payload = await request.json()
        job_id = request.headers.get("idempotency-key") or f"job-{len(self.jobs)}"
        if job_id not in self.jobs:
            self.jobs[job_id] = {"done": False, **payload}
            asyncio.get_running_loop().call_later(self.delay, self._finish, job_id)
        return JSONResponse({"id": job_id}, status_code=202)

    def _finish(self, job_id: str) -> None:
        job = self.jobs[job_id]
        job["done"] = True
        if job.get("callback_url"):
            task = asyncio.get_running_loop().create_task(self._call_back(job))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _call_back(self, job: dict[str, Any]) -> None:
        origin, _, token = str(job["callback_url"]).partition("/callbacks/")
        if self.spread:
            origin = self.spread[self._turn % len(self.spread)]
            self._turn += 1
        url = f"{origin}/callbacks/{token}"
        self.delivered[origin] = self.delivered.get(origin, 0) + 1
        body = json.dumps({"status": "succeeded", "output": {"item": job.get("item")}}).encode()
        headers = {**sign_headers(job["callback_secret"], body), "Content-Type": "application/json"}
        client = self.clients.get(origin) or self.clients.setdefault(origin, RawClient(origin, 64))
        # The orchestrator may be gone at shutdown.
        with contextlib.suppress(OSError, asyncio.IncompleteReadError):
            status, _ = await client.send(request_bytes("POST", url, headers, body))
            self.answers[status] = self.answers.get(status, 0) + 1

    async def status(self, request: Request) -> Response:
        job = self.jobs.get(request.path_params["job_id"])
        return JSONResponse({"done": bool(job and job["done"])})

    async def stats(self, request: Request) -> Response:
        return JSONResponse(
            {
                "jobs": len(self.jobs),
                "first": self.first,
                "last": self.last,
                "answers": self.answers,
                "delivered": self.delivered,
            }
        )

    async def reset(self, request: Request) -> Response:
        self.jobs.clear()
        self.answers.clear()
        self.delivered.clear()
        self.first = self.last = None
        return JSONResponse({})

    async def set_spread(self, request: Request) -> Response:
        origins = (await request.json())["origins"]
        self.spread = [str(origin).rstrip("/") for origin in origins]
        self._turn = 0
        return JSONResponse({"origins": self.spread})

    def app(self) -> Starlette:
        @contextlib.asynccontextmanager
        async def lifespan(app: Starlette) -> AsyncIterator[None]:
            yield
            for client in self.clients.values():
                client.close()

        return Starlette(
            routes=[
                Route("/jobs", self.register, methods=["POST"]),
                Route("/jobs/{job_id}", self.status, methods=["GET"]),
                Route("/stats", self.stats, methods=["GET"]),
                Route("/reset", self.reset, methods=["POST"]),
                Route("/spread", self.set_spread, methods=["POST"]),
            ],
            lifespan=lifespan,
        )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--port", type=int, default=9001)
    parser.add_argument("--fd", type=int, help="serve on this already listening socket")
    parser.add_argument("--delay", type=float, default=0.5)
    args = parser.parse_args()
    if args.fd is not None:
        sock = socket.socket(fileno=args.fd)
    else:
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", args.port))
    config = uvicorn.Config(Service(args.delay).app(), log_level="warning", access_log=False)
    uvicorn.Server(config).run(sockets=[sock])


if __name__ == "__main__":
    main()
