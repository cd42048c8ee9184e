"""Fan-out and end-to-end runs: N remote tasks whose service answers after DELAY seconds."""

from __future__ import annotations

import itertools
import statistics
import time

import httpx

from bench.figures import Figure, median_figure
from bench.procs import TOKEN, Server, cpu_seconds_precise
from orchestrator.client import AdminClient

DELAY = 0.5
GOALS = {1000: (0.5, 0.3), 10000: (4.0, 3.0)}  # N: (fan-out s, overhead s)


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


async def measure(
    orchestrator: Server, service: str, sizes: list[int], repeats: int
) -> tuple[list[Figure], dict[int, float], dict[int, float]]:
    """Fan-out and overhead per N (median of `repeats`); per-task overhead and per-task CPU
    of the orchestrator process per N."""
    figures: list[Figure] = []
    per_task: dict[int, float] = {}
    cpu_per_task: dict[int, float] = {}
    await one_run(orchestrator.url, service, 10)  # warm up connections and caches
    for n in sizes:
        runs = []
        cpu = []
        for _ in range(repeats):
            before = cpu_seconds_precise(orchestrator.pid)
            runs.append(await one_run(orchestrator.url, service, n))
            cpu.append((cpu_seconds_precise(orchestrator.pid) - before) / n)
        fan_out = [run["fan_out"] for run in runs]
        overhead = [run["wall"] - DELAY for run in runs]
        print(
            f"  N={n:<6} wall {min(r['wall'] for r in runs):.2f}-{max(r['wall'] for r in runs):.2f}s"
            f"  fan-out {min(fan_out):.2f}-{max(fan_out):.2f}s",
            flush=True,
        )
        fan_goal, overhead_goal = GOALS.get(n, (None, None))
        figures.append(_against(f"fan_out_n{n}", fan_out, "s", fan_goal))
        figures.append(_against(f"overhead_n{n}", overhead, "s", overhead_goal))
        per_task[n] = figures[-1].value / n
        cpu_per_task[n] = statistics.median(cpu)
    return figures, per_task, cpu_per_task


def _against(name: str, samples: list[float], unit: str, limit: float | None) -> Figure:
    if limit is None:
        return median_figure(name, samples, unit)
    return median_figure(name, samples, unit, f"<= {limit:g} {unit}", at_most=limit)


def flatness(per_task: dict[int, float], cpu_per_task: dict[int, float]) -> list[Figure]:
    """Per-task overhead (wall) and per-task CPU of the orchestrator, per N; each flat if it
    never grows by more than half from one N to the next (the total then grows no faster
    than N). At small N part of the work hides inside the service's 0.5 s, which flatters
    the wall figure there; CPU per task has no such overlap."""
    figures = []
    for name, values, note in (
        ("per_task_overhead", per_task, "(wall - 0.5 s) / N"),
        ("per_task_cpu", cpu_per_task, "orchestrator CPU seconds / N"),
    ):
        sizes = sorted(values)
        flat = all(values[b] <= 1.5 * values[a] for a, b in itertools.pairwise(sizes))
        figures += [
            Figure(
                f"{name}_n{n}", round(values[n] * 1000, 3), "ms",
                "flat across N (each <= 1.5x the previous)", flat, note=note,
            )
            for n in sizes
        ]  # fmt: skip
    return figures
