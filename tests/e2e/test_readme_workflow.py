"""The README's "Write your own workflow" works as written: its files, in a directory of the
user's own, with the external service that calls back, fired and followed from the CLI."""

from __future__ import annotations

import asyncio
import json
import re
import signal
from pathlib import Path

import pytest

from tests.e2e.as_user import SCRIPT, run_script, user_env, user_server
from tests.e2e.conftest import REPO, bound_socket

pytestmark = pytest.mark.e2e

README = REPO / "README.md"
TOKEN = "readme-token-0123456789abcdef"


def section() -> str:
    text = README.read_text()
    return text[text.index("## Write your own workflow") : text.index("## The config file")]


def write_files(directory: Path, ports: dict[str, int]) -> list[str]:
    """The section's `myflow/...` files under `directory`, on free ports; their names."""
    written = []
    for name, body in re.findall(r"`(myflow/[\w.]+)`[^`]*?```\w*\n(.*?)```", section(), re.S):
        for fixed, free in ports.items():
            body = body.replace(fixed, str(free))
        (directory / name).parent.mkdir(exist_ok=True)
        (directory / name).write_text(body)
        written.append(name)
    return written


async def test_the_readme_workflow_runs_as_written(tmp_path: Path) -> None:
    """check prints its stages; the service calls back signed; fire --wait ends succeeded."""
    with bound_socket() as orchestrator_sock:
        orchestrator_port = orchestrator_sock.getsockname()[1]
    scorer_sock = bound_socket()
    names = write_files(tmp_path, {"8100": orchestrator_port, "8101": scorer_sock.getsockname()[1]})
    assert names == ["myflow/orchestrator.toml", "myflow/steps.py", "myflow/scorer.py"]
    env = user_env(
        ORCHESTRATOR_CONFIG="myflow/orchestrator.toml",
        ORCHESTRATOR_ADMIN_TOKEN=TOKEN,
        ORCHESTRATOR_LOG_FORMAT="json",
    )
    code, out, err = await run_script(
        "check", "--config", "myflow/orchestrator.toml", cwd=tmp_path, env=env
    )
    assert (code, err) == (0, "")
    assert "stage 2: score (one task per load.signups)" in out

    scorer = await asyncio.create_subprocess_exec(
        str(SCRIPT.with_name("uvicorn")), "--app-dir", "myflow", "--fd", str(scorer_sock.fileno()),
        "scorer:app", cwd=tmp_path, env=env, pass_fds=[scorer_sock.fileno()],
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
    )  # fmt: skip
    try:
        async with user_server(cwd=tmp_path, env=env) as server:
            assert server.url == f"http://127.0.0.1:{orchestrator_port}"
            code, out, err = await run_script(
                "fire", "score_signups", "--wait", cwd=tmp_path, env=env
            )
            assert code == 0, err
            assert "score: 2 task(s) started at once" in out
            assert "■ score_signups" in out
            code, out, _ = await run_script("runs", "--json", cwd=tmp_path, env=env)
            (run,) = json.loads(out)["runs"]
            code, out, _ = await run_script("show", run["id"], "--json", cwd=tmp_path, env=env)
            report = next(task for task in json.loads(out)["tasks"] if task["step"] == "report")
            assert report["output"]["scored"] == 2
            assert await server.stop() == 0
    finally:
        scorer.send_signal(signal.SIGTERM)
        async with asyncio.timeout(15):
            await scorer.wait()
        scorer_sock.close()
