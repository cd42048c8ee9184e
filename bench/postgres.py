"""The benchmarks' PostgreSQL 15: a throwaway cluster (tests/pg_server.py), a fresh database
per scenario, pinned to chosen cores, its CPU read from /proc.

Unlike the tests' cluster it keeps PostgreSQL's durable defaults (fsync=on,
synchronous_commit=on, full_page_writes=on): every acknowledged commit waits for its WAL
flush, as SQLite's synchronous=FULL waits for its fsync, on the same filesystem (the
temporary directory), so the two stores are compared at the same durability.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import asyncpg

from bench.procs import can_pin, cpu_seconds_precise
from tests.pg_server import PostgresServer, PostgresUnavailable

SETTINGS = {
    "listen_addresses": "127.0.0.1",
    "fsync": "on",
    "synchronous_commit": "on",
    "full_page_writes": "on",
    "max_connections": "100",
}
DURABILITY = "fsync=on, synchronous_commit=on (PostgreSQL's defaults)"

__all__ = ["DURABILITY", "BenchPostgres", "PostgresUnavailable"]


@dataclass
class BenchPostgres:
    server: PostgresServer

    @classmethod
    def start(cls) -> BenchPostgres:
        """initdb and start; PostgresUnavailable (with the reason) where it cannot run."""
        return cls(PostgresServer.start_new(SETTINGS))

    def stop(self) -> None:
        self.server.remove()

    async def fresh_database(self, prefix: str) -> str:
        """The URL of a new, empty database (the orchestrator migrates it as it starts)."""
        name = self.server.new_name(prefix)
        conn = await asyncpg.connect(self.server.url())
        try:
            await conn.execute(f'CREATE DATABASE "{name}"')
        finally:
            await conn.close()
        return self.server.url(name)

    def processes(self) -> list[int]:
        """The postmaster and its children (backends, WAL writer, checkpointer, ...)."""
        main = self.server.postmaster_pid()
        pids = [main]
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except (FileNotFoundError, ProcessLookupError):
                continue  # a process that ended meanwhile
            if int(fields[1]) == main:
                pids.append(int(entry.name))
        return pids

    def cpu_seconds(self) -> float:
        """CPU seconds its processes alive now have used (a backend that exited since is not
        counted; the orchestrator's pool keeps its connections, so few do)."""
        total = 0.0
        for pid in self.processes():
            try:
                total += cpu_seconds_precise(pid)
            except (FileNotFoundError, ProcessLookupError):
                continue
        return total

    def pin(self, cores: set[int] | None) -> None:
        """Run the server on these cores (None: on any); backends forked later inherit it
        from the postmaster."""
        if not can_pin():
            return
        allowed = cores if cores is not None else set(range(os.cpu_count() or 1))
        for pid in self.processes():
            try:
                os.sched_setaffinity(pid, allowed)
            except (ProcessLookupError, PermissionError):
                continue
