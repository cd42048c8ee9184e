"""Every type of history entry the orchestrator writes: what `?type=` filters may name.

tests/unit/test_history_types.py scans the source for every entry written, so this list
cannot drift from the code: a new type fails that test until it is added here.
"""

from __future__ import annotations

from orchestrator.states import FINISHED_TASK_STATES, RunState

_TASK_ENDS = sorted(f"task_{state.value}" for state in FINISHED_TASK_STATES)
_RUN_ENDS = sorted(f"run_{state.value}" for state in RunState if state.finished)

# Entry types written from an f-string, with what they expand to.
TEMPLATES: dict[str, list[str]] = {"task_{}": _TASK_ENDS, "run_{}": _RUN_ENDS}

HISTORY_TYPES: frozenset[str] = frozenset(
    {
        # events and runs
        "event_received", "event_replayed", "run_started", "run_retried", *_RUN_ENDS,
        # steps and their barriers
        "step_started", "step_input_invalid", "step_deadline_passed",
        "barrier_advanced", "barrier_opened", "barrier_failed",
        # tasks
        "task_dispatched", "task_dispatch_failed", "task_awaiting_callback",
        "task_awaiting_event", "task_heartbeat", "callback_progress",
        "task_attempt_failed", "task_retry_scheduled", "task_retried", "task_requeued",
        *_TASK_ENDS,
        # replicas (on a shared store)
        "replica_lost",
        # reports and requests that changed nothing
        "report_ignored", "callback_rejected", "heartbeat_rejected", "hook_rejected",
    }
)  # fmt: skip


class UnknownHistoryType(ValueError):
    """A `type` filter naming no history entry type; the message lists the known ones."""


def parse_types(raw: str) -> tuple[str, ...]:
    """The types in a comma-separated filter such as `task_failed,run_failed`.

    An unknown name is refused rather than matching nothing, so a typo does not read as
    "nothing happened".
    """
    names = tuple(dict.fromkeys(part.strip() for part in raw.split(",") if part.strip()))
    unknown = [name for name in names if name not in HISTORY_TYPES]
    if not names or unknown:
        what = f"unknown history type(s) {', '.join(map(repr, unknown))}" if unknown else "empty"
        known = ", ".join(sorted(HISTORY_TYPES))
        raise UnknownHistoryType(f"type: {what}; give one or more of (comma-separated): {known}")
    return names
