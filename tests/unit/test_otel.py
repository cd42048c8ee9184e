"""The OpenTelemetry adapter against the real SDK: parents, ids, times, errors, attributes."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import StatusCode

from orchestrator.otel import OtelTracer
from orchestrator.tracecontext import TraceContext, TraceParent

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT_ID = "00f067aa0ba902b7"
SENDER = TraceContext(TraceParent(TRACE_ID, PARENT_ID, 1), (("congo", "t61rcWkgMzE"),))


@pytest.fixture
def exported() -> Iterator[InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    yield exporter
    exporter.clear()


@pytest.fixture
def tracer(exported: InMemorySpanExporter) -> OtelTracer:
    """A tracer of its own provider (not the global one), exporting as each span ends."""
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exported))
    return OtelTracer(provider.get_tracer("tests"))


def only(exported: InMemorySpanExporter) -> ReadableSpan:
    (span,) = exported.get_finished_spans()
    return span


def test_a_span_continues_the_senders_trace(
    tracer: OtelTracer, exported: InMemorySpanExporter
) -> None:
    """A span under a received context has its trace id and its parent, and its own context
    (what is sent on) names the span itself, with the tracestate passed through."""
    with tracer.span("fire", SENDER, trigger="leads") as span:
        own = span.context
    finished = only(exported)
    assert finished.name == "fire"
    assert f"{finished.context.trace_id:032x}" == TRACE_ID
    assert finished.parent is not None
    assert f"{finished.parent.span_id:016x}" == PARENT_ID
    assert own is not None
    assert own.parent.trace_id == TRACE_ID
    assert own.parent.parent_id == f"{finished.context.span_id:016x}"
    assert own.parent.sampled
    assert own.state == SENDER.state
    assert dict(finished.attributes or {}) == {"orchestrator.trigger": "leads"}


def test_a_span_of_no_trace_starts_one(tracer: OtelTracer, exported: InMemorySpanExporter) -> None:
    """Without a received context the span is a root, and its context a new trace."""
    with tracer.span("callback", None) as span:
        own = span.context
    finished = only(exported)
    assert finished.parent is None
    assert own is not None
    assert own.parent.trace_id == f"{finished.context.trace_id:032x}"


def test_a_join_span_starts_when_it_is_told(
    tracer: OtelTracer, exported: InMemorySpanExporter
) -> None:
    """`start` (epoch seconds) is the span's start; None attributes are left out."""
    with tracer.span("join", SENDER, start=1_700_000_000.25, step="draft", needs=None):
        pass
    finished = only(exported)
    assert finished.start_time == 1_700_000_000_250_000_000
    assert dict(finished.attributes or {}) == {"orchestrator.step": "draft"}


def test_an_error_inside_marks_the_span(tracer: OtelTracer, exported: InMemorySpanExporter) -> None:
    """An exception raised inside the span ends it as an error, and still propagates."""
    with pytest.raises(ValueError, match="broken"), tracer.span("dispatch", SENDER):
        raise ValueError("broken")
    finished = only(exported)
    assert finished.status.status_code is StatusCode.ERROR
    assert [event.name for event in finished.events] == ["exception"]


def test_attributes_can_be_added_before_the_end(
    tracer: OtelTracer, exported: InMemorySpanExporter
) -> None:
    """What is learnt inside the span (the run it started, a status) is on the span."""
    with tracer.span("fire", SENDER) as span:
        span.annotate(run_id="run_1", duplicate=False, missing=None)
    assert dict(only(exported).attributes or {}) == {
        "orchestrator.run_id": "run_1",
        "orchestrator.duplicate": False,
    }


def test_an_unsampled_sender_keeps_the_flag(
    tracer: OtelTracer, exported: InMemorySpanExporter
) -> None:
    """A sender that did not sample: nothing is exported, the context sent on says unsampled."""
    unsampled = TraceContext(TraceParent(TRACE_ID, PARENT_ID, 0))
    with tracer.span("dispatch", unsampled) as span:
        own = span.context
    assert exported.get_finished_spans() == ()
    assert own is not None
    assert (own.parent.trace_id, own.parent.sampled) == (TRACE_ID, False)
    assert own.parent.parent_id != PARENT_ID
