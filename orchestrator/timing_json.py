"""A run's timing as the admin API shows it (`timing` of GET /admin/runs/{id}), and back.

The meaning of each figure is in orchestrator/timing.py and docs/decisions.md ("Run timing");
orchestrator/openapi.py documents the same fields.
"""

from __future__ import annotations

from typing import Any

from orchestrator.timing import Segment, Timing


def segment_json(segment: Segment) -> dict[str, Any]:
    return {
        "task": segment.label,
        "step": segment.step,
        "kind": segment.kind,
        "started": segment.start,
        "finished": segment.end,
        "seconds": segment.seconds,
        "failed": segment.failed,
    }


def timing_json(timing: Timing) -> dict[str, Any]:
    """The figures of a run's summary; speedup = sequential_seconds / active_seconds, where
    sequential_seconds = run_seconds + paced_seconds (docs/decisions.md, "Run timing")."""
    return {
        "wall_seconds": timing.wall,
        "paused_seconds": timing.paused,
        "active_seconds": timing.active,
        "run_seconds": timing.ran,
        "wait_seconds": timing.waited,
        "paced_seconds": timing.paced,
        "sequential_seconds": timing.sequential,
        "speedup": timing.speedup,
        "tasks": timing.tasks,
        "attempts": timing.attempts,
        "task_seconds": timing.ran,  # the name before waits were told apart
        "slowest": None if timing.slowest is None else segment_json(timing.slowest),
        "critical_path": [segment_json(segment) for segment in timing.critical_path],
    }


def _segment(data: dict[str, Any]) -> Segment:
    return Segment(
        data["task"], data["step"], data["kind"], data["started"], data["finished"],
        bool(data.get("failed")),
    )  # fmt: skip


def timing_from_json(data: dict[str, Any]) -> Timing:
    """The inverse of timing_json, for clients that print a summary."""
    slowest = data.get("slowest")
    return Timing(
        wall=data["wall_seconds"],
        ran=data["run_seconds"],
        waited=data["wait_seconds"],
        paced=data["paced_seconds"],
        paused=data["paused_seconds"],
        tasks=data["tasks"],
        attempts=data["attempts"],
        critical_path=tuple(_segment(item) for item in data["critical_path"]),
        slowest=None if slowest is None else _segment(slowest),
    )
