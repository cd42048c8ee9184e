"""The cost of waiting: CPU and memory of an orchestrator while many tasks await callbacks.

Two orchestrators on the same core and the same configuration: one parks N tasks (each
awaiting a callback with a one-hour deadline), the other holds none; both are then left
idle for the same windows, measured side by side (three windows; the median ratio, since
both spend only tens of milliseconds per window on uvicorn's own housekeeping). A third,
also empty, is measured in the same windows as a control: its ratio to the first empty
one is the noise floor of the figure. Memory is the RSS of the parked one
minus its own RSS before parking, and again after a restart on the same database (what
recovery holds). The polling baseline holds 1,000 jobs that never finish and polls each
once a second over the same window.
"""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path

from bench.figures import Figure, median_figure
from bench.parking import park
from bench.procs import (
    ROOT,
    SERVER_CORE,
    cpu_seconds_precise,
    pinned,
    rss_bytes,
    start_module,
    start_orchestrator,
)

MIB = 1024 * 1024
POLLED_JOBS = 1000


WINDOWS = 3


async def measure(workdir: Path, config: str, tasks: int, idle: float) -> list[Figure]:
    busy_dir, idle_dir, control_dir = workdir / "parked", workdir / "none", workdir / "control"
    for path in (busy_dir, idle_dir, control_dir):
        path.mkdir(parents=True)
    parked = await start_orchestrator(busy_dir, config)
    empty = await start_orchestrator(idle_dir, config)
    control = await start_orchestrator(control_dir, config)
    try:
        rss_before = rss_bytes(parked.pid)
        _, _, seconds = await park(parked.url, tasks, with_ids=False)
        print(f"  parked {tasks:,} tasks in {seconds:.1f}s", flush=True)
        windows = []
        for _ in range(WINDOWS):
            cpu = {pid: cpu_seconds_precise(pid) for pid in (parked.pid, empty.pid, control.pid)}
            await asyncio.sleep(idle)  # the measurement window: nothing else runs
            windows.append({pid: cpu_seconds_precise(pid) - start for pid, start in cpu.items()})
        rss_parked = rss_bytes(parked.pid) - rss_before
        rss_none = rss_bytes(empty.pid)
        await parked.kill()
        restarted = await start_orchestrator(busy_dir, config)
        rss_restarted = rss_bytes(restarted.pid) - rss_none
        await restarted.stop()
    finally:
        for server in (parked, empty, control):
            await server.stop()
    polling_cpu, asks = await _polling(idle)
    window = f"per {idle:g} s idle"
    busy = [used[parked.pid] for used in windows]
    none = [used[empty.pid] for used in windows]
    noise = median_figure(
        "idle_cpu_ratio_control",
        [used[control.pid] / used[empty.pid] for used in windows if used[empty.pid]],
        "x", "noise floor", note="another empty orchestrator / the empty one",
    )  # fmt: skip
    # Within the noise floor: no further from 1 than two empty servers are from each other
    # in the same windows (or 5%, if they happened to agree more closely than that).
    floor = max(0.05, *(abs(sample - 1) for sample in noise.samples))
    ratio = median_figure(
        "idle_cpu_ratio", [b / n if n else float("inf") for b, n in zip(busy, none, strict=True)],
        "x", f"within the noise floor (<= {1 + floor:.2f})",
        note=f"median of {WINDOWS} windows of {idle:g} s", at_most=1 + floor,
    )  # fmt: skip
    return [
        median_figure(f"idle_cpu_pending_{tasks}", busy, "s", window),
        median_figure("idle_cpu_pending_none", none, "s", window),
        ratio,
        noise,
        Figure(
            f"baseline_polling_cpu_{POLLED_JOBS}_jobs",
            round(polling_cpu, 3),
            "s",
            window,
            None,
            note=f"{asks:,} status requests; scales with the jobs held",
        ),
        Figure(
            f"rss_pending_{tasks}_minus_none",
            round(rss_parked / MIB, 1),
            "MiB",
            "<= 50 MiB",
            rss_parked <= 50 * MIB,
            note="same process, before and after parking",
        ),
        Figure(
            f"rss_pending_{tasks}_after_restart",
            round(rss_restarted / MIB, 1),
            "MiB",
            "<= 50 MiB",
            rss_restarted <= 50 * MIB,
            note="restarted on the same database",
        ),
    ]


async def _polling(seconds: float) -> tuple[float, int]:
    """CPU seconds of the polling baseline holding POLLED_JOBS jobs, and its request count."""
    service = await start_module("bench.fake_service", "--delay", "1e9")
    try:
        command = [
            sys.executable, "-m", "bench.baselines.polling", service.url,
            "--hold", str(POLLED_JOBS), "--seconds", str(seconds),
        ]  # fmt: skip
        process = await asyncio.create_subprocess_exec(
            *pinned(command, SERVER_CORE), cwd=ROOT, stdout=asyncio.subprocess.PIPE
        )
        out, _ = await process.communicate()
    finally:
        await service.stop()
    result = json.loads(out)
    return float(result["cpu"]), int(result["asks"])
