"""The PostgreSQL rows: end-to-end runs and callback ingest on one PostgreSQL 15, with one
replica of `orchestrator serve` and with two, beside the SQLite rows and the polling
baseline measured earlier in the same run.

Where each process runs on this machine's two cores:

* one replica (`pg_r1_*`): replica A on core 0, alone, as the SQLite orchestrator is;
  PostgreSQL on core 1, as a database on a host of its own would be, but sharing that core
  with the fake service, wrk and this driver (the load, as for SQLite). Every statement is
  then a round trip between two cores, as it is to a database over a network (only much
  faster); on A's core instead, each round trip would also be two context switches on a
  core that A needs.
* two replicas (`pg_r2_*`): the same, and replica B on core 1. Nothing else moves: B gets
  what PostgreSQL and the load leave of core 1.

Both replicas share the callback key (bench/procs.py), so a callback token is valid on
either: the fake service sends the callbacks to A and B in turn (POST /spread), as a load
balancer would, and wrk replays half of the ingest callbacks at each. A run is fired on
A, whose handlers dispatch its fan-out; B takes its half of the callbacks. Each layout has
a fresh database per scenario, and their runs alternate, so the second replica's speed-up
is the median of ratios of neighbouring runs.
"""

from __future__ import annotations

import asyncio
import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import httpx

from bench.endtoend import DELAY, one_run, overhead_goal
from bench.figures import Figure, median_figure
from bench.ingest import CONNECTIONS, run_wrk
from bench.parking import park, write_requests
from bench.postgres import DURABILITY, BenchPostgres, PostgresUnavailable
from bench.procs import (
    LOAD_CORE,
    SERVER_CORE,
    TOKEN,
    Server,
    cpu_seconds_precise,
    start_orchestrator,
)
from orchestrator.client import AdminClient

REPLICA_CORES = (SERVER_CORE, LOAD_CORE)  # A alone, B beside PostgreSQL and the load
POSTGRES_CORE = LOAD_CORE
# The longest a run or a parking may take before the benchmark gives up on it: well past
# what N = 10,000 takes here (~25 s), so only a stuck run reaches it.
PATIENCE_BASE, PATIENCE_PER_TASK = 60.0, 0.02
ONE = "replica A on core 0; PostgreSQL on core 1 with the load"
TWO = (
    "2 cores: A on core 0; B on core 1 with PostgreSQL, the fake service, wrk and the "
    "driver, all competing"
)


@dataclass
class Layout:
    """The replicas of one layout, all on one database; the first is fired at."""

    prefix: str
    replicas: list[Server]

    @property
    def front(self) -> Server:
        return self.replicas[0]

    @property
    def note(self) -> str:
        return ONE if len(self.replicas) == 1 else TWO

    def cpu(self) -> float:
        return sum(cpu_seconds_precise(server.pid) for server in self.replicas)

    async def stop(self) -> None:
        for server in self.replicas:
            await server.stop()


@dataclass(frozen=True)
class RunSample:
    overhead: float
    fan_out: float
    cpu: float  # the replicas' CPU seconds per task
    postgres_cpu: float  # PostgreSQL's CPU seconds per task
    elsewhere: float  # share of the callbacks delivered to a replica other than A


@dataclass(frozen=True)
class BurstSample:
    rate: float
    exhausted: bool
    p50_ms: float
    p99_ms: float
    server_cpu: float  # the replicas' CPU, as a share of one core
    postgres_cpu: float


async def measure(
    workdir: Path,
    config: str,
    service: str,
    sizes: list[int],
    repeats: int,
    ingest_tasks: int,
    ingest_seconds: float,
    sqlite: Sequence[Figure],
) -> list[Figure]:
    """The PostgreSQL rows, each compared with `sqlite` (this run's SQLite, polling and bare
    rows); no ingest rows if `ingest_tasks` is 0 or this run has no SQLite ingest row."""
    try:
        pg = await asyncio.to_thread(BenchPostgres.start)
    except PostgresUnavailable as error:
        print(f"  PostgreSQL cannot start here ({error}): no PostgreSQL rows", flush=True)
        return [Figure("postgres", 0, "", f"unavailable: {error}", None)]
    try:
        pg.pin({POSTGRES_CORE})
        print(f"  PostgreSQL 15 on 127.0.0.1:{pg.server.port}, {DURABILITY}", flush=True)
        layouts: list[Layout] = []
        try:
            for count in (1, 2):
                await _start(pg, workdir, config, "e2e", count, layouts)
            figures = await _endtoend(pg, layouts, service, sizes, repeats, sqlite)
        finally:
            for layout in layouts:
                await layout.stop()
        if not ingest_tasks:
            print("  callback ingest on PostgreSQL: in the full run only", flush=True)
        elif any(f.name == "callback_ingest" and f.unit == "/s" and f.value for f in sqlite):
            layouts = []
            try:
                for count in (1, 2):
                    await _start(pg, workdir, config, "ingest", count, layouts)
                figures += await _ingest(pg, layouts, workdir, ingest_tasks, ingest_seconds,
                                         repeats, sqlite)  # fmt: skip
            finally:
                for layout in layouts:
                    await layout.stop()
    finally:
        await asyncio.to_thread(pg.stop)
    return figures


async def _start(
    pg: BenchPostgres, workdir: Path, config: str, kind: str, count: int, into: list[Layout]
) -> None:
    """`count` replicas on a fresh database, A on core 0 and B on core 1, added to `into`
    as they start (so that whatever started is stopped, should one fail)."""
    url = await pg.fresh_database(f"bench_{kind}_r{count}")
    layout = Layout(f"pg_r{count}", [])
    into.append(layout)
    for name, core in zip("ab"[:count], REPLICA_CORES[:count], strict=True):
        directory = workdir / f"pg-{kind}-r{count}-{name}"
        directory.mkdir()
        layout.replicas.append(
            await start_orchestrator(
                directory, config, core=core, database_url=url, replica_id=f"replica-{name}"
            )
        )


# -- end-to-end -----------------------------------------------------------------------------


async def _endtoend(
    pg: BenchPostgres,
    layouts: list[Layout],
    service: str,
    sizes: list[int],
    repeats: int,
    sqlite: Sequence[Figure],
) -> list[Figure]:
    print("  end-to-end runs on PostgreSQL (remote tasks, service answers after 0.5 s):")
    figures: list[Figure] = []
    async with httpx.AsyncClient() as http:
        for layout in layouts:
            await _run(http, pg, layout, service, 10)  # warm up connections and caches
        for n in sizes:
            samples: dict[str, list[RunSample]] = {layout.prefix: [] for layout in layouts}
            for _ in range(repeats):
                for layout in layouts:
                    samples[layout.prefix].append(await _run(http, pg, layout, service, n))
            for layout in layouts:
                figures += _run_figures(layout, n, samples[layout.prefix], sqlite)
            one, two = (samples[layout.prefix] for layout in layouts)
            to_b = statistics.median(s.elsewhere for s in two)
            print(f"  pg_r2 N={n:<6} {to_b:.0%} of the callbacks went to replica B", flush=True)
            figures.append(
                median_figure(
                    f"pg_r2_speedup_n{n}",
                    [a.overhead / b.overhead for a, b in zip(one, two, strict=True)],
                    "x", "-",
                    f"informational: pg_r1 / pg_r2 overhead, neighbouring runs; {TWO}; "
                    f"{to_b:.0%} of callbacks to B",
                )
            )  # fmt: skip
        if 1000 in sizes and 10000 in sizes:
            figures.append(_growth(figures))
    return figures


async def _run(
    http: httpx.AsyncClient, pg: BenchPostgres, layout: Layout, service: str, n: int
) -> RunSample:
    origins = [server.url for server in layout.replicas] if len(layout.replicas) > 1 else []
    await http.post(f"{service}/spread", json={"origins": origins})
    cpu, postgres_cpu = layout.cpu(), pg.cpu_seconds()
    async with asyncio.timeout(_patience(n)):
        result = await one_run(layout.front.url, service, n)
    cpu, postgres_cpu = layout.cpu() - cpu, pg.cpu_seconds() - postgres_cpu
    delivered: dict[str, int] = (await http.get(f"{service}/stats")).json()["delivered"]
    front = delivered.get(layout.front.url.rstrip("/"), 0)
    total = sum(delivered.values()) or 1
    return RunSample(
        overhead=result["wall"] - DELAY,
        fan_out=result["fan_out"],
        cpu=cpu / n,
        postgres_cpu=postgres_cpu / n,
        elsewhere=(total - front) / total,
    )


def _run_figures(
    layout: Layout, n: int, samples: list[RunSample], sqlite: Sequence[Figure]
) -> list[Figure]:
    p, note = layout.prefix, layout.note
    alone = len(layout.replicas) == 1
    overhead = [s.overhead for s in samples]
    cpu = [s.cpu * 1000 for s in samples]
    postgres_cpu = [s.postgres_cpu * 1000 for s in samples]
    total_cpu = [a + b for a, b in zip(cpu, postgres_cpu, strict=True)]
    print(
        f"  {p} N={n:<6} overhead {min(overhead):.2f}-{max(overhead):.2f}s"
        f"  CPU/task replicas {statistics.median(cpu):.2f} ms"
        f" + PostgreSQL {statistics.median(postgres_cpu):.2f} ms",
        flush=True,
    )
    figures = [
        median_figure(f"{p}_fan_out_n{n}", [s.fan_out for s in samples], "s",
                      note=f"absolute; {note}"),
        median_figure(f"{p}_overhead_n{n}", overhead, "s", note=f"wall - 0.5 s; absolute; {note}"),
        median_figure(f"{p}_cpu_per_task_n{n}", cpu, "ms",
                      note=f"the replicas' CPU / N; absolute; {note}"),
        median_figure(f"{p}_postgres_cpu_per_task_n{n}", postgres_cpu, "ms",
                      note=f"PostgreSQL's CPU / N; absolute; {note}"),
    ]  # fmt: skip
    polling = _value(sqlite, f"baseline_polling_overhead_n{n}")
    polling_cpu = _value(sqlite, f"baseline_polling_cpu_per_task_n{n}")
    if polling and polling_cpu:
        limit = overhead_goal(n)
        versus = "against the median polling run of the SQLite rows (same run)"
        figures += [
            median_figure(
                f"{p}_overhead_vs_polling_n{n}", [o / polling for o in overhead], "x",
                f"<= {limit:g} x" if alone else "-",
                versus if alone else f"informational: {note}",
                at_most=limit if alone else None,
            ),
            median_figure(
                f"{p}_cpu_per_task_vs_polling_n{n}", [c / polling_cpu for c in total_cpu], "x",
                "<= 1 x" if alone else "-",
                f"replicas + PostgreSQL; {versus if alone else 'informational: ' + note}",
                at_most=1.0 if alone else None,
            ),
        ]  # fmt: skip
    sqlite_overhead = _value(sqlite, f"overhead_n{n}")
    if sqlite_overhead:
        figures.append(
            median_figure(
                f"{p}_overhead_vs_sqlite_n{n}", [o / sqlite_overhead for o in overhead], "x",
                "-", f"informational: against overhead_n{n} (same run); {note}",
            )
        )  # fmt: skip
    return figures


def _growth(figures: Sequence[Figure]) -> Figure:
    small, large = _value(figures, "pg_r1_overhead_n1000"), _value(figures, "pg_r1_overhead_n10000")
    ratio = (large or 0) / (small or 1)
    return Figure(
        "pg_r1_overhead_n10000_vs_n1000", round(ratio, 2), "x", "<= 10 x (linear, no knee)",
        ratio <= 10.0, note="medians of the same run",
    )  # fmt: skip


# -- callback ingest ------------------------------------------------------------------------


async def _ingest(
    pg: BenchPostgres,
    layouts: list[Layout],
    workdir: Path,
    tasks: int,
    seconds: float,
    repeats: int,
    sqlite: Sequence[Figure],
) -> list[Figure]:
    print("  callback ingest on PostgreSQL (wrk, 64 connections over the replicas):")
    samples: dict[str, list[BurstSample]] = {layout.prefix: [] for layout in layouts}
    for repeat in range(repeats):
        for layout in layouts:
            burst = await _burst(pg, layout, workdir / f"{layout.prefix}-{repeat}", tasks, seconds)
            samples[layout.prefix].append(burst)
            print(
                f"  {layout.prefix} ingest: {burst.rate:,.0f}/s, replicas "
                f"{burst.server_cpu:.0%} + PostgreSQL {burst.postgres_cpu:.0%} of a core"
                f"{' (all sent: a lower bound)' if burst.exhausted else ''}",
                flush=True,
            )
    figures: list[Figure] = []
    for layout in layouts:
        figures += _burst_figures(layout, samples[layout.prefix], sqlite)
    one, two = (samples[layout.prefix] for layout in layouts)
    figures.append(
        median_figure(
            "pg_r2_ingest_speedup", [b.rate / a.rate for a, b in zip(one, two, strict=True)],
            "x", "-", f"informational: pg_r2 / pg_r1 ingest, neighbouring bursts; {TWO}",
        )
    )  # fmt: skip
    return figures


async def _burst(
    pg: BenchPostgres, layout: Layout, directory: Path, tasks: int, seconds: float
) -> BurstSample:
    """Park `tasks` tasks on A, replay their callbacks spread over the replicas (one wrk per
    replica, the 64 connections shared out), check that each answer was persisted."""
    async with asyncio.timeout(_patience(tasks)):
        run_id, task_ids, _ = await park(layout.front.url, tasks)
    count = len(layout.replicas)
    files = _split(task_ids, count, directory)
    cpu, postgres_cpu = layout.cpu(), pg.cpu_seconds()
    results = await asyncio.gather(
        *(
            run_wrk(server.url, path, seconds, False, CONNECTIONS // count)
            for server, path in zip(layout.replicas, files, strict=True)
        )
    )
    cpu, postgres_cpu = layout.cpu() - cpu, pg.cpu_seconds() - postgres_cpu
    elapsed = max(result["duration_us"] for result in results) / 1e6
    answered = sum(result["answered"] for result in results)
    non_2xx = sum(result["non_2xx"] for result in results)
    async with AdminClient(layout.front.url, TOKEN) as client:
        detail = await client.run(run_id)
        await client.cancel(run_id)  # the callbacks left over are not needed
    done = sum(task["state"] == "succeeded" for task in detail["tasks"])
    if done < answered or non_2xx:
        raise RuntimeError(
            f"{layout.prefix} ingest: {answered} callbacks answered but {done} tasks persisted "
            f"as succeeded; {non_2xx} answers not 2xx"
        )
    return BurstSample(
        rate=answered / elapsed,
        exhausted=all(r["sent"] >= len(task_ids[i::count]) for i, r in enumerate(results)),
        p50_ms=max(result["p50_ms"] for result in results),
        p99_ms=max(result["p99_ms"] for result in results),
        server_cpu=cpu / elapsed,
        postgres_cpu=postgres_cpu / elapsed,
    )


def _patience(tasks: int) -> float:
    return PATIENCE_BASE + PATIENCE_PER_TASK * tasks


def _split(task_ids: list[str], count: int, directory: Path) -> list[Path]:
    """The wrk replay files, one per replica: the callbacks dealt out in turn."""
    directory.mkdir()
    files = []
    for index in range(count):
        path = directory / f"callbacks-{index}.tsv"
        write_requests(task_ids[index::count], path)
        files.append(path)
    return files


def _burst_figures(
    layout: Layout, samples: list[BurstSample], sqlite: Sequence[Figure]
) -> list[Figure]:
    p, note = layout.prefix, layout.note
    alone = len(layout.replicas) == 1
    rates = [s.rate for s in samples]
    bare, ours = _value(sqlite, "bare_endpoint_rate"), _value(sqlite, "callback_ingest")
    wrks = "one wrk, 64 connections" if alone else "a wrk per replica, 32 connections each"
    figures = [
        median_figure(f"{p}_callback_ingest", rates, "/s", note=f"absolute; {wrks}; {note}"),
    ]
    if bare:
        figures.append(
            median_figure(
                f"{p}_callback_ingest_vs_bare", [r / bare * 100 for r in rates], "%",
                ">= 50 %" if alone else "-",
                "against bare_endpoint_rate (same run)" if alone
                else f"informational: against one bare endpoint (same run); {note}",
                at_least=50 if alone else None,
            )
        )  # fmt: skip
    if ours:
        figures.append(
            median_figure(
                f"{p}_callback_ingest_vs_sqlite", [r / ours for r in rates], "x", "-",
                f"informational: against callback_ingest (same run); {note}",
            )
        )  # fmt: skip
    latency = "" if alone else "the slower wrk's"
    figures += [
        median_figure(f"{p}_callback_ingest_latency_p50", [s.p50_ms for s in samples], "ms",
                      note=latency),
        median_figure(f"{p}_callback_ingest_latency_p99", [s.p99_ms for s in samples], "ms",
                      note=latency),
        median_figure(f"{p}_ingest_server_cpu", [s.server_cpu * 100 for s in samples], "%",
                      note=f"the replicas' CPU as a share of one core; {note}"),
        median_figure(f"{p}_ingest_postgres_cpu", [s.postgres_cpu * 100 for s in samples], "%",
                      note=f"PostgreSQL's CPU as a share of one core; {note}"),
    ]  # fmt: skip
    return figures


def _value(figures: Sequence[Figure], name: str) -> float | None:
    """The value of the figure called `name`, if this run has it."""
    return next((f.value for f in figures if f.name == name), None)
