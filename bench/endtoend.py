"""Fan-out and end-to-end runs: N remote tasks whose service answers after DELAY seconds,
beside the asyncio polling loop doing the same work in the same run.

Each repeat runs the orchestrator, then the polling baseline (bench/baselines/polling.py, its
own process on the orchestrator's core, the same event loop and HTTP client), against the
same fake service: the goals are ratios between the two, which hold on a noisy machine
where absolute times do not.
"""

from __future__ import annotations

import asyncio
import json
import statistics
import sys
import time

import httpx

from bench.figures import Figure, median_figure
from bench.procs import SERVER_CORE, TOKEN, Server, cpu_seconds_precise, pinned
from orchestrator.client import AdminClient

DELAY = 0.5
BASELINE_SIZES = (1000, 10000)


async def one_run(orchestrator: str, service: str, items: int) -> dict[str, float]:
    """Fire one run of `items` remote tasks; time it from the history stream and the service."""
    async with httpx.AsyncClient() as http:
        await http.post(f"{service}/reset")
        async with AdminClient(orchestrator, TOKEN) as client:
            fired_at = time.time()
            fired = await client.fire(
                "bench", {"items": list(range(items)), "service": f"{service}/jobs"}
            )
            ends = ("run_succeeded", "run_failed")
            ended = None
            async for entry in client.stream(after=0, run_id=fired["run_id"], types=ends):
                ended = entry.type
                break
            ended_at = time.time()
        stats = (await http.get(f"{service}/stats")).json()
    if ended != "run_succeeded":
        raise RuntimeError(f"benchmark run {fired['run_id']} ended {ended}")
    return {"wall": ended_at - fired_at, "fan_out": (stats["last"] or ended_at) - fired_at}


async def polling_run(service: str, items: int) -> dict[str, float]:
    """The polling fan-out in its own process on the orchestrator's core: wall, status
    requests and the CPU seconds it spent."""
    async with httpx.AsyncClient() as http:
        await http.post(f"{service}/reset")
    command = [sys.executable, "-m", "bench.baselines.polling", service, "--fan-out", str(items)]
    process = await asyncio.create_subprocess_exec(
        *pinned(command, SERVER_CORE), stdout=asyncio.subprocess.PIPE
    )
    out, _ = await process.communicate()
    if process.returncode != 0:
        raise RuntimeError(f"the polling baseline failed ({process.returncode})")
    result: dict[str, float] = json.loads(out)
    return result


async def measure(
    orchestrator: Server, service: str, sizes: list[int], repeats: int
) -> list[Figure]:
    """Per N: the orchestrator's fan-out, overhead and CPU per task (medians of `repeats`),
    and at BASELINE_SIZES the polling loop's, interleaved, with the ratios the goals name."""
    figures: list[Figure] = []
    overheads: dict[int, float] = {}
    await one_run(orchestrator.url, service, 10)  # warm up connections and caches
    for n in sizes:
        runs, cpu, polls = [], [], []
        for _ in range(repeats):
            before = cpu_seconds_precise(orchestrator.pid)
            runs.append(await one_run(orchestrator.url, service, n))
            cpu.append((cpu_seconds_precise(orchestrator.pid) - before) / n)
            if n in BASELINE_SIZES:
                polls.append(await polling_run(service, n))
        fan_out = [run["fan_out"] for run in runs]
        overhead = [run["wall"] - DELAY for run in runs]
        print(
            f"  N={n:<6} wall {min(r['wall'] for r in runs):.2f}-{max(r['wall'] for r in runs):.2f}s"
            f"  fan-out {min(fan_out):.2f}-{max(fan_out):.2f}s"
            f"  CPU/task {statistics.median(cpu) * 1000:.2f} ms",
            flush=True,
        )
        figures.append(median_figure(f"fan_out_n{n}", fan_out, "s", note="absolute"))
        figures.append(
            median_figure(f"overhead_n{n}", overhead, "s", note="wall - 0.5 s; absolute")
        )
        figures.append(
            median_figure(
                f"cpu_per_task_n{n}", [c * 1000 for c in cpu], "ms",
                note="orchestrator CPU / N; absolute",
            )
        )  # fmt: skip
        overheads[n] = figures[-2].value
        if polls:
            figures += _against_polling(n, overhead, cpu, polls)
    if 1000 in overheads and 10000 in overheads:
        ratio = overheads[10000] / overheads[1000]
        figures.append(
            Figure(
                "overhead_n10000_vs_n1000", round(ratio, 2), "x", "<= 10 x (linear, no knee)",
                ratio <= 10.0, note="medians of the same run",
            )
        )  # fmt: skip
    return figures


def overhead_goal(n: int) -> float:
    """The most overhead, as a share of the polling loop's, that a run of N may have."""
    return 0.5 if n == 1000 else 1.0


def _against_polling(
    n: int, overhead: list[float], cpu: list[float], polls: list[dict[str, float]]
) -> list[Figure]:
    poll_overhead = [poll["wall"] - DELAY for poll in polls]
    poll_cpu = [poll["cpu"] / n for poll in polls]
    asks = statistics.median(poll["asks"] for poll in polls)
    print(
        f"  N={n:<6} polling: overhead {statistics.median(poll_overhead):.2f}s"
        f"  CPU/task {statistics.median(poll_cpu) * 1000:.2f} ms  status requests {asks:.0f}",
        flush=True,
    )
    overhead_limit = overhead_goal(n)
    return [
        median_figure(f"baseline_polling_overhead_n{n}", poll_overhead, "s", "baseline", "absolute"),
        median_figure(
            f"baseline_polling_cpu_per_task_n{n}", [c * 1000 for c in poll_cpu], "ms",
            "baseline", "absolute; includes its status requests",
        ),
        Figure(f"baseline_polling_status_requests_n{n}", asks, "requests", "baseline", None),
        median_figure(
            f"overhead_vs_polling_n{n}",
            [o / p for o, p in zip(overhead, poll_overhead, strict=True)], "x",
            f"<= {overhead_limit:g} x", "pairs of interleaved runs", at_most=overhead_limit,
        ),
        median_figure(
            f"cpu_per_task_vs_polling_n{n}",
            [c / p for c, p in zip(cpu, poll_cpu, strict=True)], "x", "<= 1 x",
            "pairs of interleaved runs", at_most=1.0,
        ),
    ]  # fmt: skip
