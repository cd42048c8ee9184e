"""Callback ingest: wrk replays pre-signed callbacks, each completing one parked task.

The same requests go to the bare Starlette endpoint (bench/bare.py) on the same core with
the same uvicorn settings: its rate is the ceiling. wrk runs on the other core with one
thread; its CPU use beside the server's shows which side is saturated.
"""

from __future__ import annotations

import asyncio
import json
import resource
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.figures import Figure, median_figure
from bench.parking import park, write_requests
from bench.procs import (
    LOAD_CORE,
    ROOT,
    SERVER_CORE,
    TOKEN,
    Server,
    cpu_seconds,
    pinned,
    start_module,
)
from orchestrator.client import AdminClient

CONNECTIONS = 64
SCRIPT = ROOT / "bench" / "callbacks.lua"


@dataclass
class Burst:
    rate: float  # callbacks answered per second
    answered: int
    exhausted: bool  # every prepared callback was sent before the time was up
    non_2xx: int
    socket_errors: int
    p50_ms: float
    p99_ms: float
    server_cpu: float  # share of one core while wrk ran
    client_cpu: float


async def run_wrk(
    url: str, requests_file: Path, seconds: float, cycle: bool, connections: int = CONNECTIONS
) -> dict[str, Any]:
    """Replay the callbacks in `requests_file` against `url` for `seconds`: wrk's summary
    (bench/callbacks.lua's `wrk-json` line)."""
    command = [
        "wrk", "-t1", f"-c{connections}", f"-d{seconds:g}s", "--timeout", "10s", "-s", str(SCRIPT),
        url, "--", str(requests_file), "cycle" if cycle else "once",
    ]  # fmt: skip
    process = await asyncio.create_subprocess_exec(
        *pinned(command, LOAD_CORE), stdout=asyncio.subprocess.PIPE
    )
    out, _ = await process.communicate()
    line = next(x for x in out.decode().splitlines() if x.startswith("wrk-json "))
    result: dict[str, Any] = json.loads(line.removeprefix("wrk-json "))
    return result


async def wrk(url: str, requests_file: Path, seconds: float, cycle: bool, server_pid: int) -> Burst:
    """Replay the callbacks in `requests_file` against `url` for `seconds`."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    server_before = cpu_seconds(server_pid)
    result = await run_wrk(url, requests_file, seconds, cycle)
    server_used = cpu_seconds(server_pid) - server_before
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    client_used = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
    elapsed = result["duration_us"] / 1e6
    prepared = sum(1 for _ in requests_file.open())
    return Burst(
        rate=result["answered"] / elapsed,
        answered=result["answered"],
        exhausted=not cycle and result["sent"] >= prepared,
        non_2xx=result["non_2xx"],
        socket_errors=result["socket_errors"],
        p50_ms=result["p50_ms"],
        p99_ms=result["p99_ms"],
        server_cpu=server_used / elapsed,
        client_cpu=client_used / elapsed,
    )


async def measure(
    orchestrator: Server, workdir: Path, tasks: int, seconds: float, repeats: int
) -> list[Figure]:
    """Each repeat parks `tasks` tasks, replays their callbacks for `seconds`, checks that
    every answered callback is persisted, then replays the same file at the bare endpoint."""
    if shutil.which("wrk") is None:
        return [Figure("callback_ingest", 0, "/s", "needs wrk (apt-get install wrk)", None)]
    bare = await start_module("bench.bare", core=SERVER_CORE)
    ours: list[Burst] = []
    ceiling: list[Burst] = []
    try:
        for repeat in range(repeats):
            run_id, task_ids, _ = await park(orchestrator.url, tasks)
            requests_file = workdir / f"callbacks-{repeat}.tsv"
            write_requests(task_ids, requests_file)
            burst = await wrk(orchestrator.url, requests_file, seconds, False, orchestrator.pid)
            async with AdminClient(orchestrator.url, TOKEN) as client:
                detail = await client.run(run_id)
                await client.cancel(run_id)  # the callbacks left over are not needed
            done = sum(task["state"] == "succeeded" for task in detail["tasks"])
            if done < burst.answered or burst.non_2xx:
                raise RuntimeError(
                    f"ingest: {burst.answered} callbacks answered but {done} tasks persisted "
                    f"as succeeded; {burst.non_2xx} answers not 2xx"
                )
            ours.append(burst)
            ceiling.append(await wrk(bare.url, requests_file, seconds, True, bare.pid))
            print(
                f"  ingest: {burst.rate:,.0f}/s (bare {ceiling[-1].rate:,.0f}/s), "
                f"{done} tasks persisted{' (all sent: a lower bound)' if burst.exhausted else ''}",
                flush=True,
            )
    finally:
        await bare.stop()
    rates = [b.rate for b in ours]
    bare_rates = [b.rate for b in ceiling]
    ratios = [b.rate / c.rate for b, c in zip(ours, ceiling, strict=True)]
    rate = median_figure("callback_ingest", rates, "/s", note="absolute")
    ratio = median_figure(
        "callback_ingest_vs_bare", [r * 100 for r in ratios], "%", ">= 50 %", at_least=50
    )
    note = f"wrk 1 thread, {CONNECTIONS} connections; CPU as share of one core"
    return [
        rate,
        median_figure("bare_endpoint_rate", bare_rates, "/s", "ceiling", note=note),
        ratio,
        median_figure("callback_ingest_latency_p50", [b.p50_ms for b in ours], "ms"),
        median_figure("callback_ingest_latency_p99", [b.p99_ms for b in ours], "ms"),
        median_figure("ingest_server_cpu", [b.server_cpu * 100 for b in ours], "%", note=note),
        median_figure("bare_server_cpu", [b.server_cpu * 100 for b in ceiling], "%", note=note),
        median_figure("bare_wrk_cpu", [b.client_cpu * 100 for b in ceiling], "%", note=note),
    ]
