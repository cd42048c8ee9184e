"""Trace context in the engine: what is kept with an event, logged, and sent on; and spans.

The W3C rules are in tracecontext.py; this module is where the engine meets them:

* A request's valid `traceparent` (and `tracestate`) is kept with the event it creates
  (`Event.traceparent`, `Event.tracestate`); an invalid or absent one is ignored, never an
  error, never stored. Each task of a run continues its event's trace under a span of its
  own, which is what `ctx.dispatch` sends on as the parent.
* Spans (fire, dispatch, callback, join) are exported only where OpenTelemetry is
  installed and configured by the usual OTEL_* environment variables (otel.py, imported
  only then); elsewhere the tracer here records nothing and imports nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import os
from collections.abc import Iterable, Iterator, Mapping, MutableMapping
from typing import Any, Protocol

import structlog

from orchestrator.tracecontext import (
    TraceContext,
    extract,
    format_tracestate,
    parse_traceparent,
    parse_tracestate,
)

Attribute = str | int | float | bool | None

log = structlog.get_logger("orchestrator.tracing")


def from_headers(headers: Iterable[tuple[str, str]]) -> TraceContext | None:
    """The trace context a request continues, or None (absent, duplicated or invalid)."""
    return extract(headers)


def stored(trace: TraceContext | None) -> tuple[str | None, str | None]:
    """(traceparent, tracestate) as kept with an event; an empty tracestate is None."""
    if trace is None:
        return None, None
    return trace.parent.header(), format_tracestate(trace.state) or None


def restored(traceparent: str | None, tracestate: str | None) -> TraceContext | None:
    """The context kept by `stored`; None if there is none (or it no longer parses)."""
    parent = parse_traceparent(traceparent) if traceparent else None
    if parent is None:
        return None
    return TraceContext(parent, parse_tracestate([tracestate]) if tracestate else ())


def trace_data(trace: TraceContext | None) -> dict[str, str]:
    """What a history entry carries of a trace: its id, or nothing when there is none."""
    return {} if trace is None else {"trace_id": trace.parent.trace_id}


def received_data(trace: TraceContext | None) -> dict[str, str]:
    """What a history entry carries of a request's trace: its id and the `traceparent`."""
    if trace is None:
        return {}
    return {"trace_id": trace.parent.trace_id, "traceparent": trace.parent.header()}


# The asyncio task that bound `trace_id`: tasks and timer callbacks started meanwhile copy
# every context variable, and a batch or a timer serving other requests later must not log
# this request's trace id (`own_trace_only`).
_binder: contextvars.ContextVar[int | None] = contextvars.ContextVar("trace_binder", default=None)


def _task_key() -> int | None:
    """The current asyncio task's identity; None outside one (a handler's worker thread)."""
    try:
        return id(asyncio.current_task())
    except RuntimeError:
        return None


def bind(trace: TraceContext | None) -> None:
    """Log lines of the current task (and of threads it runs a handler in) carry the
    trace's `trace_id` from now on; none at all if `trace` is None."""
    if trace is None:
        structlog.contextvars.unbind_contextvars("trace_id")
        _binder.set(None)
        return
    structlog.contextvars.bind_contextvars(trace_id=trace.parent.trace_id)
    _binder.set(_task_key())


@contextlib.contextmanager
def logged(trace: TraceContext | None) -> Iterator[None]:
    """Log lines written inside carry the trace's `trace_id` (structlog context variables)."""
    if trace is None:
        yield
        return
    binder = _binder.set(_task_key())
    try:
        with structlog.contextvars.bound_contextvars(trace_id=trace.parent.trace_id):
            yield
    finally:
        _binder.reset(binder)


def own_trace_only(_logger: Any, _method: str, event: MutableMapping[str, Any]) -> Any:
    """A structlog processor: drop a `trace_id` inherited by a task that did not bind it
    (work a request woke, such as a completion batch, serves other requests too)."""
    if "trace_id" in event:
        key = _task_key()
        if key is not None and key != _binder.get():
            del event["trace_id"]
    return event


# -- spans ---------------------------------------------------------------------------------


class Span(Protocol):
    """A span being recorded: its own context (None where nothing records) and attributes."""

    @property
    def context(self) -> TraceContext | None: ...

    def annotate(self, **attributes: Attribute) -> None: ...


class Tracer(Protocol):
    def span(
        self,
        name: str,
        parent: TraceContext | None,
        *,
        start: float | None = None,
        **attributes: Attribute,
    ) -> contextlib.AbstractContextManager[Span]:
        """A span named `name`, a child of `parent` (a new trace if None), from `start`
        (epoch seconds; now if None) to the end of the `with` block."""
        ...


class _Unrecorded:
    context: TraceContext | None = None

    def annotate(self, **attributes: Attribute) -> None:
        return None


class NoTracer:
    """Records nothing: the tracer wherever OpenTelemetry is not configured."""

    @contextlib.contextmanager
    def span(
        self,
        name: str,
        parent: TraceContext | None,
        *,
        start: float | None = None,
        **attributes: Attribute,
    ) -> Iterator[Span]:
        yield _Unrecorded()


def own_context(span: Span, parent: TraceContext | None) -> TraceContext | None:
    """The context of work done under `span`: the span's own where it is recorded, else a
    child of `parent` with a new span id (a span nobody records, as W3C asks), else None."""
    if span.context is not None:
        return span.context
    return None if parent is None else parent.child()


OTEL_ENDPOINTS = ("OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")


def otel_wanted(environ: Mapping[str, str]) -> bool:
    """Whether the environment asks for exported spans: an OTEL_TRACES_EXPORTER other than
    `none`, or an OTLP endpoint; and the SDK not disabled (OTEL_SDK_DISABLED)."""
    if environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return False
    exporter = environ.get("OTEL_TRACES_EXPORTER", "").strip().lower()
    if exporter:
        return exporter != "none"
    return any(environ.get(name, "").strip() for name in OTEL_ENDPOINTS)


_tracer: Tracer | None = None


def current() -> Tracer:
    """The process's tracer, chosen from the environment on first use."""
    global _tracer
    if _tracer is None:
        _tracer = _from_environment(os.environ)
    return _tracer


def use(tracer: Tracer | None) -> None:
    """Install `tracer` for this process (None: choose from the environment again)."""
    global _tracer
    _tracer = tracer


def _from_environment(environ: Mapping[str, str]) -> Tracer:
    if not otel_wanted(environ):
        return NoTracer()
    try:  # only here: a process without OTEL_* imports none of OpenTelemetry
        from orchestrator import otel
    except ImportError:
        log.warning("tracing_unavailable", reason="OTEL_* is set but opentelemetry is not "
                    "installed (pip install 'orchestrator[otel]')")  # fmt: skip
        return NoTracer()
    return otel.tracer_from_environment(environ) or NoTracer()
