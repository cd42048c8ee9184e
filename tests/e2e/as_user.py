"""The `orchestrator` command as a user in a fresh shell runs it: the installed script, in a
directory of their own, with no PYTHONPATH and no ORCHESTRATOR_* settings but those given."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

SCRIPT = Path(sys.executable).with_name("orchestrator")
START_TIMEOUT = 30.0


def user_env(**settings: str) -> dict[str, str]:
    """The test's environment without PYTHONPATH and ORCHESTRATOR_* variables, plus `settings`."""
    env = {
        name: value
        for name, value in os.environ.items()
        if name != "PYTHONPATH" and not name.upper().startswith("ORCHESTRATOR_")
    }
    return {**env, **settings}


async def run_script(*args: str, cwd: Path, env: dict[str, str]) -> tuple[int, str, str]:
    """Run `orchestrator ARGS...` to completion: (exit status, stdout, stderr)."""
    process = await asyncio.create_subprocess_exec(
        str(SCRIPT), *args, cwd=cwd, env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    async with asyncio.timeout(60):
        out, err = await process.communicate()
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


class UserServer:
    """A running `orchestrator serve`, its stdout and stderr kept line by line."""

    def __init__(self, process: asyncio.subprocess.Process) -> None:
        self.process = process
        self.lines: dict[str, list[str]] = {"stdout": [], "stderr": []}
        self._changed = asyncio.Condition()
        assert process.stdout is not None
        assert process.stderr is not None
        self._readers = [
            asyncio.create_task(self._read("stdout", process.stdout)),
            asyncio.create_task(self._read("stderr", process.stderr)),
        ]
        self.url = ""
        self._ended = 0  # streams read to their end: the process has exited

    async def _read(self, name: str, stream: asyncio.StreamReader) -> None:
        async for raw in stream:
            async with self._changed:
                self.lines[name].append(raw.decode(errors="replace").rstrip("\n"))
                self._changed.notify_all()
        async with self._changed:
            self._ended += 1
            self._changed.notify_all()

    def _find(self, stream: str, text: str) -> str | None:
        return next((line for line in self.lines[stream] if text in line), None)

    async def line(self, stream: str, text: str, within: float = START_TIMEOUT) -> str:
        """Wait until `stream` has a line containing `text`; that line."""
        async with asyncio.timeout(within), self._changed:
            await self._changed.wait_for(
                lambda: self._find(stream, text) is not None or self._ended == 2
            )
        found = self._find(stream, text)
        assert found is not None, f"exited without printing {text!r}: {self.lines}"
        return found

    def logs(self) -> list[dict[str, Any]]:
        """The JSON log records on stderr so far."""
        return [json.loads(line) for line in self.lines["stderr"] if line.startswith("{")]

    async def stop(self) -> int:
        """SIGTERM, then the exit status once both streams are read to the end."""
        if self.process.returncode is None:
            self.process.send_signal(signal.SIGTERM)
        async with asyncio.timeout(15):
            code = await self.process.wait()
            await asyncio.gather(*self._readers)
        return code


@contextlib.asynccontextmanager
async def user_server(*args: str, cwd: Path, env: dict[str, str]) -> AsyncIterator[UserServer]:
    """`orchestrator serve ARGS...`, ready (its url known); killed at the end if still running."""
    process = await asyncio.create_subprocess_exec(
        str(SCRIPT), "serve", *args, cwd=cwd, env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    server = UserServer(process)
    try:
        ready = await server.line("stderr", '"server_ready"')
        server.url = json.loads(ready)["url"]
        yield server
    finally:
        if process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                process.kill()
        await server.stop()
