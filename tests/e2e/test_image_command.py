"""The container's command, run for real: the Dockerfile's ENTRYPOINT + CMD and HEALTHCHECK."""

from __future__ import annotations

import asyncio
import os
import shutil
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.deploy.parts import (
    EXAMPLE_CONFIG,
    config_path_in_image,
    dockerfile,
    entry_command,
    exec_form,
)
from tests.e2e.conftest import Orchestrator

pytestmark = pytest.mark.e2e


async def test_the_image_command_serves_and_its_healthcheck_passes(
    tmp_path: Path, orchestrators: Callable[..., Orchestrator]
) -> None:
    """The exact ENTRYPOINT + CMD (config path aside) serves; the HEALTHCHECK command passes."""
    executable = shutil.which("orchestrator", path=str(Path(sys.executable).parent))
    assert executable is not None, "the orchestrator command is installed beside python"
    config = tmp_path / "orchestrator.toml"
    config.write_text(EXAMPLE_CONFIG.read_text())
    command = [executable, *entry_command()[1:]]
    command[command.index(config_path_in_image())] = str(config)
    server = await orchestrators(config, ORCHESTRATOR_PORT="0").start(command=command)
    assert server.url.startswith("http://0.0.0.0:")

    healthcheck = dockerfile()[-1].last("HEALTHCHECK")
    probe = exec_form(healthcheck.partition("CMD")[2].strip())
    checked = await asyncio.create_subprocess_exec(
        sys.executable, *probe[1:], env={**os.environ, "ORCHESTRATOR_PORT": str(server.port)}
    )
    async with asyncio.timeout(20):
        assert await checked.wait() == 0
    assert await server.stop()
