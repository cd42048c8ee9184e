"""Database growth per 10,000 unauthenticated requests, against the real server.

`python -m bench.rejection_flood [--requests N]` starts `orchestrator serve` on a fresh
SQLite file, stops it (so the schema and the first rows exist), measures the file, starts
it again, sends N requests split evenly between an unknown callback token, an unknown
trigger name of 65,000 characters and a forged signature on a real webhook trigger,
stops it (the shutdown flushes the counts still in memory) and measures again. It prints
one JSON object: bytes and history rows before and after, the counts stored, the time.
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

from bench.procs import TOKEN, pin_self, start_orchestrator
from orchestrator.signing import new_secret, sign_headers

SECRET = new_secret()
CONFIG = f"""
[workflows.wf.steps.one]
handler = "bench.handlers:remote"

[triggers.push]
workflow = "wf"
webhook = {{ scheme = "standard", secret = "{SECRET}" }}
"""
CONCURRENCY = 16


def measure(path: Path) -> dict[str, int]:
    """The file's size with the write-ahead log folded in, and its rows that grow."""
    with closing(sqlite3.connect(path)) as db:
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        pages = db.execute("PRAGMA page_count").fetchone()[0]
        size = db.execute("PRAGMA page_size").fetchone()[0]
        history = db.execute("SELECT count(*) FROM history").fetchone()[0]
        counts = db.execute("SELECT count(*), coalesce(sum(count), 0) FROM rejections").fetchone()
    return {
        "bytes": int(pages * size),
        "history_rows": int(history),
        "rejection_rows": int(counts[0]),
        "rejections_counted": int(counts[1]),
    }


async def flood(url: str, requests: int) -> dict[str, int]:
    body = b'{"status": "succeeded"}'
    forged = sign_headers(new_secret(), body)
    kinds = [
        ("/callbacks/not-a-token", forged),
        ("/hooks/" + "n" * 65_000, {}),
        ("/hooks/push", forged),
    ]
    statuses: dict[str, int] = {}
    queue = [kinds[n % len(kinds)] for n in range(requests)]

    async def worker(http: httpx.AsyncClient) -> None:
        while queue:
            path, headers = queue.pop()
            response = await http.post(path, content=body, headers=headers)
            statuses[str(response.status_code)] = statuses.get(str(response.status_code), 0) + 1

    limits = httpx.Limits(max_connections=CONCURRENCY)
    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=30) as http:
        await asyncio.gather(*(worker(http) for _ in range(CONCURRENCY)))
    return statuses


async def main(requests: int) -> dict[str, Any]:
    pin_self()
    with tempfile.TemporaryDirectory(prefix="rejection-flood-") as tmp:
        workdir = Path(tmp)
        server = await start_orchestrator(workdir, CONFIG)
        await server.stop()
        before = measure(workdir / "bench.db")
        server = await start_orchestrator(workdir, CONFIG)
        started = time.monotonic()
        statuses = await flood(server.url, requests)
        seconds = time.monotonic() - started
        async with httpx.AsyncClient(base_url=server.url) as http:
            admin = {"Authorization": f"Bearer {TOKEN}"}
            listed = (await http.get("/admin/rejections", headers=admin)).json()
        await server.stop()
        after = measure(workdir / "bench.db")
    return {
        "requests": requests,
        "statuses": statuses,
        "seconds": round(seconds, 2),
        "before": before,
        "after": after,
        "grown_bytes": after["bytes"] - before["bytes"],
        "admin_totals": listed["totals"],
    }


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=10_000)
    arguments = parser.parse_args()
    json.dump(asyncio.run(main(arguments.requests)), sys.stdout, indent=2)
    sys.stdout.write("\n")
