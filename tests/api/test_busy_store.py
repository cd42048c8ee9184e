"""The app while another connection holds the SQLite write lock: answers stay fast and honest.

A second sqlite3 connection in BEGIN IMMEDIATE stands for another process writing. What
needs only reads (token lookup, signature) answers 401/404 at once; a callback that needs
a write answers 503 with Retry-After within `store_busy_timeout`; /readyz says 503 while
the store cannot write and 200 once it can. Time limits have a second or more of slack:
they tell "at once" from "after the bound" and "after the bound" from "never".
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Awaitable, Iterator
from contextlib import closing, contextmanager
from pathlib import Path
from urllib.parse import urlsplit

import httpx
from starlette.applications import Starlette

from orchestrator.settings import Settings
from orchestrator.signing import new_secret
from orchestrator.states import TaskState
from tests.api.conftest import engine_of
from tests.api.test_callbacks import GOOD, call_back, handed_off, signed
from tests.engine.conftest import H

BOUND = 2.0  # the default store_busy_timeout
SLACK = 1.5
SECRET = new_secret()


def settings_for(tmp_path: Path) -> Settings:
    step = {"handler": H + "hand_off", "for_each": "event.items"}
    return Settings.model_validate(
        {
            "database_url": f"sqlite:///{tmp_path / 'busy.db'}",
            "admin_token": "t",
            "workflows": {"wf": {"steps": {"wait": step}}},
            "triggers": {
                "push": {"workflow": "wf", "webhook": {"scheme": "standard", "secret": SECRET}}
            },
        }
    )


@contextmanager
def write_locked(app: Starlette) -> Iterator[sqlite3.Connection]:
    """Another connection holds the database's write lock for the block."""
    path = engine_of(app).store.path  # type: ignore[attr-defined]
    with closing(sqlite3.connect(path, isolation_level=None)) as other:
        other.execute("BEGIN IMMEDIATE")
        try:
            yield other
        finally:
            other.execute("ROLLBACK")


async def timed(request: Awaitable[httpx.Response]) -> tuple[httpx.Response, float]:
    """The answer, and how long it took to come."""
    started = time.monotonic()
    response = await request
    return response, time.monotonic() - started


async def test_reads_only_rejections_answer_at_once_while_the_lock_is_held(
    app: Starlette, client: httpx.AsyncClient
) -> None:
    """A forged callback for a real task (401), an unknown token (404), an unknown trigger
    (404) and a forged hook (401) are answered well under a second, lock or no lock."""
    _, (ctx,) = await handed_off(app, "wf")
    path = urlsplit(ctx.callback_url).path
    raw, forged = signed(GOOD, new_secret())
    with write_locked(app):
        answers = [
            await timed(client.post(path, content=raw, headers=forged)),
            await timed(client.post("/callbacks/unknown", content=raw, headers=forged)),
            await timed(client.post("/hooks/nope", content=raw)),
            await timed(client.post("/hooks/push", content=raw, headers=forged)),
        ]
    assert [(r.status_code, r.json()["error"]) for r, _ in answers] == [
        (401, "bad_signature"),
        (404, "unknown_token"),
        (404, "unknown_trigger"),
        (401, "bad_signature"),
    ]
    slowest = max(seconds for _, seconds in answers)
    assert slowest < BOUND / 2, f"a rejection waited {slowest:.2f} s for the write lock"


async def test_a_valid_callback_is_503_within_the_bound_and_accepted_when_resent(
    app: Starlette, client: httpx.AsyncClient
) -> None:
    """Behind the lock a genuine callback answers 503 with Retry-After within the bound and
    changes nothing; resent after the lock is gone, it is accepted."""
    run_id, (ctx,) = await handed_off(app, "wf")
    with write_locked(app):
        busy, seconds = await timed(call_back(client, ctx))
    assert (busy.status_code, busy.json()["error"]) == (503, "store_unavailable")
    assert busy.headers["retry-after"] == "1"
    assert seconds < BOUND + SLACK
    (task,) = await engine_of(app).store.tasks_of_run(run_id)
    assert task.state is TaskState.DISPATCHED

    again = await call_back(client, ctx)
    assert (again.status_code, again.json()["status"]) == (200, "accepted")
    (task,) = await engine_of(app).store.tasks_of_run(run_id)
    assert task.state is TaskState.SUCCEEDED


async def test_readyz_is_503_while_the_store_cannot_write_and_200_once_it_can(
    app: Starlette, client: httpx.AsyncClient
) -> None:
    """Readiness probes a write: 503 naming the problem while the lock is held, within the
    probe's bound, and 200 as soon as the lock is released."""
    with write_locked(app):
        held, seconds = await timed(client.get("/readyz"))
    assert held.status_code == 503
    assert held.json()["status"] == "store_unavailable"
    assert "write" in held.json()["detail"]
    assert held.headers["retry-after"] == "1"
    assert seconds < 1.0 + SLACK
    ready = await client.get("/readyz")
    assert (ready.status_code, ready.json()) == (200, {"status": "ready"})
