"""The strict JSON reader, the strict check of handler outputs, and the tolerant renderer."""

from __future__ import annotations

import asyncio
import json
import math
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import pytest
import structlog
from starlette.requests import Request

from orchestrator.http import TolerantJSONResponse, dumps_tolerant, presentable, route_template
from orchestrator.invoke import Context, Handler, HandlerResult, invoke, load_handler
from orchestrator.jsonread import MAX_DEPTH, JsonRejected, check_strict, read_json
from orchestrator.states import Outcome


def nested_lists(levels: int) -> Any:
    value: Any = []
    for _ in range(levels - 1):
        value = [value]
    return value


@pytest.mark.parametrize(
    ("raw", "value"),
    [
        (b'{"a": [1, 2.5, -0, true, null, "x"]}', {"a": [1, 2.5, 0, True, None, "x"]}),
        (b'"\\ud83d\\ude00"', "\N{GRINNING FACE}"),
        ('"caf\u00e9"'.encode(), "caf\u00e9"),
        (b"1" * 100, int("1" * 100)),
        (b"1e308", 1e308),
        (b"1e-400", 0.0),
        (b"[" * MAX_DEPTH + b"]" * MAX_DEPTH, nested_lists(MAX_DEPTH)),
        (b' \n{"k": "[[[[ not nesting"}\t', {"k": "[[[[ not nesting"}),
    ],
)
def test_strict_json_within_the_limits_reads_as_json_says(raw: bytes, value: Any) -> None:
    """Ordinary JSON, escaped pairs, 100-digit numbers and 64 levels read as they are written."""
    assert read_json(raw) == value


@pytest.mark.parametrize(
    ("raw", "error"),
    [
        (b"NaN", "malformed_json"),
        (b"[Infinity]", "malformed_json"),
        (b"{'a': 1}", "malformed_json"),
        (b"", "malformed_json"),
        (b"[1,]", "malformed_json"),
        (b'"tab\there"', "malformed_json"),
        (b"\xff", "invalid_utf8"),
        ('"x"'.encode("utf-16"), "invalid_utf8"),
        (b"[" * (MAX_DEPTH + 1) + b"]" * (MAX_DEPTH + 1), "json_too_deep"),
        (b"[" * 100_000, "json_too_deep"),
        (b"1" * 101, "json_number_too_large"),
        (b"-" + b"1" * 100, "json_number_too_large"),
        (b"0." + b"1" * 99, "json_number_too_large"),
        (b"-1e400", "json_number_too_large"),
        (b'["\\udc00\\ud800"]', "json_lone_surrogate"),
        (b'{"\\ud800": 1}', "json_lone_surrogate"),
        (b'{"a": 1, "b": {"c": 2, "c": 3}}', "json_duplicate_key"),
    ],
)
def test_what_strict_json_refuses_is_a_named_rejection(raw: bytes, error: str) -> None:
    """Each kind of refusal has its own error name and a detail that says it in words."""
    with pytest.raises(JsonRejected) as refused:
        read_json(raw)
    assert refused.value.error == error
    assert refused.value.detail


def test_a_rejection_echoes_at_most_a_short_escaped_key() -> None:
    """A duplicate key is named escaped and cut short: the sender chose it."""
    key = "k" * 10_000
    with pytest.raises(JsonRejected) as refused:
        read_json(f'{{"{key}": 1, "{key}": 2}}'.encode())
    assert len(refused.value.detail) < 120


@pytest.mark.parametrize(
    ("value", "error"),
    [
        (math.nan, "malformed_json"),
        ({"x": [math.inf]}, "malformed_json"),
        ("\ud800", "json_lone_surrogate"),
        (10**200, "json_number_too_large"),
        (10**5000, "json_number_too_large"),
    ],
    ids=["nan", "infinity", "lone-surrogate", "200-digits", "5000-digits"],
)
def test_check_strict_refuses_what_json_could_not_read_back(value: Any, error: str) -> None:
    """A Python value that would not read back as strict JSON is refused by name."""
    with pytest.raises(JsonRejected) as refused:
        check_strict(value)
    assert refused.value.error == error


def test_check_strict_refuses_a_value_that_contains_itself() -> None:
    """A list that contains itself has no JSON text: malformed_json, not a crash."""
    looped: list[Any] = []
    looped.append(looped)
    with pytest.raises(JsonRejected) as refused:
        check_strict(looped)
    assert refused.value.error == "malformed_json"


def test_a_request_outside_any_route_is_logged_as_unmatched() -> None:
    """route_template names the declared route, and says so when none matched."""
    assert (
        route_template(Request({"type": "http", "path": "/x" * 1000, "headers": []})) == "unmatched"
    )


def test_check_strict_refuses_nesting_past_the_limit_and_past_the_stack() -> None:
    """Too deep for the reader, or for the interpreter's stack, is json_too_deep either way."""
    deep: Any = 1
    for _ in range(100_000):
        deep = [deep]
    for value in (deep, [[[]]] * 1 + [deep]):
        with pytest.raises(JsonRejected) as refused:
            check_strict(value)
        assert refused.value.error == "json_too_deep"


def nan_output(ctx: Context) -> Any:
    return {"score": float("nan")}


def lone_surrogate_output(ctx: Context) -> Any:
    return {"name": "\udfff"}


def context() -> Context:
    log = structlog.get_logger("test")
    return Context("run", "task", "step", "", 1, {}, {}, httpx.AsyncClient(), log)


@pytest.mark.parametrize("handler", ["nan_output", "lone_surrogate_output"])
async def test_a_handler_output_that_is_not_strict_json_fails_the_task(handler: str) -> None:
    """A plain function returning NaN or a lone surrogate fails its task, saying why."""
    loaded = load_handler(f"tests.unit.test_jsonread:{handler}")
    ctx = context()
    with ThreadPoolExecutor(1) as executor:
        result, _ = await invoke(loaded, ctx, None, False, executor)
    await ctx.http.aclose()
    assert isinstance(result, HandlerResult)
    assert result.outcome is Outcome.FAILED
    assert result.error is not None
    assert "output is not strict JSON" in result.error


async def test_an_interrupted_invocation_sets_ctx_cancelled() -> None:
    """Cancelling the coroutine that awaits a handler sets ctx.cancelled for its thread."""
    started, never = asyncio.Event(), asyncio.Event()

    async def waits(ctx: Context) -> None:
        started.set()
        await never.wait()

    ctx = context()
    with ThreadPoolExecutor(1) as executor:
        running = asyncio.ensure_future(
            invoke(Handler("t:waits", waits, True), ctx, None, False, executor)
        )
        async with asyncio.timeout(5):
            await started.wait()
        running.cancel()
        with pytest.raises(asyncio.CancelledError):
            await running
    await ctx.http.aclose()
    assert ctx.cancelled.is_set()


def test_presentable_replaces_only_what_strict_json_cannot_hold() -> None:
    """Non-finite floats become strings, lone surrogates U+FFFD; everything else stays exact."""
    stored = {
        "n": math.nan,
        "i": [math.inf, -math.inf, 1.5],
        "\ud800k": "a\udfffb",
        "ok": [1, None],
    }
    assert presentable(stored) == {
        "n": "NaN",
        "i": ["Infinity", "-Infinity", 1.5],
        "\ufffdk": "a\ufffdb",
        "ok": [1, None],
    }


def test_tolerant_rendering_is_strict_json_and_exact_when_it_can_be() -> None:
    """What the admin API sends always reads back strictly; plain data is sent as it is."""
    plain = {"a": [1, "caf\u00e9"]}
    assert read_json(bytes(TolerantJSONResponse(plain).body)) == plain
    odd = {"a": math.nan, "b": "\ud800"}
    assert read_json(bytes(TolerantJSONResponse(odd).body)) == {"a": "NaN", "b": "\ufffd"}
    assert read_json(dumps_tolerant(odd).encode()) == {"a": "NaN", "b": "\ufffd"}
    deep: Any = []
    for _ in range(5000):
        deep = [deep]
    shown = json.loads(bytes(TolerantJSONResponse({"deep": deep}).body))["deep"]  # deeper than 64
    levels = 1
    while isinstance(shown, list):
        (shown,) = shown
        levels += 1
    assert levels == 256
    assert "not shown" in shown
