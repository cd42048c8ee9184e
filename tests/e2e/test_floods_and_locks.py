"""The real server under a flood of unauthenticated requests and behind a held write lock.

The server is `orchestrator serve` in a subprocess; the lock is held by a sqlite3
connection of this process in BEGIN IMMEDIATE, as another process (a backup, a shell)
would hold it. Time limits have a second or more of slack.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import Callable
from contextlib import closing
from pathlib import Path

import httpx
import pytest

from orchestrator.signing import new_secret, sign_headers
from tests.e2e.conftest import TOKEN, Orchestrator, Research
from tests.e2e.test_callbacks_e2e import RESEARCH
from tests.e2e.test_run_end_to_end import follow_to_end

pytestmark = pytest.mark.e2e

BOUND = 2.0  # the default store_busy_timeout
SLACK = 1.5
HOOK_SECRET = new_secret()
HOOKED = (
    RESEARCH
    + f"""
[triggers.push]
workflow = "research"
webhook = {{ scheme = "standard", secret = "{HOOK_SECRET}" }}
"""
)


def database_bytes(path: Path) -> int:
    """The file's size once its write-ahead log is folded in (the server has stopped)."""
    with closing(sqlite3.connect(path)) as db:
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        pages = db.execute("PRAGMA page_count").fetchone()[0]
        size = db.execute("PRAGMA page_size").fetchone()[0]
    return int(pages * size)


def history_rows(path: Path) -> int:
    with closing(sqlite3.connect(path)) as db:
        return int(db.execute("SELECT count(*) FROM history").fetchone()[0])


async def test_a_flood_of_unauthenticated_requests_barely_grows_the_database(
    tmp_path: Path, orchestrators: Callable[..., Orchestrator]
) -> None:
    """900 requests with unknown tokens, 65,000-character trigger names and forged
    signatures add no history row and at most a few pages, and are all counted (the figure
    for 10,000 is bench/rejection_flood.py's)."""
    config = tmp_path / "hooked.toml"
    config.write_text(HOOKED)
    database = tmp_path / "flood.db"
    server = await orchestrators(config, database).start()
    assert await server.stop()
    before, rows = database_bytes(database), history_rows(database)

    server = await orchestrators(config, database).start()
    body = b'{"x": 1}'
    forged = sign_headers(new_secret(), body)
    targets = [
        ("/callbacks/not-a-token", forged),
        ("/hooks/" + "n" * 65_000, {}),
        ("/hooks/push", forged),
    ]
    limits = httpx.Limits(max_connections=8)
    async with httpx.AsyncClient(base_url=server.url, limits=limits, timeout=30) as http:
        for _ in range(30):
            answers = await asyncio.gather(
                *(http.post(path, content=body, headers=headers)
                  for path, headers in targets for _ in range(10))
            )  # fmt: skip
            assert {a.status_code for a in answers} == {401, 404}
        admin = {"Authorization": f"Bearer {TOKEN}"}
        counts = (await http.get("/admin/rejections", headers=admin)).json()
    assert sum(total["count"] for total in counts["totals"]) == 900
    assert await server.stop()  # the shutdown flushes what is still counted in memory

    assert history_rows(database) == rows
    assert database_bytes(database) - before <= 4 * 4096


async def test_behind_a_held_write_lock_rejections_are_fast_writes_503_and_readiness_honest(
    tmp_path: Path, research: Research, orchestrators: Callable[..., Orchestrator]
) -> None:
    """While another connection holds the lock: /readyz 503, a forged callback 401 at once,
    the genuine one 503 with Retry-After within the bound; once released, /readyz 200 and
    the genuine callback, resent, is accepted and the run finishes."""
    research.service.delay = (600.0, 600.0)  # the service never calls back by itself here
    config = tmp_path / "research.toml"
    config.write_text(RESEARCH)
    server = await orchestrators(config).start()
    async with server.client() as client:
        fired = await client.fire("research", {"items": [0], "service": research.url})
        async with asyncio.timeout(20):
            async for entry in client.stream(after=0, run_id=fired["run_id"]):
                if entry.type == "task_awaiting_callback":
                    break
    (job,) = research.service.jobs.values()
    genuine = sign_headers(job.secret, job.body, message_id="genuine")
    forged = sign_headers(new_secret(), job.body, message_id="forged")

    async with httpx.AsyncClient(base_url=server.url, timeout=30) as http:
        with closing(sqlite3.connect(server.database, isolation_level=None)) as other:
            other.execute("BEGIN IMMEDIATE")
            started = time.monotonic()
            ready = await http.get("/readyz")
            probed = time.monotonic() - started
            started = time.monotonic()
            rejected = await http.post(job.callback_url, content=job.body, headers=forged)
            forged_seconds = time.monotonic() - started
            started = time.monotonic()
            busy = await http.post(job.callback_url, content=job.body, headers=genuine)
            busy_seconds = time.monotonic() - started
            other.execute("ROLLBACK")
        ready_again = await http.get("/readyz")
        accepted = await http.post(job.callback_url, content=job.body, headers=genuine)

    assert (ready.status_code, ready.json()["status"]) == (503, "store_unavailable")
    assert probed < 1.0 + SLACK
    assert (rejected.status_code, rejected.json()["error"]) == (401, "bad_signature")
    assert forged_seconds < 1.0, f"the forged callback waited {forged_seconds:.2f} s"
    assert (busy.status_code, busy.json()["error"]) == (503, "store_unavailable")
    assert busy.headers["retry-after"] == "1"
    assert busy_seconds < BOUND + SLACK
    assert ready_again.status_code == 200
    assert (accepted.status_code, accepted.json()["status"]) == (200, "accepted")
    history = await follow_to_end(server, fired["run_id"])
    assert history[-1].type == "run_succeeded"
    assert await server.stop()
