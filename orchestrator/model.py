"""Workflow, step, trigger and join-policy specs: what the TOML config declares, validated.

Services and triggers live in model_edges.py, the base every spec shares in spec_base.py;
both are re-exported here, where the rest of the code imports them from.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from fractions import Fraction
from typing import Annotated, Any, Literal, Self

from pydantic import BeforeValidator, Field, model_validator

from orchestrator.durations import Duration, parse_duration
from orchestrator.model_edges import FIELD_PATH_PATTERN as FIELD_PATH_PATTERN
from orchestrator.model_edges import ResultMapping as ResultMapping
from orchestrator.model_edges import ServiceSpec as ServiceSpec
from orchestrator.model_edges import TriggerSpec as TriggerSpec
from orchestrator.model_edges import WebhookSpec as WebhookSpec
from orchestrator.model_edges import _zone as _zone
from orchestrator.spec_base import HANDLER_PATTERN as HANDLER_PATTERN
from orchestrator.spec_base import MIN_SECRET_BYTES as MIN_SECRET_BYTES
from orchestrator.spec_base import NAME_PATTERN as NAME_PATTERN
from orchestrator.spec_base import Spec as Spec
from orchestrator.spec_base import _resolve_plain_secret as _resolve_plain_secret
from orchestrator.spec_base import _resolve_secret as _resolve_secret


class Rate(Spec):
    """At most `count` task starts per `per` seconds."""

    count: int = Field(ge=1)
    per: float = Field(gt=0)


def _parse_rate(value: object) -> object:
    if not isinstance(value, str):
        return value
    match = re.fullmatch(r"\s*(\d+)\s*/\s*(\S+)\s*", value)
    if match is None:
        raise ValueError(f"expected a rate such as '5/s', '100/m' or '10/30s', got {value!r}")
    count, per = match.groups()
    per_seconds = parse_duration("1" + per if per in {"ms", "s", "m", "h", "d"} else per)
    return {"count": int(count), "per": per_seconds}


class JoinPolicy(Spec):
    """When a step's barrier opens or fails; stored with the barrier so a config edit cannot
    change the rules of a run already in flight."""

    mode: Literal["all", "any", "quorum"] = "all"
    quorum_count: int | None = None
    quorum_percent: float | None = None
    on_failure: Literal["fail_fast", "collect"] = "fail_fast"
    on_deadline: Literal["fail", "proceed"] = "fail"

    def required(self, expected: int) -> int:
        """Successes needed to open a barrier of `expected` tasks (never more than exist)."""
        if self.mode == "all":
            wanted = expected
        elif self.mode == "any":
            wanted = 1
        elif self.quorum_count is not None:
            wanted = self.quorum_count
        else:
            # Exact decimal arithmetic: 64.4% of 250 is 161, not the 162 that floats give.
            share = Fraction(str(self.quorum_percent or 0.0)) * expected / 100
            wanted = math.ceil(share)
        return min(wanted, expected)


def _parse_quorum(value: object) -> object:
    """A whole count stays an int; a percentage string "80%" becomes a float of percent.

    A bare float is refused: in TOML, `quorum = 8.0` would silently mean 8% otherwise.
    """
    if isinstance(value, float):
        raise ValueError("a quorum is a whole count such as 8 or a percentage string such as '80%'")
    if isinstance(value, str) and value.strip().endswith("%"):
        try:
            return float(value.strip()[:-1])
        except ValueError:
            raise ValueError(
                f"expected a count such as 8 or a percentage such as '80%', got {value!r}"
            ) from None
    return value


Quorum = Annotated[int | float, BeforeValidator(_parse_quorum)]


class StepSpec(Spec):
    """One step of a workflow: a handler, its dependencies, fan-out, limits and join policy."""

    handler: str = Field(
        pattern=HANDLER_PATTERN,
        description="module:callable; async handlers run as tasks, plain functions in a thread",
    )
    needs: tuple[str, ...] = Field(
        default=(), description="steps whose barriers must open before this one starts"
    )
    for_each: str | None = Field(
        default=None,
        description="one task per list item: 'event.path', or 'step[.path]' of a step it needs",
    )
    timeout: Duration | None = Field(
        default=None, description="per attempt; the timer heap times the attempt out"
    )
    retries: int = Field(default=0, ge=0, le=100, description="attempts after the first")
    backoff: Duration = Field(
        default=1.0, description="first retry delay; exponential backoff with full jitter"
    )
    backoff_max: Duration = Field(default=300.0, description="longest retry delay")
    concurrency: int | None = Field(
        default=None, ge=1, description="at most this many tasks of the step in flight, across runs"
    )
    exclusive: str | None = Field(
        default=None, description="a resource name: tasks of steps naming it never overlap"
    )
    rate: Annotated[Rate | None, BeforeValidator(_parse_rate)] = Field(
        default=None, description="at most this many starts per interval"
    )
    join: Literal["all", "any"] = Field(
        default="all", description="the barrier opens when all tasks, or any one, succeeded"
    )
    quorum: Quorum | None = Field(
        default=None, description="open after this many successes, or this share; not with join"
    )
    on_failure: Literal["fail_fast", "collect"] = Field(
        default="fail_fast",
        description="fail_fast: fail once the quorum is out of reach; collect: let all finish",
    )
    deadline: Duration | None = Field(
        default=None, description="a deadline for the whole step, from when it starts"
    )
    on_deadline: Literal["fail", "proceed"] = Field(
        default="fail", description="at the deadline: fail the step, or proceed with what arrived"
    )
    service: str | None = Field(
        default=None,
        description="a [services.NAME]: ctx.dispatch's default URL, and secrets for callbacks",
    )
    heartbeat: Duration | None = Field(
        default=None, description="a task awaiting a callback times out when heartbeats stop"
    )

    @model_validator(mode="after")
    def _check_quorum(self) -> Self:
        if self.quorum is None:
            return self
        if self.join == "any":
            raise ValueError("set either join = 'any' or quorum, not both")
        if isinstance(self.quorum, float) and not 0 < self.quorum <= 100:
            raise ValueError("a quorum percentage must be above 0% and at most 100%")
        if isinstance(self.quorum, int) and self.quorum < 1:
            raise ValueError("a quorum count must be at least 1")
        return self

    @property
    def max_attempts(self) -> int:
        return self.retries + 1

    def policy(self) -> JoinPolicy:
        """The join policy this step's barrier is created with."""
        common: dict[str, Any] = {"on_failure": self.on_failure, "on_deadline": self.on_deadline}
        if self.quorum is None:
            return JoinPolicy(mode=self.join, **common)
        if isinstance(self.quorum, int):
            return JoinPolicy(mode="quorum", quorum_count=self.quorum, **common)
        return JoinPolicy(mode="quorum", quorum_percent=self.quorum, **common)

    def for_each_source(self) -> tuple[str, tuple[str, ...]] | None:
        """('event' or an upstream step, key path) that the fan-out list is read from."""
        if self.for_each is None:
            return None
        head, *path = self.for_each.split(".")
        return head, tuple(path)


class WorkflowSpec(Spec):
    """A named DAG of steps."""

    description: str = Field(default="", description="what the workflow is for")
    steps: dict[Annotated[str, Field(pattern=NAME_PATTERN)], StepSpec] = Field(
        min_length=1, description="[workflows.NAME.steps.STEP] tables, at least one"
    )

    @model_validator(mode="after")
    def _check_graph(self) -> Self:
        for name, step in self.steps.items():
            for need in step.needs:
                if need not in self.steps:
                    known = ", ".join(sorted(self.steps))
                    raise ValueError(f"step {name!r} needs unknown step {need!r} (steps: {known})")
            source = step.for_each_source()
            if source is not None and source[0] != "event" and source[0] not in step.needs:
                raise ValueError(
                    f"step {name!r}: for_each = {step.for_each!r} must start with 'event.' "
                    f"or name a step it needs ({', '.join(step.needs) or 'none'})"
                )
        cycle = find_cycle({name: step.needs for name, step in self.steps.items()})
        if cycle:
            raise ValueError(f"the needs graph has a cycle: {' -> '.join(cycle)}")
        return self

    def dependents(self, step: str) -> list[str]:
        return [name for name, spec in self.steps.items() if step in spec.needs]

    def roots(self) -> list[str]:
        return [name for name, spec in self.steps.items() if not spec.needs]

    def stages(self) -> list[list[str]]:
        """The steps grouped by what runs side by side; see `stages_of`."""
        return stages_of({name: step.needs for name, step in self.steps.items()})


def stages_of(graph: Mapping[str, Sequence[str]]) -> list[list[str]]:
    """Steps of `graph` (step -> steps it needs) grouped into stages that run side by side.

    Stage 0 holds the steps that need nothing; each later stage holds the steps whose needs
    all lie in earlier stages, so a step sits one past the latest of its needs and nothing in
    a stage needs anything in it. Steps keep their declaration order within a stage. A cycle
    or an unknown need is a ValueError (WorkflowSpec rejects both before this is asked).
    """
    grouped: list[list[str]] = []
    placed: set[str] = set()
    remaining = list(graph)
    while remaining:  # each round places at least one step, or stops
        stage = [name for name in remaining if placed.issuperset(graph[name])]
        if not stage:
            raise ValueError(f"no stage order: a cycle or unknown need among {remaining}")
        grouped.append(stage)
        placed.update(stage)
        remaining = [name for name in remaining if name not in placed]
    return grouped


def find_cycle(graph: dict[str, tuple[str, ...]]) -> list[str]:
    """One cycle of `graph` (node -> nodes it needs) as a closed path, or [] if it is a DAG."""
    done: set[str] = set()
    for start in sorted(graph):
        path: list[str] = []
        on_path: set[str] = set()
        stack: list[tuple[str, int]] = [(start, 0)]
        while stack:
            node, index = stack.pop()
            if index == 0:
                if node in on_path:
                    return [*path[path.index(node) :], node]
                if node in done:
                    continue
                path.append(node)
                on_path.add(node)
            needs = graph.get(node, ())
            if index < len(needs):
                stack.append((node, index + 1))
                stack.append((needs[index], 0))
            else:
                done.add(node)
                on_path.discard(node)
                path.pop()
    return []
