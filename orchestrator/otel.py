"""OpenTelemetry spans for the tracer of tracing.py; imported only when OTEL_* asks for them.

With `opentelemetry-api` alone nothing is recorded (its tracer is a no-op), so this
adapter is used where the SDK is configured: by whatever set the global tracer provider
first (`opentelemetry-instrument`, the handlers' own set-up), or here from the usual
environment variables: OTEL_TRACES_EXPORTER (default `otlp`, comma-separated; the names
exporter packages register, such as `console`, or `otlp` from
`opentelemetry-exporter-otlp`), OTEL_SERVICE_NAME (default `orchestrator`),
OTEL_RESOURCE_ATTRIBUTES and each exporter's own settings. Spans go through a batch
processor, flushed when the process exits.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
from collections.abc import Iterator, Mapping
from typing import Any

import structlog
from opentelemetry import trace

from orchestrator.tracecontext import SAMPLED, TraceContext, TraceParent, TraceState
from orchestrator.tracing import Attribute, Span

log = structlog.get_logger("orchestrator.otel")

SERVICE_NAME = "orchestrator"
EXPORTER_GROUP = "opentelemetry_traces_exporter"


class OtelSpan:
    """A recording OpenTelemetry span, seen as the tracer protocol's Span."""

    def __init__(self, span: trace.Span, state: TraceState) -> None:
        self._span = span
        self._state = state

    @property
    def context(self) -> TraceContext | None:
        found = self._span.get_span_context()
        if not found.is_valid:
            return None
        parent = TraceParent(
            f"{found.trace_id:032x}", f"{found.span_id:016x}", int(found.trace_flags) & SAMPLED
        )
        return TraceContext(parent, self._state)

    def annotate(self, **attributes: Attribute) -> None:
        self._span.set_attributes(_attributes(attributes))


class OtelTracer:
    """Spans of an OpenTelemetry tracer, children of a W3C context the engine kept."""

    def __init__(self, tracer: trace.Tracer) -> None:
        self._tracer = tracer

    @contextlib.contextmanager
    def span(
        self,
        name: str,
        parent: TraceContext | None,
        *,
        start: float | None = None,
        **attributes: Attribute,
    ) -> Iterator[Span]:
        started = self._tracer.start_span(
            name,
            context=None if parent is None else _remote(parent),
            attributes=_attributes(attributes),
            start_time=None if start is None else round(start * 1e6) * 1000,  # to the µs
        )
        try:
            yield OtelSpan(started, () if parent is None else parent.state)
        except Exception as error:
            started.record_exception(error)
            started.set_status(trace.Status(trace.StatusCode.ERROR, type(error).__name__))
            raise
        finally:
            started.end()


def _remote(parent: TraceContext) -> Any:
    """An OpenTelemetry context whose current span is the (remote) W3C parent."""
    span_context = trace.SpanContext(
        trace_id=int(parent.parent.trace_id, 16),
        span_id=int(parent.parent.parent_id, 16),
        is_remote=True,
        trace_flags=trace.TraceFlags(parent.parent.flags),
        trace_state=trace.TraceState(list(parent.state)),
    )
    return trace.set_span_in_context(trace.NonRecordingSpan(span_context))


def _attributes(attributes: Mapping[str, Attribute]) -> dict[str, str | int | float | bool]:
    return {f"orchestrator.{key}": value for key, value in attributes.items() if value is not None}


def tracer_from_environment(environ: Mapping[str, str]) -> OtelTracer | None:
    """The tracer to export spans with, or None (with a warning saying what is missing)."""
    provider = trace.get_tracer_provider()
    if isinstance(provider, trace.ProxyTracerProvider):  # nobody configured the SDK yet
        made = _provider(environ)
        if made is None:
            return None
        trace.set_tracer_provider(made)
        provider = made
    log.info("tracing_enabled", provider=type(provider).__name__)
    return OtelTracer(provider.get_tracer("orchestrator"))


def _provider(environ: Mapping[str, str]) -> Any:
    try:
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor
    except ImportError:
        log.warning("tracing_unavailable", reason="OTEL_* is set but opentelemetry-sdk is not "
                    "installed (pip install 'orchestrator[otel]')")  # fmt: skip
        return None
    exporters = [_exporter(name) for name in _exporter_names(environ)]
    found = [exporter for exporter in exporters if exporter is not None]
    if not found:
        return None
    named = "OTEL_SERVICE_NAME" in environ or "service.name" in environ.get(
        "OTEL_RESOURCE_ATTRIBUTES", ""
    )
    provider = TracerProvider(
        resource=Resource.create({} if named else {"service.name": SERVICE_NAME})
    )
    for exporter in found:
        provider.add_span_processor(BatchSpanProcessor(exporter))
    return provider


def _exporter_names(environ: Mapping[str, str]) -> list[str]:
    names = environ.get("OTEL_TRACES_EXPORTER", "").strip().lower() or "otlp"
    return [name.strip() for name in names.split(",") if name.strip() not in ("", "none")]


def _exporter(name: str) -> Any:
    """The span exporter a package registered under `name`, made from its own settings."""
    for entry in importlib.metadata.entry_points(group=EXPORTER_GROUP, name=name):
        return entry.load()()
    log.warning("tracing_exporter_missing", exporter=name,
                reason="no installed package provides this span exporter (for otlp: pip "
                "install opentelemetry-exporter-otlp)")  # fmt: skip
    return None
