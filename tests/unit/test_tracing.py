"""Trace context in the engine: what is kept, logged and sent on, and when spans are made."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from dataclasses import replace

import httpx
import pytest
import respx
import structlog
from structlog.testing import capture_logs

from orchestrator import tracing
from orchestrator.tracecontext import TraceContext, TraceParent, parse_traceparent
from orchestrator.tracing import NoTracer, from_headers, own_context, restored, stored
from tests.unit.test_handoff_http import URL, make_context

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT_ID = "00f067aa0ba902b7"
TRACEPARENT = f"00-{TRACE_ID}-{PARENT_ID}-01"
TRACESTATE = "congo=t61rcWkgMzE,rojo=00f067aa0ba902b7"
TRACE = TraceContext(TraceParent(TRACE_ID, PARENT_ID, 1), (("congo", "t61rcWkgMzE"),))


def headers_of(*pairs: tuple[str, str]) -> list[tuple[str, str]]:
    return list(pairs)


# -- propagation: parse -> child -> header --------------------------------------------------


def test_a_received_trace_is_sent_on_with_a_new_parent_id() -> None:
    """Parsed from a request and continued without a recorder, the trace keeps its id,
    sampled flag and tracestate, and gets a new parent id of 16 hex digits."""
    received = from_headers(headers_of(("TraceParent", TRACEPARENT), ("tracestate", TRACESTATE)))
    assert received is not None
    with NoTracer().span("dispatch", received) as span:
        continued = own_context(span, received)
    assert continued is not None
    sent = continued.headers()
    parent = parse_traceparent(sent["traceparent"])
    assert parent is not None
    assert (parent.trace_id, parent.sampled) == (TRACE_ID, True)
    assert parent.parent_id not in (PARENT_ID, "0" * 16)
    assert sent["tracestate"] == TRACESTATE


@pytest.mark.parametrize(
    "value",
    [
        f"ff-{TRACE_ID}-{PARENT_ID}-01",  # version ff is invalid
        f"00-{'0' * 32}-{PARENT_ID}-01",  # all-zero trace id
        f"00-{TRACE_ID}-{'0' * 16}-01",  # all-zero parent id
        f"00-{TRACE_ID.upper()}-{PARENT_ID}-01",  # uppercase hex
        f"00-{TRACE_ID}-{PARENT_ID}-01-extra",  # version 00 has exactly four fields
        "garbage",
        "",
    ],
)
def test_an_invalid_traceparent_is_no_trace(value: str) -> None:
    """An invalid traceparent continues nothing, and its tracestate goes with it."""
    assert from_headers(headers_of(("traceparent", value), ("tracestate", TRACESTATE))) is None


def test_two_traceparents_are_no_trace() -> None:
    """A request with two traceparent headers continues neither."""
    assert (
        from_headers(headers_of(("traceparent", TRACEPARENT), ("traceparent", TRACEPARENT))) is None
    )


def test_a_future_version_is_read_leniently_and_sent_as_00() -> None:
    """A later version's extra fields are skipped, only `sampled` of its flags kept."""
    received = from_headers(headers_of(("traceparent", f"cc-{TRACE_ID}-{PARENT_ID}-ff-what")))
    assert received is not None
    assert stored(received)[0] == f"00-{TRACE_ID}-{PARENT_ID}-01"


def test_an_invalid_tracestate_is_dropped_and_the_traceparent_kept() -> None:
    """A tracestate with a bad member is dropped whole; the traceparent still counts."""
    received = from_headers(headers_of(("traceparent", TRACEPARENT), ("tracestate", "A=1")))
    assert received is not None
    assert stored(received) == (TRACEPARENT, None)


def test_a_tracestate_of_33_members_is_dropped() -> None:
    """More than 32 tracestate members make the header invalid, as W3C says."""
    members = ",".join(f"k{n}=v" for n in range(33))
    received = from_headers(headers_of(("traceparent", TRACEPARENT), ("tracestate", members)))
    assert received is not None
    assert received.state == ()


def test_a_long_tracestate_is_kept_cut_to_512_characters() -> None:
    """32 members of 256-character values are valid, but an event keeps at most 512
    characters of them, cut by whole members (long ones from the right first)."""
    members = ",".join(f"k{n}={'v' * 256}" for n in range(31)) + ",short=1"
    received = from_headers(headers_of(("traceparent", TRACEPARENT), ("tracestate", members)))
    assert received is not None
    assert len(received.state) == 32
    _, kept = stored(received)
    assert kept == f"k0={'v' * 256},short=1"


def test_a_stored_trace_reads_back_as_it_was() -> None:
    """What an event keeps of a trace restores to the same context; none restores to None."""
    assert restored(*stored(TRACE)) == TRACE
    assert stored(None) == (None, None)
    assert restored(None, None) is None
    assert restored("not a traceparent", TRACESTATE) is None


def test_history_shows_the_trace_id_and_a_callbacks_traceparent() -> None:
    """Entries carry `trace_id` only where there is a trace; a callback's also its header."""
    assert tracing.trace_data(TRACE) == {"trace_id": TRACE_ID}
    assert tracing.trace_data(None) == {}
    assert tracing.received_data(TRACE) == {"trace_id": TRACE_ID, "traceparent": TRACEPARENT}
    assert tracing.received_data(None) == {}


def test_without_a_trace_and_without_a_recorder_there_is_no_context() -> None:
    """Work under an unrecorded span of no trace has no context to send on."""
    with NoTracer().span("dispatch", None) as span:
        assert own_context(span, None) is None


# -- ctx.dispatch ----------------------------------------------------------------------------


@pytest.fixture
def router() -> Iterator[respx.MockRouter]:
    with respx.mock(assert_all_mocked=True) as mock:
        yield mock


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient() as client:
        yield client


async def test_dispatch_sends_the_tasks_trace(
    router: respx.MockRouter, http: httpx.AsyncClient
) -> None:
    """ctx.dispatch sends the task's traceparent and tracestate beside its idempotency key."""
    route = router.post(URL).respond(202)
    ctx = make_context(http)
    task_trace = TRACE.child()
    await replace(ctx, trace=task_trace).dispatch(URL, json={})
    sent = route.calls.last.request.headers
    assert sent["traceparent"] == task_trace.parent.header()
    assert sent["tracestate"] == "congo=t61rcWkgMzE"
    assert sent["idempotency-key"] == ctx.idempotency_key


async def test_a_handlers_own_traceparent_wins(
    router: respx.MockRouter, http: httpx.AsyncClient
) -> None:
    """A traceparent the handler set (any case) is sent as it is, without the task's tracestate."""
    route = router.post(URL).respond(202)
    own = f"00-{'1' * 32}-{'2' * 16}-00"
    ctx = replace(make_context(http), trace=TRACE)
    await ctx.dispatch(URL, json={}, headers={"TraceParent": own})
    sent = route.calls.last.request.headers
    assert sent.get_list("traceparent") == [own]
    assert "tracestate" not in sent


async def test_dispatch_without_a_trace_sends_none(
    router: respx.MockRouter, http: httpx.AsyncClient
) -> None:
    """A task whose event came with no trace sends no traceparent."""
    route = router.post(URL).respond(202)
    await make_context(http).dispatch(URL, json={})
    assert "traceparent" not in route.calls.last.request.headers


# -- logs --------------------------------------------------------------------------------------


LOG_PROCESSORS = [structlog.contextvars.merge_contextvars, tracing.own_trace_only]


async def test_log_lines_inside_a_request_carry_its_trace_id() -> None:
    """Inside `logged`, log lines carry trace_id; after it, none do."""
    log = structlog.get_logger("tests.tracing")
    with capture_logs(processors=LOG_PROCESSORS) as logs:
        with tracing.logged(TRACE):
            log.info("inside")
        log.info("after")
    assert [(line["event"], line.get("trace_id")) for line in logs] == [
        ("inside", TRACE_ID),
        ("after", None),
    ]


async def test_work_a_request_woke_does_not_log_its_trace_id() -> None:
    """A task started inside a request (a completion batch) logs no inherited trace_id."""
    log = structlog.get_logger("tests.tracing")

    async def batch() -> None:
        log.info("batch")

    with capture_logs(processors=LOG_PROCESSORS) as logs:
        with tracing.logged(TRACE):
            woken = asyncio.ensure_future(batch())
        await woken
    assert logs == [{"event": "batch", "log_level": "info"}]


async def test_a_bound_trace_reaches_the_handlers_thread() -> None:
    """A trace bound by the launcher's task is in the log lines of the thread it runs."""
    log = structlog.get_logger("tests.tracing")

    async def launch() -> None:
        tracing.bind(TRACE)
        await asyncio.to_thread(log.info, "in_thread")
        tracing.bind(None)
        log.info("unbound")

    with capture_logs(processors=LOG_PROCESSORS) as logs:
        await asyncio.ensure_future(launch())
    assert [(line["event"], line.get("trace_id")) for line in logs] == [
        ("in_thread", TRACE_ID),
        ("unbound", None),
    ]


# -- choosing a tracer -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("environ", "wanted"),
    [
        ({}, False),
        ({"OTEL_SERVICE_NAME": "orchestrator"}, False),
        ({"OTEL_TRACES_EXPORTER": "console"}, True),
        ({"OTEL_TRACES_EXPORTER": "none"}, False),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318"}, True),
        ({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://collector:4318/v1/traces"}, True),
        ({"OTEL_TRACES_EXPORTER": "otlp", "OTEL_SDK_DISABLED": "true"}, False),
    ],
)
def test_spans_are_wanted_only_where_otel_is_configured(
    environ: dict[str, str], wanted: bool
) -> None:
    """An exporter or an OTLP endpoint asks for spans, unless the SDK is disabled."""
    assert tracing.otel_wanted(environ) is wanted


def _imports(environ: dict[str, str]) -> dict[str, object]:
    """In a fresh interpreter: the tracer chosen and whether OpenTelemetry was imported."""
    script = (
        "import json, sys\n"
        "from orchestrator import tracing\n"
        "tracer = tracing.current()\n"
        "print(json.dumps({'tracer': type(tracer).__name__,"
        " 'otel': any(m.startswith('opentelemetry') for m in sys.modules)}))\n"
    )
    done = subprocess.run(  # noqa: S603 - this interpreter on a fixed script
        [sys.executable, "-c", script], env={**_clean_environ(), **environ},
        capture_output=True, text=True, timeout=60, check=True,
    )  # fmt: skip
    last: dict[str, object] = json.loads(done.stdout.strip().splitlines()[-1])
    return last


def _clean_environ() -> dict[str, str]:
    return {key: value for key, value in os.environ.items() if not key.startswith("OTEL_")}


def test_without_otel_settings_nothing_of_opentelemetry_is_imported() -> None:
    """With no OTEL_* exporter set, the tracer records nothing and imports nothing."""
    assert _imports({}) == {"tracer": "NoTracer", "otel": False}


def test_with_an_exporter_named_spans_are_exported() -> None:
    """OTEL_TRACES_EXPORTER=console makes an OpenTelemetry tracer from the SDK."""
    assert _imports({"OTEL_TRACES_EXPORTER": "console"}) == {"tracer": "OtelTracer", "otel": True}


def test_an_exporter_nobody_installed_records_nothing() -> None:
    """An exporter name no installed package provides leaves tracing off, with a warning."""
    assert _imports({"OTEL_TRACES_EXPORTER": "zipkin_json"})["tracer"] == "NoTracer"
