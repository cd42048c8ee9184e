"""Benchmarks: the real server, a fake service and load generators on loopback.

    python -m bench.run            # make bench: N up to 10,000; 100,000 tasks waiting
    python -m bench.run --quick    # make bench-quick: N up to 1,000, 10,000 waiting; ~3 min

Prints a table (figure, median, spread over repeats, goal, met or MISSED) and writes
bench/results.json and docs/benchmarks.md (a quick run: bench/results-quick.json only). Every figure that is compared is compared with
a baseline measured in this same run: the polling loops in bench/baselines/ against the
same fake service, and a bare Starlette endpoint for callback ingest. The orchestrator
runs on core 0; the fake service, wrk and this driver on core 1 (taskset). The PostgreSQL
rows (bench/replicas.py) run one and two replicas on one PostgreSQL and compare them with
this run's SQLite, polling and bare rows; a quick run has their end-to-end rows at
N = 1,000 only, without their callback ingest.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from bench import endtoend, ingest, join, loop_lag, outgoing, replicas, waiting
from bench.baselines import polling
from bench.figures import Figure
from bench.procs import (
    ROOT,
    SERVER_CORE,
    can_pin,
    pin_self,
    pinned,
    start_module,
    start_orchestrator,
)
from orchestrator import __version__

CONFIG = """
[workflows.bench.steps.work]
handler = "bench.handlers:remote"
for_each = "event.items"

[workflows.park.steps.wait]
handler = "bench.handlers:park"
for_each = "event.items"

[workflows.join.steps.a]
handler = "bench.handlers:remote"

[workflows.join.steps.b]
handler = "bench.handlers:remote"
needs = ["a"]
"""


@dataclass(frozen=True)
class Plan:
    sizes: list[int]
    repeats: int
    ingest_tasks: int
    ingest_seconds: float
    join_runs: int
    waiting_tasks: int
    idle_seconds: float
    sequential_items: int
    lag_finished: int
    lag_cancel: int
    outgoing_requests: int
    pg_sizes: list[int]
    pg_ingest_tasks: int  # 0: no PostgreSQL ingest rows (they would take a quick run past 3 min)


QUICK = Plan([10, 100, 1000], 3, 12000, 2.0, 200, 10_000, 10.0, 5, 20_000, 2_000, 1000, [1000], 0)
FULL = Plan(
    [10, 100, 1000, 10000], 3, 30000, 5.0, 500, 100_000, 30.0, 10, 100_000, 10_000, 3000,
    [1000, 10000], 30000,
)  # fmt: skip


async def measure(plan: Plan) -> list[Figure]:
    pin_self()
    figures: list[Figure] = []
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        figures.append(await _calibration())
        service = await start_module("bench.fake_service", "--delay", str(endtoend.DELAY))
        orchestrator = await start_orchestrator(workdir, CONFIG)
        try:
            print("end-to-end runs (remote tasks, service answers after 0.5 s):", flush=True)
            figures += await endtoend.measure(orchestrator, service.url, plan.sizes, plan.repeats)
            figures += await _baselines(service.url, plan.sequential_items)
            print("outgoing client:", flush=True)
            figures += await outgoing.measure(service.url, plan.outgoing_requests, plan.repeats)
            print("callback ingest (wrk):", flush=True)
            figures += await ingest.measure(
                orchestrator, workdir, plan.ingest_tasks, plan.ingest_seconds, plan.repeats
            )
            print("join latency:", flush=True)
            figures += await join.measure(orchestrator.url, plan.join_runs)
            await orchestrator.stop()
            print("PostgreSQL, one replica and two:", flush=True)
            figures += await replicas.measure(
                workdir, CONFIG, service.url, plan.pg_sizes, plan.repeats,
                plan.pg_ingest_tasks, plan.ingest_seconds, figures,
            )  # fmt: skip
        finally:
            await orchestrator.stop()
            await service.stop()
        print("cost of waiting:", flush=True)
        figures += await waiting.measure(
            workdir / "waiting", CONFIG, plan.waiting_tasks, plan.idle_seconds
        )
        print("event-loop lag under bulk work:", flush=True)
        figures += await loop_lag.measure(plan.lag_finished, plan.lag_cancel)
    return figures


async def _calibration() -> Figure:
    """A fixed pure-Python workload on the orchestrator's core: how fast the machine was."""
    command = [sys.executable, "-m", "bench.calibrate"]
    process = await asyncio.create_subprocess_exec(
        *pinned(command, SERVER_CORE), stdout=asyncio.subprocess.PIPE
    )
    out, _ = await process.communicate()
    ms = json.loads(out)["ms"]
    print(f"calibration: {ms:.1f} ms for the fixed workload", flush=True)
    return Figure(
        "calibration", ms, "ms", "machine speed", None,
        note="fixed pure-Python workload (bench/calibrate.py); divide absolute figures by it",
    )  # fmt: skip


async def _baselines(service: str, sequential_items: int) -> list[Figure]:
    print("  the sequential polling loop ...", flush=True)
    wall, _ = await polling.sequential(service, sequential_items)
    return [
        Figure(
            f"baseline_sequential_polling_n{sequential_items}",
            round(wall, 3),
            "s",
            "baseline",
            None,
        ),
        Figure(
            "baseline_sequential_polling_n1000_estimated",
            round(wall / sequential_items * 1000, 1),
            "s",
            "baseline (extrapolated)",
            None,
        ),
    ]


def _versions() -> str:
    wrk = "not installed"
    if shutil.which("wrk"):
        out = subprocess.run(  # noqa: S603 - a fixed command
            [shutil.which("wrk") or "wrk", "-v"], capture_output=True, text=True, check=False
        )
        wrk = (out.stdout + out.stderr).split("\n")[0].split(" [")[0]
    return (
        f"{platform.machine()}, {os.cpu_count()} cores, Linux {platform.release()}, "
        f"Python {platform.python_version()}, orchestrator {__version__}, {wrk}, "
        f"processes pinned: {'yes (taskset)' if can_pin() else 'no'}"
    )


def table(figures: list[Figure]) -> str:
    lines = [f"{'figure':<44} {'median':>12} {'unit':<5} {'spread':<19} {'goal':<30} mark"]
    for f in figures:
        lines.append(
            f"{f.name:<44} {f.value:>12g} {f.unit:<5} {f.spread:<19} {f.goal:<30} {f.mark}"
        )
    return "\n".join(lines)


def report(figures: list[Figure], quick: bool, seconds: float) -> str:
    rows = [
        f"| {f.name} | {f.value:g} {f.unit} | {f.spread} | {f.goal} | {f.mark or '-'} | {f.note} |"
        for f in figures
    ]
    command = f"make bench{'-quick' if quick else ''}"
    analysis = (ROOT / "bench" / "ANALYSIS.md").read_text()
    return "\n".join(
        [
            "# Benchmarks",
            "",
            f"Last run: `{command}` ({seconds:.0f} s) on {platform.node()}: {_versions()}.",
            "Medians of the repeats, spread = min-max. The orchestrator runs on SQLite",
            "(synchronous=FULL, the default), one process, one uvicorn worker, core 0; the",
            "fake service, wrk and the driver on core 1. The `pg_r1_*` and `pg_r2_*` rows run",
            "one and two replicas on one PostgreSQL 15 (fsync and synchronous_commit on):",
            "the layout is in bench/replicas.py, the reading in the last section below.",
            "",
            "| figure | median | spread | goal | | note |",
            "| --- | --- | --- | --- | --- | --- |",
            *rows,
            "",
            analysis,
        ]
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="the smaller plan, about 3 minutes")
    args = parser.parse_args()
    started = time.monotonic()
    figures = asyncio.run(measure(QUICK if args.quick else FULL))
    seconds = time.monotonic() - started
    print()
    print(table(figures))
    missed = [f.name for f in figures if f.met is False]
    print(
        f"\n{len(figures)} figures in {seconds:.0f} s; goals missed: {', '.join(missed) or 'none'}"
    )
    # docs/benchmarks.md and bench/results.json hold the last full run; a quick run
    # leaves them alone and writes its own results file.
    results = ROOT / "bench" / ("results-quick.json" if args.quick else "results.json")
    results.write_text(json.dumps([asdict(f) for f in figures], indent=2) + "\n")
    if not args.quick:
        (ROOT / "docs" / "benchmarks.md").write_text(report(figures, args.quick, seconds))


if __name__ == "__main__":
    main()
