"""Event-loop lag while the engine does bulk work: a retention sweep and a large cancel.

In one process on the orchestrator's core: an engine on SQLite whose file holds FINISHED
tasks of runs that finished long ago (with their history), and a running run of CANCEL
tasks awaiting callbacks. A timer that asks to fire every 5 ms records how late it fires,
first while idle (the floor), then while the retention sweep deletes every old row and the
run is cancelled, both at once. The loop must keep serving callbacks and timers meanwhile:
the goal is lag p99 <= 20 ms.

    python -m bench.loop_lag --finished 100000 --cancel 10000     # prints JSON
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sqlite3
import sys
import tempfile
import time
from contextlib import closing
from pathlib import Path
from typing import Any

import httpx

from bench.figures import Figure, percentile
from bench.procs import SERVER_CORE, pinned
from orchestrator.engine import Engine
from orchestrator.ids import new_id
from orchestrator.logs import configure_logging
from orchestrator.model import WorkflowSpec
from orchestrator.retention import Retention, RetentionJob
from orchestrator.serve import event_loop_factory
from orchestrator.store import SqliteStore

TICK = 0.005
DAY = 86400.0
RUN_SIZE = 1000
PARK = WorkflowSpec.model_validate(
    {"steps": {"wait": {"handler": "bench.handlers:park", "for_each": "event.items"}}}
)


def seed_finished(path: Path, tasks: int, now: float) -> None:
    """Runs of RUN_SIZE succeeded tasks that finished 400 days ago, two history rows each."""
    at = now - 400 * DAY
    with closing(sqlite3.connect(path)) as db, db:
        for number in range(tasks // RUN_SIZE):
            event_id, run_id = new_id("evt", at + number), new_id("run", at + number)
            db.execute(
                "INSERT INTO events (id, trigger, workflow, received_at, payload, dedup_key)"
                " VALUES (?, 'manual:park', 'park', ?, '{}', NULL)",
                (event_id, at),
            )
            db.execute(
                "INSERT INTO runs (id, workflow, event_id, status, created_at, finished_at, spec)"
                " VALUES (?, 'park', ?, 'succeeded', ?, ?, ?)",
                (run_id, event_id, at, at + 1, PARK.model_dump_json()),
            )
            rows = [
                (new_id("tsk", at), run_id, "wait", str(i), "null", "succeeded", 1, at, at + 1)
                for i in range(RUN_SIZE)
            ]
            db.executemany(
                "INSERT INTO tasks (id, run_id, step, item_key, item, state, attempt,"
                " started_at, finished_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                rows,
            )
            history = [
                (at, kind, run_id, row[0], "wait", '{"attempt":1}')
                for row in rows
                for kind in ("task_dispatched", "task_succeeded")
            ]
            db.executemany(
                "INSERT INTO history (at, type, run_id, task_id, step, data)"
                " VALUES (?, ?, ?, ?, ?, ?)",
                history,
            )


class LagProbe:
    """A timer asking to fire every TICK; how late each firing was, in seconds."""

    def __init__(self) -> None:
        self.late: list[float] = []
        self._handle: asyncio.TimerHandle | None = None
        self._due = 0.0

    def start(self) -> None:
        self._arm()

    def _arm(self) -> None:
        # Lateness is read off perf_counter: the loop's own clock may tick in milliseconds.
        self._due = time.perf_counter() + TICK
        self._handle = asyncio.get_running_loop().call_later(TICK, self._fired)

    def _fired(self) -> None:
        self.late.append(max(0.0, time.perf_counter() - self._due))
        self._arm()

    def stop(self) -> list[float]:
        if self._handle is not None:
            self._handle.cancel()
        late, self.late = self.late, []
        return late


async def awaiting(engine: Engine, items: int) -> str:
    with engine.bus.subscribe(maxsize=items * 4) as subscription:
        fired = await engine.fire("park", {"items": list(range(items))})
        waiting = 0
        async with asyncio.timeout(300):
            async for entry in subscription:
                waiting += entry.type == "task_awaiting_callback"
                if waiting == items:
                    break
    assert fired.run_id is not None
    return fired.run_id


async def scenario(finished: int, cancel: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "lag.db"
        store = SqliteStore(path)
        await store.open()
        await store.close()
        seed_finished(path, finished, time.time())
        store = SqliteStore(path)
        await store.open()
        async with httpx.AsyncClient() as http:
            engine = Engine(store, {"park": PARK}, http=http)
            try:
                await engine.recover()
                run_id = await awaiting(engine, cancel)
                probe = LagProbe()
                probe.start()
                await asyncio.sleep(1.0)
                idle = probe.stop()
                probe.start()
                started = time.perf_counter()
                job = RetentionJob(engine, Retention(30 * DAY, 365 * DAY))
                sweep, cancelled = await asyncio.gather(job.sweep(), engine.cancel_run(run_id))
                busy_seconds = time.perf_counter() - started
                busy = probe.stop()
            finally:
                await engine.close()
                await store.close()
    return {
        "idle": idle,
        "busy": busy,
        "seconds": busy_seconds,
        "swept": [sweep.history, sweep.payloads, sweep.runs],
        "cancelled": cancelled,
    }


async def measure(finished: int, cancel: int) -> list[Figure]:
    """The scenario in its own process, pinned where the orchestrator runs."""
    command = [
        sys.executable, "-m", "bench.loop_lag", "--finished", str(finished), "--cancel", str(cancel),
    ]  # fmt: skip
    process = await asyncio.create_subprocess_exec(
        *pinned(command, SERVER_CORE), stdout=asyncio.subprocess.PIPE
    )
    out, _ = await process.communicate()
    result = json.loads(out)
    busy = [late * 1000 for late in result["busy"]]
    idle = [late * 1000 for late in result["idle"]]
    history, _, runs = result["swept"]
    note = (
        f"sweep of {finished:,} finished tasks ({history:,} history rows, {runs} runs) and a"
        f" cancel of {cancel:,} tasks at once, {result['seconds']:.1f} s"
    )
    print(f"  {note}; lag p99 {percentile(busy, 99):.1f} ms, max {max(busy):.1f} ms", flush=True)
    p99 = percentile(busy, 99)
    return [
        Figure("loop_lag_p99", round(p99, 2), "ms", "<= 20 ms", p99 <= 20.0, note=note),
        Figure("loop_lag_max", round(max(busy), 2), "ms", "-", None, note=note),
        Figure("loop_lag_p99_idle", round(percentile(idle, 99), 2), "ms", "floor", None),
        Figure("bulk_work_seconds", round(result["seconds"], 2), "s", "-", None, note="absolute"),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--finished", type=int, default=100_000)
    parser.add_argument("--cancel", type=int, default=10_000)
    args = parser.parse_args()
    configure_logging("warning", "json")  # stdout is the result
    with asyncio.Runner(loop_factory=event_loop_factory()) as runner:
        result = runner.run(scenario(args.finished, args.cancel))
    print(json.dumps(result))


if __name__ == "__main__":
    main()
