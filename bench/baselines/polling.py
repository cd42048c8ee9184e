"""The loops the orchestrator replaces, against the same fake service.

* `sequential`: for each item: start the job, then ask every `interval` seconds until done.
* `fan_out`: start every job at once (asyncio), then each asks every `interval` seconds.

This file is the baseline, so it polls on purpose: it is what the product is measured against.
It uses the orchestrator's own outgoing client (orchestrator.outgoing), so that the
comparison is between waiting designs, not between HTTP connection pools.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time

import httpx

from orchestrator.outgoing import http_client
from orchestrator.serve import event_loop_factory


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
    async with http_client(1) as client:
        asks = [await _one(client, url, item, interval) for item in range(items)]
    return time.monotonic() - started, sum(asks)


async def fan_out(url: str, items: int, interval: float = 1.0) -> tuple[float, int]:
    """(wall seconds, status requests) for the start-all-then-poll-each fan-out. Requests
    wait for one of the 100 connections as long as it takes: at N = 10,000 the queue for a
    connection is longer than the client's 10 s pool timeout, and a loop that gave up
    there would measure nothing."""
    started = time.monotonic()
    async with http_client(100) as client:
        client.timeout = httpx.Timeout(10.0, connect=5.0, pool=None)
        asks = await asyncio.gather(*(_one(client, url, item, interval) for item in range(items)))
    return time.monotonic() - started, sum(asks)


async def hold(url: str, items: int, seconds: float, interval: float = 1.0) -> tuple[int, float]:
    """Start `items` jobs that do not finish, then poll each every `interval` for `seconds`:
    (status requests, CPU seconds this process spent polling). The cost of waiting, the
    polling way."""
    asks = 0
    async with http_client(100) as client:
        jobs = [
            (await client.post(f"{url}/jobs", json={"item": item})).json()["id"]
            for item in range(items)
        ]

        async def poll(job_id: str) -> None:
            nonlocal asks
            while True:  # the status loop being measured against
                asks += 1
                await client.get(f"{url}/jobs/{job_id}")
                await asyncio.sleep(interval)

        cpu = time.process_time()
        polls = [asyncio.ensure_future(poll(job)) for job in jobs]
        await asyncio.wait(polls, timeout=seconds)
        cpu = time.process_time() - cpu
        for task in polls:
            task.cancel()
        await asyncio.gather(*polls, return_exceptions=True)
    return asks, cpu


async def measured_fan_out(url: str, items: int) -> dict[str, float]:
    """fan_out() with the CPU seconds this process spent on it."""
    cpu = time.process_time()
    wall, asks = await fan_out(url, items)
    return {"wall": wall, "asks": asks, "cpu": time.process_time() - cpu}


def main() -> None:
    parser = argparse.ArgumentParser(
        description="The polling loops on their own, on the event loop the orchestrator runs "
        "on (uvloop): hold jobs that never finish (bench/waiting.py), or fan out N jobs and "
        "poll each to its end (bench/endtoend.py); prints JSON"
    )
    parser.add_argument("url", help="the fake service")
    mode = parser.add_mutually_exclusive_group(required=True)
    mode.add_argument("--hold", type=int, help="jobs to start and poll")
    mode.add_argument("--fan-out", type=int, help="jobs to start at once and poll to the end")
    parser.add_argument("--seconds", type=float, default=30.0, help="how long to hold")
    args = parser.parse_args()
    loop = event_loop_factory()
    with asyncio.Runner(loop_factory=loop) as runner:
        if args.fan_out is not None:
            print(json.dumps(runner.run(measured_fan_out(args.url, args.fan_out))))
        else:
            asks, cpu = runner.run(hold(args.url, args.hold, args.seconds))
            print(json.dumps({"asks": asks, "cpu": cpu}))


if __name__ == "__main__":
    main()
