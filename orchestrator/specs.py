"""The one cache of run specs: what a run was fired with, parsed once, bounded in size.

A run keeps a JSON snapshot of its workflow as it was fired, so a config edit never
changes a run in flight. Completing a task needs that snapshot's step options (retries,
timeouts, limits), so the parsed spec of each run is cached here: a least-recently-used
map from run id to the run's immutable facts. Most runs share a workflow version, so
parsed specs are shared between runs with the same snapshot.
"""

from __future__ import annotations

import json
from collections import OrderedDict
from collections.abc import Collection
from dataclasses import dataclass
from typing import Protocol

from orchestrator.model import StepSpec, WorkflowSpec
from orchestrator.records import Run

RUNS = 4096
SPECS = 64


@dataclass(frozen=True, slots=True)
class RunInfo:
    """What never changes about a run: its workflow, the event it came from, its spec."""

    run_id: str
    workflow: str
    event_id: str
    spec: WorkflowSpec

    def step(self, name: str) -> StepSpec:
        return self.spec.steps[name]


class RunSource(Protocol):
    async def runs(self, run_ids: Collection[str]) -> dict[str, Run]: ...


class SpecCache:
    def __init__(self, runs: int = RUNS, specs: int = SPECS) -> None:
        self._runs: OrderedDict[str, RunInfo] = OrderedDict()
        self._specs: OrderedDict[str, WorkflowSpec] = OrderedDict()
        self._max_runs = runs
        self._max_specs = specs

    def __len__(self) -> int:
        return len(self._runs)

    def peek(self, run_id: str) -> RunInfo | None:
        """The run's facts if cached, without counting it as a use."""
        return self._runs.get(run_id)

    def info(self, run: Run, spec: WorkflowSpec | None = None) -> RunInfo:
        """The run's facts, cached; `spec` spares parsing when the caller has it already."""
        info = self._runs.get(run.id)
        if info is None:
            info = RunInfo(run.id, run.workflow, run.event_id, spec or self._parsed(run))
            self._runs[run.id] = info
            if len(self._runs) > self._max_runs:
                self._runs.popitem(last=False)
        else:
            self._runs.move_to_end(run.id)
        return info

    def _parsed(self, run: Run) -> WorkflowSpec:
        text = json.dumps(run.spec, sort_keys=True, separators=(",", ":"))
        spec = self._specs.get(text)
        if spec is None:
            spec = self._specs[text] = WorkflowSpec.model_validate(run.spec)
            if len(self._specs) > self._max_specs:
                self._specs.popitem(last=False)
        else:
            self._specs.move_to_end(text)
        return spec

    async def load(self, source: RunSource, run_ids: Collection[str]) -> dict[str, RunInfo]:
        """The facts of these runs: from the cache, the missing ones in one read."""
        found: dict[str, RunInfo] = {}
        missing = []
        for run_id in run_ids:
            info = self._runs.get(run_id)
            if info is None:
                missing.append(run_id)
            else:
                self._runs.move_to_end(run_id)
                found[run_id] = info
        if missing:
            for run in (await source.runs(missing)).values():
                found[run.id] = self.info(run)
        return found
