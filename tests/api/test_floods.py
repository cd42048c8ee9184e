"""Floods of unauthenticated requests: counted, not stored, and nothing long echoed back.

Over the real app on a real SQLite file: unknown callback tokens, unknown trigger names of
65,000 characters and forged signatures add no history row, a handful of counts at most,
and show up in /admin/rejections and /metrics.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from contextlib import closing
from pathlib import Path
from urllib.parse import quote

import httpx
from starlette.applications import Starlette

from orchestrator.records import HistoryEntry
from orchestrator.rejections import NAME_SHOWN, Rejections
from orchestrator.retention import Retention, RetentionJob
from orchestrator.settings import Settings
from orchestrator.signing import new_secret, sign_headers
from orchestrator.store import RejectionCount
from tests.api.conftest import engine_of
from tests.api.rejected import counted
from tests.api.test_callbacks import call_back, handed_off
from tests.engine.conftest import H

AUTH = {"Authorization": "Bearer t"}
SECRET = new_secret()
DAY = 86400.0
LONG_NAME = "n" * 65_000


def settings_for(tmp_path: Path) -> Settings:
    return Settings.model_validate(
        {
            "database_url": f"sqlite:///{tmp_path / 'floods.db'}",
            "admin_token": "t",
            "workflows": {
                "wf": {"steps": {"one": {"handler": H + "single"}}},
                "waits": {
                    "steps": {"wait": {"handler": H + "hand_off", "for_each": "event.items"}}
                },
            },
            "triggers": {
                "push": {"workflow": "wf", "webhook": {"scheme": "standard", "secret": SECRET}}
            },
        }
    )


def database_bytes(app: Starlette) -> int:
    """The database's size with its write-ahead log folded in, as another connection sees it."""
    path = engine_of(app).store.path  # type: ignore[attr-defined]
    with closing(sqlite3.connect(path)) as db:
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        pages = db.execute("PRAGMA page_count").fetchone()[0]
        size = db.execute("PRAGMA page_size").fetchone()[0]
    return int(pages * size)


async def flood(client: httpx.AsyncClient, rounds: int) -> None:
    """`rounds` each of: an unknown token, an unknown 65,000-character trigger, a forged hook."""
    body = b'{"x": 1}'
    forged = sign_headers(new_secret(), body)
    for _ in range(rounds):
        await asyncio.gather(
            client.post("/callbacks/not-a-token", content=body, headers=forged),
            client.post(f"/hooks/{LONG_NAME}", content=body),
            client.post("/hooks/push", content=body, headers=forged),
        )


async def test_a_flood_adds_no_history_and_a_bounded_handful_of_counts(
    app: Starlette, client: httpx.AsyncClient
) -> None:
    """900 unauthenticated requests leave history empty and store at most one count per
    route, reason and minute: the database grows by a page or two, not by the request."""
    store = engine_of(app).store
    await store.probe_write(1.0)  # the meta row the probe writes exists before measuring
    before = database_bytes(app)
    await flood(client, 300)
    rejections: Rejections = app.state.rejections
    await rejections.flush()
    grown = database_bytes(app) - before

    assert await store.history(limit=10) == []
    stored = await store.rejections()
    assert sum(c.count for c in stored) == 900
    assert len(stored) <= 2 * 3, "three keys, in at most two minutes"
    assert {(c.route, c.reason) for c in stored} == {
        ("/callbacks/{token}", "unknown_token"),
        ("/hooks/{trigger}", "unknown_trigger"),
        ("/hooks/{trigger}", "bad_signature"),
    }
    assert grown <= 2 * 4096


async def test_a_long_or_strange_trigger_name_is_echoed_cut_and_escaped(
    app: Starlette, client: httpx.AsyncClient
) -> None:
    """A 65,000-character name comes back cut to 64 characters; control characters come back
    escaped; the sample keeps the same, never the whole name."""
    response = await client.post(f"/hooks/{LONG_NAME}", content=b"{}")
    assert (response.status_code, response.json()["error"]) == (404, "unknown_trigger")
    detail = response.json()["detail"]
    assert "n" * NAME_SHOWN in detail
    assert "n" * (NAME_SHOWN + 1) not in detail
    assert len(response.content) < 300

    strange = await client.post("/hooks/" + quote("bell\x07and\u200bzero"), content=b"{}")
    assert "bell\\x07and\\u200bzero" in strange.json()["detail"]
    samples = [c.sample["target"] for c in app.state.rejections.pending()]
    assert all(len(target) < NAME_SHOWN + 30 for target in samples)


async def test_a_key_name_the_sender_chose_is_echoed_cut(
    app: Starlette, client: httpx.AsyncClient
) -> None:
    """A signed callback whose body has a 65,000-character extra key is answered 422 naming
    the key cut to 64 characters, in the answer and in the task's history alike."""
    run_id, (ctx,) = await handed_off(app, "waits")
    response = await call_back(client, ctx, {"status": "succeeded", LONG_NAME: 1})
    assert (response.status_code, response.json()["error"]) == (422, "invalid_callback")
    assert len(response.content) < 500
    (entry,) = [
        e
        for e in await engine_of(app).store.history(run_id=run_id)
        if e.type == "callback_rejected"
    ]
    assert len(entry.data["reason"]) < 400


async def test_operators_read_the_counts_in_the_admin_api_and_the_metrics(
    client: httpx.AsyncClient,
) -> None:
    """GET /admin/rejections gives counts per minute with their samples and totals, from
    `since` on; /metrics counts rejections by route and reason."""
    await flood(client, 3)
    assert await counted(client) == {
        ("/callbacks/{token}", "unknown_token"): 3,
        ("/hooks/{trigger}", "unknown_trigger"): 3,
        ("/hooks/{trigger}", "bad_signature"): 3,
    }
    listed = (await client.get("/admin/rejections", headers=AUTH)).json()
    forged = next(c for c in listed["counts"] if c["reason"] == "bad_signature")
    assert forged["sample"]["target"] == "push"
    assert forged["sample"]["status"] == 401
    assert forged["minute_utc"].endswith(":00Z")
    later = await client.get(
        "/admin/rejections", params={"since": str(time.time() + 120)}, headers=AUTH
    )
    assert later.json()["counts"] == []
    bad = await client.get("/admin/rejections", params={"since": "soon"}, headers=AUTH)
    assert (bad.status_code, bad.json()["error"]) == (400, "bad_parameter")
    assert (await client.get("/admin/rejections")).status_code == 401

    metrics = (await client.get("/metrics")).text
    assert (
        'orchestrator_rejections_total{reason="unknown_token",route="/callbacks/{token}"} 3.0'
        in metrics
    )


async def test_retention_prunes_rows_of_no_run(app: Starlette) -> None:
    """A sweep deletes history entries without a run and counts older than the history age,
    and keeps the recent ones."""
    engine = engine_of(app)
    now = engine.clock()
    old, recent = now - 40 * DAY, now - DAY
    async with engine.store.transaction() as tx:
        await tx.append_history(
            [HistoryEntry("hook_rejected", old, data={}), HistoryEntry("hook_rejected", recent)]
        )
    await engine.store.add_rejections(
        [
            RejectionCount(int(old // 60) * 60, "/hooks/{trigger}", "bad_signature", 7, old, old),
            RejectionCount(int(recent // 60) * 60, "/hooks/{trigger}", "bad_signature", 1, recent, recent),
        ]
    )  # fmt: skip
    swept = await RetentionJob(engine, Retention(30 * DAY, 365 * DAY)).sweep()
    assert swept.unattached == 2
    assert [entry.at for entry in await engine.store.history()] == [recent]
    assert [c.count for c in await engine.store.rejections()] == [1]
