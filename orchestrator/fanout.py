"""Fan-out: which steps of a run may start, and the items a step fans out over.

A step starts once every step it needs has an open barrier. Its items are one task each:
`for_each = "event.path"` reads a list from the event's payload, `for_each = "step.path"`
from what an upstream step returned (a fanned-out step: the list of its successes'
outputs). Anything but a list fails the run with the reason.
"""

from __future__ import annotations

from typing import Any

from orchestrator.barrier import Barrier, BarrierStatus
from orchestrator.model import StepSpec, WorkflowSpec
from orchestrator.specs import RunInfo
from orchestrator.states import TaskState
from orchestrator.store import StoreTx


class FanOutError(ValueError):
    """A step's for_each does not name a list: the run fails with this message."""


def ready_steps(spec: WorkflowSpec, started: dict[str, Barrier]) -> list[str]:
    """The steps not started yet whose needs all have open barriers."""
    return [
        name
        for name, step in spec.steps.items()
        if name not in started
        and all(
            need in started and started[need].status is BarrierStatus.OPEN for need in step.needs
        )
    ]


async def fanout_items(tx: StoreTx, info: RunInfo, step: StepSpec) -> list[tuple[str, Any]]:
    """The (item key, item) pairs a step fans out over; one ("", None) without for_each."""
    source = step.for_each_source()
    if source is None:
        return [("", None)]
    head, path = source
    if head == "event":
        event = await tx.get_event(info.event_id)
        value: Any = {} if event is None else event.payload
    else:
        upstream = await tx.tasks_of_steps([(info.run_id, head)])
        succeeded = [task for task in upstream if task.state is TaskState.SUCCEEDED]
        if len(upstream) == 1 and upstream[0].item_key == "":
            value = succeeded[0].output if succeeded else None
        else:
            value = [task.output for task in succeeded]
    for key in path:
        if not isinstance(value, dict) or key not in value:
            raise FanOutError(f"for_each = {step.for_each!r}: no key {key!r} in {head}")
        value = value[key]
    if not isinstance(value, list):
        raise FanOutError(
            f"for_each = {step.for_each!r} must be a list, got {type(value).__name__}"
        )
    return [(str(index), item) for index, item in enumerate(value)]
