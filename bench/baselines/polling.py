"""The loops the orchestrator replaces, against the same fake service.

* `sequential`: for each item: start the job, then ask every `interval` seconds until done.
* `fan_out`: start every job at once (asyncio), then each asks every `interval` seconds.

This file is the baseline, so it polls on purpose: it is what the product is measured against.
"""

from __future__ import annotations

import asyncio
import time

import httpx


async def _wait_done(client: httpx.AsyncClient, url: str, job_id: str, interval: float) -> int:
    asks = 0
    while True:  # the status loop being measured against
        asks += 1
        if (await client.get(f"{url}/jobs/{job_id}")).json()["done"]:
            return asks
        await asyncio.sleep(interval)


async def _one(client: httpx.AsyncClient, url: str, item: int, interval: float) -> int:
    job = (await client.post(f"{url}/jobs", json={"item": item})).json()["id"]
    return await _wait_done(client, url, job, interval)


async def sequential(url: str, items: int, interval: float = 1.0) -> tuple[float, int]:
    """(wall seconds, status requests) for the one-after-another polling loop."""
    started = time.monotonic()
    async with httpx.AsyncClient() as client:
        asks = [await _one(client, url, item, interval) for item in range(items)]
    return time.monotonic() - started, sum(asks)


async def fan_out(url: str, items: int, interval: float = 1.0) -> tuple[float, int]:
    """(wall seconds, status requests) for the start-all-then-poll-each fan-out."""
    started = time.monotonic()
    limits = httpx.Limits(max_connections=100)
    async with httpx.AsyncClient(limits=limits, timeout=60.0) as client:
        asks = await asyncio.gather(*(_one(client, url, item, interval) for item in range(items)))
    return time.monotonic() - started, sum(asks)
