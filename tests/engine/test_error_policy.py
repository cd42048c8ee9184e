"""The engine's one error policy: a busy store is waited out, a bug fails only its own task.

Faults are injected where the engine records work (`recording.apply` as the completion
path calls it, the dispatcher's context building); everything else is the real engine over the memory store.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any

import pytest
from structlog.testing import capture_logs

from orchestrator import completion, recording
from orchestrator.advance import Advance
from orchestrator.engine import Engine
from orchestrator.launcher import Contexts
from orchestrator.states import Outcome
from orchestrator.store import StoreUnavailable
from orchestrator.work import ReportWork, Work
from tests.engine import handlers
from tests.engine.conftest import awaiting_callbacks, run_to_end, workflow

MakeEngine = Callable[..., Engine]


def reports_of(batch: Sequence[Work]) -> list[ReportWork]:
    return [w for w in batch if isinstance(w, ReportWork) and w.report is not None]


async def test_a_busy_store_defers_the_engines_own_work_and_loses_none(
    make_engine: MakeEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Handler results that meet a busy store are recorded later, each exactly once."""
    real_apply = recording.apply
    refusals = Counter[str]()

    async def busy_twice(advance: Advance, batch: Sequence[Work]) -> list[Any]:
        if reports_of(batch) and refusals["busy"] < 2:
            refusals["busy"] += 1
            raise StoreUnavailable("database is locked")
        return await real_apply(advance, batch)

    monkeypatch.setattr(completion, "apply", busy_twice)
    engine = make_engine({"wf": workflow(fan={"handler": "echo", "for_each": "event.items"})})
    with capture_logs() as logs:
        finished = await run_to_end(engine, "wf", {"items": [1, 2, 3]})
    assert refusals["busy"] == 2
    assert finished.status == "succeeded"
    assert Counter(e.task_id for e in finished.of_type("task_succeeded")).most_common(1)[0][1] == 1
    assert len(finished.of_type("task_succeeded")) == 3
    deferred = [log for log in logs if log["event"] == "store_busy_deferred"]
    assert deferred, "the deferral is logged"
    assert all(log["retry_in"] > 0 for log in deferred), "with a backoff, never at once"


async def test_a_bug_recording_one_result_fails_only_that_task(
    make_engine: MakeEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A deterministic error while recording one handler's result fails that task, with the
    error in its history; its siblings in the same batch succeed; nothing loops."""
    real_apply = recording.apply
    calls = Counter[str]()

    async def bug_for_item_2(advance: Advance, batch: Sequence[Work]) -> list[Any]:
        for piece in reports_of(batch):
            assert piece.report is not None
            if piece.report.source == "handler" and piece.report.task.item == 2:
                calls["raised"] += 1
                raise KeyError("the bug")
        return await real_apply(advance, batch)

    monkeypatch.setattr(completion, "apply", bug_for_item_2)
    engine = make_engine(
        {
            "wf": workflow(
                fan={"handler": "echo", "for_each": "event.items", "on_failure": "collect"}
            )
        }
    )
    finished = await run_to_end(engine, "wf", {"items": [1, 2, 3]})
    assert finished.status == "failed"
    succeeded = {e.data["item"] for e in finished.of_type("task_succeeded")}
    (failed,) = finished.of_type("task_failed")
    assert succeeded == {"0", "2"}
    assert failed.data["item"] == "1"
    assert failed.data["source"] == "engine"
    assert "internal error while recording its result: KeyError" in failed.data["error"]
    assert calls["raised"] <= 2, "once in the batch, once alone: no retry loop"


async def test_a_bug_counts_toward_the_steps_retries(
    make_engine: MakeEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The failure an internal error makes is an attempt like any other: retries run it again."""
    real_apply = recording.apply
    raised = Counter[int]()

    async def bug_on_first_attempt(advance: Advance, batch: Sequence[Work]) -> list[Any]:
        for piece in reports_of(batch):
            assert piece.report is not None
            report = piece.report
            if report.source == "handler" and report.attempt == 1:
                raised[report.attempt] += 1
                raise ValueError("only on the first attempt")
        return await real_apply(advance, batch)

    monkeypatch.setattr(completion, "apply", bug_on_first_attempt)
    step = {"handler": "echo", "retries": 1, "backoff": "1ms", "for_each": "event.items"}
    engine = make_engine({"wf": workflow(one=step)})
    finished = await run_to_end(engine, "wf", {"items": ["x"]})
    assert finished.status == "succeeded"
    (failed,) = finished.of_type("task_attempt_failed")
    assert failed.data["attempt"] == 1
    assert "ValueError" in failed.data["error"]
    assert [e.data["attempt"] for e in finished.of_type("task_succeeded")] == [2]


async def test_a_bug_while_dispatching_fails_the_batch_with_the_error(
    make_engine: MakeEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An error building the handlers' contexts fails those tasks, named in their history."""

    async def broken(self: Contexts, tx: Any, started: Any) -> Any:
        raise RuntimeError("cannot build contexts")

    monkeypatch.setattr(Contexts, "build", broken)
    engine = make_engine({"wf": workflow(fan={"handler": "echo", "for_each": "event.items"})})
    finished = await run_to_end(engine, "wf", {"items": [1, 2]})
    assert finished.status == "failed"
    failures = finished.of_type("task_failed")
    assert failures, "fail-fast: the first failure may cancel its sibling"
    message = "could not be dispatched: RuntimeError: cannot build contexts"
    assert all(message in entry.data["error"] for entry in failures)
    assert not finished.of_type("task_dispatched"), "the failed dispatch committed nothing"


async def test_a_busy_store_answers_a_waiting_sender_at_once(
    make_engine: MakeEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A sender waiting for its work (a callback, an operator's report) hears StoreUnavailable
    at once, not after retries: it is answered 503 and retries itself."""

    async def always_busy(advance: Advance, batch: Sequence[Work]) -> list[Any]:
        raise StoreUnavailable("database is locked")

    engine = make_engine({"wf": workflow(one={"handler": "hand_off", "for_each": "event.items"})})
    await awaiting_callbacks(engine, "wf", 1)
    ctx = handlers.STATE.handed_off["0"]
    monkeypatch.setattr(completion, "apply", always_busy)
    async with asyncio.timeout(2):
        with pytest.raises(StoreUnavailable):
            await engine.report(ctx.task_id, 1, Outcome.SUCCEEDED, {"ok": True})
