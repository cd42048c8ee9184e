"""The metrics object: each method moves exactly its series; routes are named by template."""

from __future__ import annotations

import asyncio
import time

import pytest

from orchestrator.instrument import inbound_route
from orchestrator.metrics import Metrics
from orchestrator.timers import TimerHeap


def value(metrics: Metrics, name: str, **labels: str) -> float | None:
    return metrics.registry.get_sample_value(name, labels)


def test_status_checks_are_exported_at_zero_and_nothing_can_raise_them() -> None:
    """The figure that shows nothing polls is there from the start, at 0, with no method."""
    metrics = Metrics()
    assert value(metrics, "orchestrator_status_checks_total") == 0.0
    assert not [name for name in dir(metrics) if "status_check" in name and name != "status_checks"]
    assert b"orchestrator_status_checks_total 0.0" in metrics.exposition()


def test_every_listed_figure_is_exported() -> None:
    """Every counter, gauge and histogram the issue lists has its family in the exposition."""
    text = Metrics().exposition().decode()
    for family, kind in [
        ("callbacks", "counter"),
        ("tasks_finished", "counter"),
        ("dispatches", "counter"),
        ("dispatch_retries", "counter"),
        ("barrier_openings", "counter"),
        ("timers_armed", "counter"),
        ("wakeups", "counter"),
        ("status_checks", "counter"),
        ("store_transactions", "counter"),
        ("tasks_pending", "gauge"),
        ("tasks_running", "gauge"),
        ("store_transaction_seconds", "histogram"),
        ("callback_seconds", "histogram"),
        ("join_latency_seconds", "histogram"),
        ("task_duration_seconds", "histogram"),
    ]:
        exported = f"orchestrator_{family}_total" if kind == "counter" else f"orchestrator_{family}"
        assert f"# TYPE {exported} {kind}" in text, family


def test_callback_counts_by_route_and_status_and_times_it() -> None:
    """One answered callback is one count under its route and status, one observation."""
    metrics = Metrics()
    metrics.callback("/callbacks/{token}", 200, 0.002)
    metrics.callback("/callbacks/{token}", 404, 0.001)
    metrics.callback("/callbacks/{token}", 200, 0.003)
    counted = "orchestrator_callbacks_total"
    assert value(metrics, counted, route="/callbacks/{token}", result="200") == 2.0
    assert value(metrics, counted, route="/callbacks/{token}", result="404") == 1.0
    timed = "orchestrator_callback_seconds_count"
    assert value(metrics, timed, route="/callbacks/{token}") == 3.0
    total = value(metrics, "orchestrator_callback_seconds_sum", route="/callbacks/{token}")
    assert total == pytest.approx(0.006)


def test_task_finished_counts_by_workflow_step_state_and_observes_duration() -> None:
    """A finished task counts under its labels; its duration is observed only if it ran."""
    metrics = Metrics()
    metrics.task_finished("wf", "research", "succeeded", 1.5)
    metrics.task_finished("wf", "research", "cancelled", None)
    counted = "orchestrator_tasks_finished_total"
    assert value(metrics, counted, workflow="wf", step="research", state="succeeded") == 1.0
    assert value(metrics, counted, workflow="wf", step="research", state="cancelled") == 1.0
    assert value(metrics, "orchestrator_task_duration_seconds_count") == 1.0
    assert value(metrics, "orchestrator_task_duration_seconds_sum") == 1.5


def test_engine_methods_move_their_own_series() -> None:
    """Dispatches, retries, barriers, joins and transactions each land where named."""
    metrics = Metrics()
    metrics.dispatched("started", count=30)
    metrics.dispatched("failed")
    metrics.dispatch_retried()
    metrics.barrier_opened("wf", "research")
    metrics.joined(0.004)
    metrics.store_transaction(0.001)
    metrics.store_transaction(0.002)
    assert value(metrics, "orchestrator_dispatches_total", result="started") == 30.0
    assert value(metrics, "orchestrator_dispatches_total", result="failed") == 1.0
    assert value(metrics, "orchestrator_dispatch_retries_total") == 1.0
    assert (
        value(metrics, "orchestrator_barrier_openings_total", workflow="wf", step="research") == 1.0
    )
    assert value(metrics, "orchestrator_join_latency_seconds_count") == 1.0
    assert value(metrics, "orchestrator_store_transactions_total") == 2.0
    assert value(metrics, "orchestrator_store_transaction_seconds_count") == 2.0
    assert value(metrics, "orchestrator_status_checks_total") == 0.0


def test_two_metrics_objects_never_share_a_series() -> None:
    """Each holds its own registry: several apps in one process count separately."""
    first, second = Metrics(), Metrics()
    first.timer_woke()
    assert value(first, "orchestrator_wakeups_total") == 1.0
    assert value(second, "orchestrator_wakeups_total") == 0.0


async def test_the_timer_heap_reports_entries_armed_and_wakeups() -> None:
    """Three entries due together are three timers armed and one wake-up, not three."""
    metrics = Metrics()
    heap = TimerHeap()
    heap.observe(metrics)
    fired = 0
    done = asyncio.Event()

    async def fire() -> None:
        nonlocal fired
        fired += 1
        if fired == 3:
            done.set()

    due = time.time() + 0.01
    for key in "abc":
        heap.schedule(key, due, fire)
    async with asyncio.timeout(5):
        await done.wait()
    await heap.close()
    assert value(metrics, "orchestrator_timers_armed_total") == 3.0
    assert value(metrics, "orchestrator_wakeups_total") == 1.0


@pytest.mark.parametrize(
    ("path", "route"),
    [
        ("/callbacks/abc", "/callbacks/{token}"),
        ("/callbacks/abc/heartbeat", "/callbacks/{token}/heartbeat"),
        ("/hooks/github_push", "/hooks/{trigger}"),
        ("/callbacks/", None),
        ("/callbacks", None),
        ("/callbacks/abc/other", None),
        ("/callbacks/abc/heartbeat/x", None),
        ("/hooks/a/b", None),
        ("/hooks/", None),
        ("/admin/runs", None),
        ("/metrics", None),
        ("/", None),
        ("callbacks/abc", None),
    ],
)
def test_inbound_routes_are_named_by_template(path: str, route: str | None) -> None:
    """Callback, heartbeat and hook paths map to their template; every other path to None."""
    assert inbound_route(path) == route
