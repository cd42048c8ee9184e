"""The one spec cache: bounded, least recently used first out, parsed specs shared."""

from __future__ import annotations

import asyncio
from collections.abc import Collection
from typing import Any

from orchestrator.model import WorkflowSpec
from orchestrator.records import Run
from orchestrator.specs import SpecCache
from orchestrator.states import RunState

SPEC: dict[str, Any] = {"steps": {"a": {"handler": "handlers.outreach:fetch_leads"}}}
OTHER: dict[str, Any] = {"steps": {"b": {"handler": "handlers.outreach:summary"}}}


def run(number: int, spec: dict[str, Any] = SPEC) -> Run:
    return Run(f"run_{number:05d}", "wf", f"evt_{number:05d}", RunState.RUNNING, 0.0, spec)


class Source:
    """Runs by id, counting how often it is asked."""

    def __init__(self, runs: list[Run]) -> None:
        self.runs_by_id = {r.id: r for r in runs}
        self.asked: list[set[str]] = []

    async def runs(self, run_ids: Collection[str]) -> dict[str, Run]:
        self.asked.append(set(run_ids))
        return {i: self.runs_by_id[i] for i in run_ids if i in self.runs_by_id}


def test_the_cache_holds_at_most_its_size_dropping_the_least_recently_used() -> None:
    """After more runs than it holds, the cache keeps its size and the most recent runs."""
    cache = SpecCache(runs=100)
    for number in range(1500):
        cache.info(run(number))
        if number >= 10:
            cache.info(run(10))  # used again and again: stays
    assert len(cache) == 100
    source = Source([])
    loaded = asyncio.run(cache.load(source, {"run_00010", "run_01499"}))
    assert set(loaded) == {"run_00010", "run_01499"}
    assert source.asked == [], "both were still cached"


def test_runs_fired_from_one_workflow_version_share_one_parsed_spec() -> None:
    """Parsing is per distinct snapshot, not per run; another snapshot parses apart."""
    cache = SpecCache()
    first, second, other = cache.info(run(1)), cache.info(run(2)), cache.info(run(3, OTHER))
    assert first.spec is second.spec
    assert other.spec is not first.spec
    assert isinstance(first.spec, WorkflowSpec)


def test_missing_runs_are_read_in_one_request() -> None:
    """load() asks the store once for every run it does not hold, and caches them."""
    cache = SpecCache()
    source = Source([run(1), run(2), run(3)])
    cache.info(run(1))
    loaded = asyncio.run(cache.load(source, {"run_00001", "run_00002", "run_00003"}))
    assert set(loaded) == {"run_00001", "run_00002", "run_00003"}
    assert source.asked == [{"run_00002", "run_00003"}]
    asyncio.run(cache.load(source, {"run_00002"}))
    assert len(source.asked) == 1
