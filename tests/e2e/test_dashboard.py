"""The dashboard in headless Chromium: a fan-out shows as bars side by side, live from the stream."""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.e2e.conftest import REPO, TOKEN, Gate, Orchestrator
from tests.e2e.test_run_end_to_end import THREE_LEVELS

pytestmark = pytest.mark.e2e

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]  # fmt: skip


@pytest.fixture
def chromium() -> str:
    """Debian's Chromium; CI installs it (.ci/run), elsewhere the test is skipped without it."""
    if not Path(CHROMIUM).exists():
        if os.environ.get("CI"):
            pytest.fail("chromium is not installed: .ci/run must apt-get install chromium")
        pytest.skip("chromium is not installed (apt-get install chromium)")
    return CHROMIUM


async def test_dashboard_draws_the_fan_out_side_by_side_and_updates_live(
    tmp_path: Path, gate: Gate, orchestrators: Callable[..., Orchestrator], chromium: str
) -> None:
    """Opened before the run, the page shows its rows as they happen: five side by side (each
    queued at once), then a staircase."""
    from playwright.async_api import async_playwright

    config = tmp_path / "levels.toml"
    config.write_text(THREE_LEVELS)
    gate.threshold["main"] = 5
    server = await orchestrators(config).start()
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
        page = await browser.new_page(viewport={"width": 1280, "height": 900})
        await page.goto(f"{server.url}/admin/")
        await page.fill("#token", TOKEN)
        await page.click("button[type=submit]")
        await page.wait_for_selector("#live.on", timeout=10_000)

        async with server.client() as client:
            fired = await client.fire("levels", {"items": list(range(5)), "gate": gate.url})
        await page.wait_for_selector(
            f'#runs li[data-run-id="{fired["run_id"]}"] .status.succeeded', timeout=20_000
        )
        await page.wait_for_function(
            "document.querySelectorAll('.bar.succeeded').length === 12", timeout=10_000
        )
        # A row is the task's wait (queued -> started) and then its bar: an async handler's
        # start can lag its dispatch while the loop runs the others' first steps.
        boxes = await page.eval_on_selector_all(
            ".track",
            "tracks => tracks.map(t => { const parts = [...t.children].map(c => c.getBoundingClientRect());"
            " return {step: t.querySelector('.bar').dataset.step,"
            " left: Math.min(...parts.map(p => p.left)), right: Math.max(...parts.map(p => p.right))}; })",
        )
        if os.environ.get("ORCHESTRATOR_SCREENSHOT"):
            await page.screenshot(path=str(REPO / "docs" / "dashboard.png"), full_page=True)
        await browser.close()

    wide = [box for box in boxes if box["step"] == "wide"]
    final = [box for box in boxes if box["step"] == "final_join"]
    assert len(wide) == 5
    lefts = [box["left"] for box in wide]
    track = max(box["right"] for box in boxes) - min(lefts)
    assert max(lefts) - min(lefts) < 0.1 * track, "the fan-out started together: bars side by side"
    assert final[0]["left"] >= max(box["right"] for box in wide) - 2, (
        "the join comes after: a staircase"
    )
    assert await server.stop()


PACED = """
[workflows.paced.steps.fan]
handler = "tests.e2e.handlers:echo"
for_each = "event.items"
rate = "1/300ms"
"""


async def test_dashboard_draws_each_wait_as_a_lighter_segment_before_its_bar(
    tmp_path: Path, orchestrators: Callable[..., Orchestrator], chromium: str
) -> None:
    """Three starts at one per 300 ms: each later task's wait is drawn from the run's start
    up to its bar, growing down the fan-out, and the summary shows waits beside run times."""
    from playwright.async_api import async_playwright

    config = tmp_path / "paced.toml"
    config.write_text(PACED)
    server = await orchestrators(config).start()
    async with server.client() as client:
        fired = await client.fire("paced", {"items": [0, 1, 2]})
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
        page = await browser.new_page(viewport={"width": 1280, "height": 900})
        await page.goto(f"{server.url}/admin/")
        await page.fill("#token", TOKEN)
        await page.click("button[type=submit]")
        await page.wait_for_selector(
            f'#runs li[data-run-id="{fired["run_id"]}"] .status.succeeded', timeout=20_000
        )
        await page.wait_for_function(
            "document.querySelectorAll('.bar.succeeded').length === 3", timeout=10_000
        )
        shapes = await page.eval_on_selector_all(
            ".track",
            "tracks => tracks.map(t => { const w = t.querySelector('.wait'), b = t.querySelector('.bar');"
            " const r = (e) => e.getBoundingClientRect();"
            " return {waitLeft: r(w).left, waitRight: r(w).right, barLeft: r(b).left,"
            " track: r(t).width, title: b.title}; })",
        )
        summary = await page.inner_text("#summary")
        await browser.close()

    assert "sum of run times" in summary
    assert "sum of waits" in summary
    assert "paced waits" in summary
    assert len(shapes) == 3
    for shape in shapes:
        assert abs(shape["waitRight"] - shape["barLeft"]) < 2, "the wait ends where the run starts"
        assert "waited" in shape["title"]
        assert "ran" in shape["title"]
    widths = sorted(shape["waitRight"] - shape["waitLeft"] for shape in shapes)
    assert widths[-1] > 0.4 * shapes[0]["track"], "the last start waited two gaps of the three"
    assert await server.stop()
