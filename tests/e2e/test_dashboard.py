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
    """Opened before the run, the page shows its bars as they happen: five side by side, then a staircase."""
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
        boxes = await page.eval_on_selector_all(
            ".bar",
            "bars => bars.map(b => ({step: b.dataset.step, left: b.getBoundingClientRect().left,"
            " right: b.getBoundingClientRect().right}))",
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
