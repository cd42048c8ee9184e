"""GET /metrics through the real ASGI app: what it exports, what it counts, who may read it."""

from __future__ import annotations

import asyncio
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from starlette.applications import Starlette

from orchestrator.app import create_app
from orchestrator.settings import Settings
from tests.api.conftest import engine_of
from tests.api.test_callbacks import GOOD, handed_off, signed
from tests.engine.conftest import H


def settings_for(tmp_path: Path, **extra: object) -> Settings:
    step = {"handler": H + "hand_off", "for_each": "event.items"}
    return Settings.model_validate(
        {
            "database_url": f"sqlite:///{tmp_path / 'metrics.db'}",
            "admin_token": "t",
            "workflows": {
                "wf": {"steps": {"wait": step}},
                "short": {"steps": {"wait": {**step, "timeout": "50ms"}}},
            },
            **extra,
        }
    )


Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


async def scrape(client: httpx.AsyncClient, **headers: str) -> Samples:
    response = await client.get("/metrics", headers=headers)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain")
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(response.text)
        for sample in family.samples
    }


def sample(samples: Samples, name: str, **labels: str) -> float | None:
    return samples.get((name, frozenset(labels.items())))


async def test_metrics_are_open_and_show_no_status_checks(client: httpx.AsyncClient) -> None:
    """Without metrics_token, /metrics answers anyone, with status_checks_total at 0."""
    samples = await scrape(client)
    assert sample(samples, "orchestrator_status_checks_total") == 0.0
    assert sample(samples, "orchestrator_store_transactions_total") == 1.0, "start-up's recovery"


async def test_callbacks_and_hooks_are_counted_by_route_template_and_status(
    app: Starlette, client: httpx.AsyncClient
) -> None:
    """An accepted callback, an unknown token, a heartbeat and an unknown hook: one count each."""
    _, contexts = await handed_off(app, "wf")
    ctx = contexts[0]
    body, headers = signed(GOOD, ctx.callback_secret)
    path = urlsplit(ctx.callback_url).path
    assert (await client.post(path, content=body, headers=headers)).status_code == 200
    assert (await client.post("/callbacks/nope", content=b"{}")).status_code == 404
    assert (await client.post("/callbacks/nope/heartbeat", content=b"{}")).status_code == 404
    assert (await client.post("/hooks/nope", content=b"{}")).status_code == 404
    assert (await client.get("/admin/runs")).status_code == 401  # not an inbound POST

    samples = await scrape(client)
    counted = "orchestrator_callbacks_total"
    assert sample(samples, counted, route="/callbacks/{token}", result="200") == 1.0
    assert sample(samples, counted, route="/callbacks/{token}", result="404") == 1.0
    assert sample(samples, counted, route="/callbacks/{token}/heartbeat", result="404") == 1.0
    assert sample(samples, counted, route="/hooks/{trigger}", result="404") == 1.0
    assert sum(v for (name, _), v in samples.items() if name == counted) == 4.0
    timed = "orchestrator_callback_seconds_count"
    assert sample(samples, timed, route="/callbacks/{token}") == 2.0


async def test_a_deadline_on_the_timer_heap_is_one_armed_timer_and_a_wakeup(
    app: Starlette, client: httpx.AsyncClient
) -> None:
    """A task whose 50 ms timeout passes was put on the heap and woke the process."""
    engine = engine_of(app)
    with engine.bus.subscribe() as subscription:
        await handed_off(app, "short")
        async with asyncio.timeout(5):
            async for entry in subscription:
                if entry.type == "task_timed_out":
                    break
    samples = await scrape(client)
    assert (sample(samples, "orchestrator_wakeups_total") or 0.0) >= 1.0
    assert (sample(samples, "orchestrator_timers_armed_total") or 0.0) >= 1.0
    assert sample(samples, "orchestrator_status_checks_total") == 0.0


@pytest.mark.parametrize(
    ("authorization", "status"),
    [
        (None, 401),
        ("Bearer wrong", 401),
        ("Basic scrape-1", 401),
        ("Bearer scrape-1", 200),
        ("bearer scrape-2", 200),
    ],
)
async def test_metrics_token_guards_the_page(
    tmp_path: Path, authorization: str | None, status: int
) -> None:
    """With metrics_token set, only its tokens (either, during a rotation) read /metrics."""
    app = create_app(settings_for(tmp_path, metrics_token="scrape-1, scrape-2"))
    headers = {} if authorization is None else {"authorization": authorization}
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            response = await client.get("/metrics", headers=headers)
    assert response.status_code == status
    if status == 401:
        assert response.json()["error"] == "unauthorized"
        assert "ORCHESTRATOR_METRICS_TOKEN" in response.json()["detail"]
    else:
        assert b"orchestrator_status_checks_total 0.0" in response.content


async def test_the_admin_token_does_not_open_metrics(tmp_path: Path) -> None:
    """Least privilege: a scraper holds its own token; the admin token is not one."""
    app = create_app(settings_for(tmp_path, metrics_token="scrape-1"))
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            response = await client.get("/metrics", headers={"authorization": "Bearer t"})
    assert response.status_code == 401
