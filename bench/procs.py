"""The processes a benchmark runs: the orchestrator, the fake service, the bare endpoint.

Each server gets an already-listening loopback socket (no port race) and, on a machine
with two cores or more, a core of its own via `taskset`: the server under test on core 0,
everything that loads it (fake service, wrk, this driver) on core 1. CPU time and RSS
are read from /proc.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

from orchestrator.serve import listening_socket

ROOT = Path(__file__).resolve().parents[1]
TOKEN = "bench-token"
CALLBACK_KEY = "bench-callback-key-0123456789abcdef"
SERVER_CORE = 0
LOAD_CORE = 1


def can_pin() -> bool:
    return (os.cpu_count() or 1) >= 2 and shutil.which("taskset") is not None


def pinned(command: list[str], core: int) -> list[str]:
    return ["taskset", "-c", str(core), *command] if can_pin() else command


def pin_self() -> None:
    """Keep this driver off the core the server under test runs on."""
    if can_pin():
        os.sched_setaffinity(0, {LOAD_CORE})


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds the process has used so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def cpu_seconds_precise(pid: int) -> float:
    """CPU seconds over all the process's threads, in nanoseconds' resolution (schedstat)."""
    total = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            total += int((task / "schedstat").read_text().split()[0])
        except (FileNotFoundError, ProcessLookupError):
            continue  # a thread that ended meanwhile
    return total / 1e9


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmRSS for process {pid}")


@dataclass
class Server:
    process: asyncio.subprocess.Process
    url: str

    @property
    def pid(self) -> int:
        return self.process.pid

    async def stop(self) -> None:
        if self.process.returncode is None:
            self.process.terminate()
            await self.process.wait()

    async def kill(self) -> None:
        if self.process.returncode is None:
            self.process.kill()
            await self.process.wait()


async def start_module(module: str, *args: str, core: int = LOAD_CORE) -> Server:
    """`python -m module --fd N ...` on a loopback socket handed over as a descriptor."""
    sock = listening_socket("127.0.0.1", 0)
    command = [sys.executable, "-m", module, "--fd", str(sock.fileno()), *args]
    process = await asyncio.create_subprocess_exec(
        *pinned(command, core), cwd=ROOT, pass_fds=[sock.fileno()]
    )
    url = f"http://127.0.0.1:{sock.getsockname()[1]}"
    sock.close()
    return Server(process, url)


async def start_orchestrator(
    workdir: Path,
    config: str,
    database: str = "bench.db",
    core: int = SERVER_CORE,
    *,
    database_url: str | None = None,
    replica_id: str | None = None,
) -> Server:
    """`orchestrator serve` on SQLite in `workdir` (or on `database_url`, a replica named
    `replica_id`); returns once it logs server_ready."""
    path = workdir / "bench.toml"
    path.write_text(config)
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "ORCHESTRATOR_DATABASE_URL": database_url or f"sqlite:///{workdir / database}",
        "ORCHESTRATOR_ADMIN_TOKEN": TOKEN,
        "ORCHESTRATOR_CALLBACK_KEY": CALLBACK_KEY,
        "ORCHESTRATOR_LOG_FORMAT": "json",
        "ORCHESTRATOR_LOG_LEVEL": "info",
        **({"ORCHESTRATOR_REPLICA_ID": replica_id} if replica_id else {}),
    }
    command = [sys.executable, "-m", "orchestrator", "serve", "--config", str(path)]
    process = await asyncio.create_subprocess_exec(
        *pinned([*command, "--port", "0", "--no-progress"], core), cwd=ROOT, env=env,
        stderr=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.DEVNULL,
    )  # fmt: skip
    assert process.stderr is not None
    said: list[bytes] = []
    async with asyncio.timeout(120):
        async for raw in process.stderr:
            record = json.loads(raw) if raw.startswith(b"{") else {}
            if record.get("event") == "server_ready":
                asyncio.get_running_loop().create_task(_drain(process.stderr))
                return Server(process, str(record["url"]))
            said = [*said[-4:], raw.strip()]
    last = b" / ".join(said).decode(errors="replace")
    raise RuntimeError(f"the orchestrator did not start: {last}")


async def _drain(stream: asyncio.StreamReader) -> None:
    async for _ in stream:
        pass
