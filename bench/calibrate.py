"""Calibration: a fixed pure-Python workload, timed on the orchestrator's core.

Absolute figures (seconds, milliseconds per task, requests per second) do not carry from
one day's machine to another's here, by 2x or more. This figure, recorded in every run next
to them, says how fast the machine was that day: divide two runs' absolute figures by their
calibration figures before comparing them. The goals themselves are same-run ratios.

    python -m bench.calibrate      # prints JSON {"ms": ...}
"""

from __future__ import annotations

import json
import time


def workload() -> int:
    """Dicts, strings, JSON and small objects: the kind of work the engine does per task."""
    total = 0
    for index in range(40_000):
        record = {
            "id": f"tsk_{index:08d}",
            "state": "pending",
            "attempt": index % 3,
            "data": [index],
        }
        text = json.dumps(record, separators=(",", ":"))
        total += len(json.loads(text)["id"]) + len(text.split(","))
    return total


def measure(repeats: int = 5) -> float:
    """Milliseconds of CPU for one workload, the fastest of `repeats`."""
    best = float("inf")
    for _ in range(repeats):
        started = time.process_time()
        workload()
        best = min(best, time.process_time() - started)
    return best * 1000


if __name__ == "__main__":
    print(json.dumps({"ms": round(measure(), 2)}))
