"""Park N tasks awaiting callbacks that only the benchmark can send (handler bench.handlers:park)."""

from __future__ import annotations

import json
import time
from pathlib import Path

from bench.procs import CALLBACK_KEY, TOKEN
from orchestrator.client import AdminClient
from orchestrator.signing import sign_headers
from orchestrator.tokens import callback_token, task_secret


async def park(
    orchestrator: str, items: int, with_ids: bool = True
) -> tuple[str, list[str], float]:
    """Fire a run of `items` parked tasks; return once all await their callbacks:
    (run id, task ids unless not `with_ids`, seconds it took). Reading the ids makes the
    server build a run detail of `items` tasks, which a memory figure must not include."""
    async with AdminClient(orchestrator, TOKEN) as client:
        started = time.perf_counter()
        fired = await client.fire("park", {"items": list(range(items))})
        run_id = str(fired["run_id"])
        parked = 0
        async for _ in client.stream(after=0, run_id=run_id, types=["task_awaiting_callback"]):
            parked += 1
            if parked == items:
                break
        seconds = time.perf_counter() - started
        if not with_ids:
            return run_id, [], seconds
        detail = await client.run(run_id)
    return run_id, [task["id"] for task in detail["tasks"]], seconds


def signed_callback(task_id: str, index: int) -> tuple[str, dict[str, str], bytes]:
    """(path, headers, body) of a signed success callback for attempt 1 of `task_id`."""
    key = CALLBACK_KEY.encode()
    body = json.dumps({"status": "succeeded", "output": {"i": index}}).encode()
    headers = sign_headers(task_secret(key, task_id, 1), body)
    return f"/callbacks/{callback_token(key, task_id, 1)}", headers, body


def write_requests(task_ids: list[str], path: Path) -> None:
    """The wrk replay file (bench/callbacks.lua): one signed callback per line."""
    lines = []
    for index, task_id in enumerate(task_ids):
        url_path, headers, body = signed_callback(task_id, index)
        fields = [
            url_path,
            headers["webhook-id"],
            headers["webhook-timestamp"],
            headers["webhook-signature"],
            body.decode(),
        ]
        lines.append("\t".join(fields))
    path.write_text("\n".join(lines) + "\n")
