"""A simulated external research service, for the demo and for end-to-end tests.

It behaves like the services the orchestrator is built for: POST /research registers a job
with a callback URL and answers 202 at once; after a while it POSTs the result to the
callback URL, signed (Standard Webhooks) with the secret it was handed. Like real senders
it retries a callback that does not get a 2xx, with backoff, and it can be told to send
duplicates. Every delay is a `loop.call_later` timer: nothing here sleeps either. Like a
traced service it continues the W3C trace it was sent: its callback carries a `traceparent`
of the same trace under a span of its own.

Run it beside the orchestrator with `orchestrator serve --sidecar research=handlers.fake_research:create_app`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import httpx
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from orchestrator.outgoing import http_client
from orchestrator.signing import sign_headers
from orchestrator.tracecontext import TraceContext, extract


@dataclass
class Job:
    callback_url: str
    secret: str
    body: bytes
    deliveries_left: int
    attempts: int = 0
    trace: TraceContext | None = None  # the valid trace context the job was sent with


@dataclass
class FakeResearch:
    """The service's behaviour; tests tune it, the demo takes the defaults."""

    delay: tuple[float, float] = (0.5, 3.0)
    duplicates: int = 0
    retry_base: float = 0.2
    max_attempts: int = 50
    seed: str = "research"
    jobs: dict[str, Job] = field(default_factory=dict)
    delivered: dict[str, int] = field(default_factory=dict)
    on_delivered: Callable[[str, int], None] | None = None
    on_failed: Callable[[str], None] | None = None
    route: Callable[[str], str] | None = None  # a load balancer: where a delivery goes
    _http: httpx.AsyncClient | None = None
    _pending: set[asyncio.TimerHandle] = field(default_factory=set)
    _delivering: set[asyncio.Task[None]] = field(default_factory=set)

    def research(self, lead: dict[str, Any]) -> dict[str, Any]:
        """What the research finds: a score and a signal, fixed per lead."""
        rng = random.Random(f"{self.seed}/{lead.get('id')}")  # noqa: S311 - simulated data
        signal = rng.choice(["hiring", "funding", "launch", "expansion"])
        return {**lead, "score": round(rng.uniform(0, 100), 1), "signal": signal}

    def delay_for(self, lead: dict[str, Any]) -> float:
        rng = random.Random(f"{self.seed}/delay/{lead.get('id')}")  # noqa: S311 - simulated latency
        scale = float(os.environ.get("OUTREACH_DELAY_SCALE", "1"))
        return rng.uniform(*self.delay) * scale

    async def register(self, request: Request) -> Response:
        """POST /research: take the job, answer 202 at once, call back later."""
        payload = await request.json()
        job_id = request.headers.get("idempotency-key") or f"job-{len(self.jobs)}"
        if job_id not in self.jobs:  # a re-sent registration is the same job
            result = {"status": "succeeded", "output": self.research(payload["lead"])}
            job = Job(
                payload["callback_url"],
                payload["callback_secret"],
                json.dumps(result).encode(),
                deliveries_left=1 + self.duplicates,
                trace=extract(request.headers.items()),
            )
            self.jobs[job_id] = job
            self._later(self.delay_for(payload["lead"]), job_id)
        return JSONResponse({"job": job_id}, status_code=202)

    def _later(self, delay: float, job_id: str) -> None:
        loop = asyncio.get_running_loop()

        def fire() -> None:
            self._pending.discard(handle)
            task = loop.create_task(self.deliver(job_id))
            self._delivering.add(task)
            task.add_done_callback(self._delivering.discard)

        handle = loop.call_later(delay, fire)
        self._pending.add(handle)

    async def deliver(self, job_id: str) -> None:
        """POST the signed result; on failure try again later, as real senders do."""
        job = self.jobs[job_id]
        job.attempts += 1
        headers = {
            # Redeliveries keep the webhook-id, as real senders do; the receiver dedups on it.
            **sign_headers(job.secret, job.body, message_id=job_id),
            "content-type": "application/json",
            **({} if job.trace is None else job.trace.child().headers()),
        }
        try:
            assert self._http is not None  # noqa: S101 - opened by the app's lifespan
            url = job.callback_url if self.route is None else self.route(job.callback_url)
            response = await self._http.post(url, content=job.body, headers=headers)
            delivered = response.status_code < 300 or response.status_code in (409, 410)
        except httpx.TransportError:
            delivered = False
        if not delivered:
            if self.on_failed is not None:
                self.on_failed(job_id)
            if job.attempts < self.max_attempts:
                self._later(min(2.0, self.retry_base * 2 ** min(job.attempts, 6)), job_id)
            return
        self.delivered[job_id] = self.delivered.get(job_id, 0) + 1
        if self.on_delivered is not None:
            self.on_delivered(job_id, response.status_code)
        job.deliveries_left -= 1
        if job.deliveries_left > 0:
            self._later(0.0, job_id)

    def app(self) -> Starlette:
        @contextlib.asynccontextmanager
        async def lifespan(app: Starlette) -> AsyncIterator[None]:
            async with http_client() as http:
                self._http = http
                yield
                for handle in self._pending:
                    handle.cancel()
                for task in self._delivering:
                    task.cancel()
                await asyncio.gather(*self._delivering, return_exceptions=True)

        return Starlette(
            routes=[Route("/research", self.register, methods=["POST"])], lifespan=lifespan
        )


def create_app() -> Starlette:
    """The demo's research service with default behaviour."""
    return FakeResearch().app()
