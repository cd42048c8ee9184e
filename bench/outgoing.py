"""The outgoing client: CPU per request of the product's (httpx over aiohttp) beside
httpx over its own httpcore stack (bench/httpcore_shards.py, what it used before).

Both POST the same job to the same fake service, the way `ctx.dispatch` sends it, from one
process on the orchestrator's core, interleaved, 200 requests in flight at most and 32 connections; the figure is the
client process's CPU per request, which is what a remote task's dispatch pays.

    python -m bench.outgoing URL --requests 2000      # prints JSON
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from collections.abc import Callable

import httpx

from bench import httpcore_shards
from bench.figures import Figure, median_figure
from bench.procs import SERVER_CORE, pinned
from orchestrator import outgoing, sending
from orchestrator.serve import event_loop_factory

CONCURRENCY = 200
CLIENTS: dict[str, Callable[[int], httpx.AsyncClient]] = {
    "aiohttp": outgoing.http_client,
    "httpcore": httpcore_shards.http_client,
}


async def cpu_per_request(make: Callable[[int], httpx.AsyncClient], url: str, count: int) -> float:
    """CPU seconds per POST, after a warm-up that opens the connections."""
    slots = asyncio.Semaphore(CONCURRENCY)
    # As large as a hand-off, with no callback_url: the fake service must not call back.
    job = {"item": 0, "note": "x" * 64, "secret": "whsec_" + "A" * 44}

    async def post(client: httpx.AsyncClient, index: int) -> None:
        async with slots:  # the way ctx.dispatch sends
            headers = {"Idempotency-Key": f"k{index}"}
            request = client.build_request("POST", url, json=job, headers=headers)
            (await sending.send_plain(client, request)).raise_for_status()

    async with make(32) as client:
        await asyncio.gather(*(post(client, i) for i in range(CONCURRENCY)))
        started = time.process_time()
        await asyncio.gather(*(post(client, i) for i in range(count)))
        return (time.process_time() - started) / count


async def compare(url: str, count: int, repeats: int) -> dict[str, list[float]]:
    samples: dict[str, list[float]] = {name: [] for name in CLIENTS}
    for _ in range(repeats):
        for name, make in CLIENTS.items():
            samples[name].append(await cpu_per_request(make, url, count))
    return samples


async def measure(service: str, count: int, repeats: int) -> list[Figure]:
    """The comparison in its own process, pinned where the orchestrator runs."""
    command = [
        sys.executable, "-m", "bench.outgoing", f"{service}/jobs",
        "--requests", str(count), "--repeats", str(repeats),
    ]  # fmt: skip
    process = await asyncio.create_subprocess_exec(
        *pinned(command, SERVER_CORE), stdout=asyncio.subprocess.PIPE
    )
    out, _ = await process.communicate()
    samples = json.loads(out)
    us = {name: [s * 1e6 for s in values] for name, values in samples.items()}
    ratio = [a / h for a, h in zip(us["aiohttp"], us["httpcore"], strict=True)]
    print(
        f"  CPU per request: aiohttp {min(us['aiohttp']):.0f}-{max(us['aiohttp']):.0f} us,"
        f" httpcore {min(us['httpcore']):.0f}-{max(us['httpcore']):.0f} us",
        flush=True,
    )
    return [
        median_figure("outgoing_cpu_per_request_aiohttp", us["aiohttp"], "us", note="absolute"),
        median_figure("outgoing_cpu_per_request_httpcore", us["httpcore"], "us", note="absolute"),
        median_figure(
            "outgoing_aiohttp_vs_httpcore", ratio, "x", "< 1 x (keep the faster)",
            "same process, interleaved", at_most=1.0,
        ),
    ]  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("url")
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    with asyncio.Runner(loop_factory=event_loop_factory()) as runner:
        print(json.dumps(runner.run(compare(args.url, args.requests, args.repeats))))


if __name__ == "__main__":
    main()
