"""The Prometheus figures of one orchestrator process, in a registry of their own.

Each app holds its own `Metrics` (no global default registry), so tests and several apps in
one process never collide. The engine reports through the small typed methods below; none
of them does I/O. `status_checks_total` has no method at all: it is exported and stays 0,
beside `wakeups_total` of the timer heap, so "it never polls" is a figure on a dashboard.
Several replicas aggregate the usual Prometheus way: each is scraped on its own and its
series carry its `instance` label.
"""

from __future__ import annotations

from typing import Literal

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

NAMESPACE = "orchestrator"
CONTENT_TYPE = CONTENT_TYPE_LATEST

# Request handling and store transactions take micro- to milliseconds; tasks and joins wait
# on external services for seconds to hours.
FAST_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
SLOW_BUCKETS = (0.01, 0.1, 0.5, 1.0, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0, 14400.0)

DispatchResult = Literal["started", "failed"]


class Metrics:
    """Every figure `/metrics` exports; the methods are what the engine and the edge call."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        registry = self.registry
        self.callbacks = Counter(
            "callbacks",
            "Signed inbound POSTs (task callbacks, heartbeats, trigger hooks) by route and HTTP status.",
            ["route", "result"],
            namespace=NAMESPACE,
            registry=registry,
        )
        self.rejections = Counter(
            "rejections",
            "Requests the inbound routes refused before the engine saw them, by route and "
            "reason (the error answered: unknown_token, bad_signature, body_too_large, ...).",
            ["route", "reason"],
            namespace=NAMESPACE,
            registry=registry,
        )
        self.tasks_finished = Counter(
            "tasks_finished",
            "Tasks that reached a final state, by workflow, step and state.",
            ["workflow", "step", "state"],
            namespace=NAMESPACE,
            registry=registry,
        )
        self.dispatches = Counter(
            "dispatches",
            "Task starts: handler invoked (started) or hand-off refused (failed).",
            ["result"],
            namespace=NAMESPACE,
            registry=registry,
        )
        self.dispatch_retries = Counter(
            "dispatch_retries",
            "Hand-offs scheduled again after a connection error, 5xx or 429.",
            namespace=NAMESPACE,
            registry=registry,
        )
        self.barrier_openings = Counter(
            "barrier_openings",
            "Join barriers that opened, by workflow and step.",
            ["workflow", "step"],
            namespace=NAMESPACE,
            registry=registry,
        )
        self.timers_armed = Counter(
            "timers_armed",
            "Entries put on the timer heap (deadlines, retries, cron fires, rate wake-ups).",
            namespace=NAMESPACE,
            registry=registry,
        )
        self.wakeups = Counter(
            "wakeups",
            "Times the timer heap woke the process because an entry came due.",
            namespace=NAMESPACE,
            registry=registry,
        )
        self.status_checks = Counter(
            "status_checks",
            "Status checks made on pending work. Nothing polls, so this stays 0.",
            namespace=NAMESPACE,
            registry=registry,
        )
        self.store_transactions = Counter(
            "store_transactions",
            "Store transactions committed or rolled back.",
            namespace=NAMESPACE,
            registry=registry,
        )
        self.tasks_pending = Gauge(
            "tasks_pending",
            "Ready tasks this process holds waiting to start (limits, the running-handler cap).",
            namespace=NAMESPACE,
            registry=registry,
        )
        self.tasks_running = Gauge(
            "tasks_running",
            "Handler invocations running in this process (tasks awaiting callbacks run nowhere).",
            namespace=NAMESPACE,
            registry=registry,
        )
        self.store_transaction_seconds = Histogram(
            "store_transaction_seconds",
            "Time from a store transaction's start to its commit.",
            namespace=NAMESPACE,
            registry=registry,
            buckets=FAST_BUCKETS,
        )
        self.callback_seconds = Histogram(
            "callback_seconds",
            "Time to handle a signed inbound POST, from request to answer, by route.",
            ["route"],
            namespace=NAMESPACE,
            registry=registry,
            buckets=FAST_BUCKETS,
        )
        self.join_latency_seconds = Histogram(
            "join_latency_seconds",
            "Time from a barrier's last completion to the dispatch of the step waiting on it.",
            namespace=NAMESPACE,
            registry=registry,
            buckets=FAST_BUCKETS,
        )
        self.task_duration_seconds = Histogram(
            "task_duration_seconds",
            "Time a task ran: from its start to its final state (its wait to start apart).",
            namespace=NAMESPACE,
            registry=registry,
            buckets=SLOW_BUCKETS,
        )
        # The callback path is the hot one: its labelled series are looked up once each.
        self._callback_children: dict[tuple[str, int], tuple[Counter, Histogram]] = {}
        self._rejection_children: dict[tuple[str, str], Counter] = {}

    def callback(self, route: str, status: int, seconds: float) -> None:
        """A signed inbound POST was answered: `route` is its template, `status` the answer."""
        children = self._callback_children.get((route, status))
        if children is None:
            children = (
                self.callbacks.labels(route, str(status)),
                self.callback_seconds.labels(route),
            )
            self._callback_children[(route, status)] = children
        counted, timed = children
        counted.inc()
        timed.observe(seconds)

    def rejected(self, route: str, reason: str) -> None:
        """A request to `route` (its template) was refused for `reason`, an error code of
        the code's own (never a value the client sent): the series stay few."""
        counter = self._rejection_children.get((route, reason))
        if counter is None:
            counter = self._rejection_children[(route, reason)] = self.rejections.labels(
                route, reason
            )
        counter.inc()

    def task_finished(self, workflow: str, step: str, state: str, duration: float | None) -> None:
        """A task reached a final state; `duration` is dispatch to finish, if it was dispatched."""
        self.tasks_finished.labels(workflow, step, state).inc()
        if duration is not None:
            self.task_duration_seconds.observe(duration)

    def dispatched(self, result: DispatchResult, count: int = 1) -> None:
        self.dispatches.labels(result).inc(count)

    def dispatch_retried(self) -> None:
        self.dispatch_retries.inc()

    def barrier_opened(self, workflow: str, step: str) -> None:
        self.barrier_openings.labels(workflow, step).inc()

    def joined(self, seconds: float) -> None:
        """A step whose barrier opened was dispatched `seconds` after the last completion."""
        self.join_latency_seconds.observe(seconds)

    def store_transaction(self, seconds: float) -> None:
        self.store_transactions.inc()
        self.store_transaction_seconds.observe(seconds)

    def timer_armed(self) -> None:
        self.timers_armed.inc()

    def timer_woke(self) -> None:
        self.wakeups.inc()

    def exposition(self) -> bytes:
        """The registry in the Prometheus text format."""
        return generate_latest(self.registry)
