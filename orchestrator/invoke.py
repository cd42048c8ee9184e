"""Loading handlers by import path and invoking them: the context they get, the report they give."""

from __future__ import annotations

import asyncio
import contextvars
import functools
import importlib
import inspect
import json
import typing
from collections.abc import Callable, Mapping
from concurrent.futures import Executor
from dataclasses import dataclass, field
from typing import Any

import httpx
import pydantic
import pydantic_core

from orchestrator.states import Outcome


class HandlerImportError(ValueError):
    """A handler path that does not name an importable callable."""


@dataclass(frozen=True, slots=True)
class Upstream:
    """What one upstream step produced, as a join sees it.

    `outputs` maps item key to output for the items that succeeded; `failed` maps item key to
    error for those that failed or timed out; `missing` lists items that never arrived
    (cancelled when the barrier opened early or the run stopped). A step without fan-out has
    the single item key "".
    """

    outputs: dict[str, Any] = field(default_factory=dict)
    failed: dict[str, str] = field(default_factory=dict)
    missing: list[str] = field(default_factory=list)

    @property
    def output(self) -> Any:
        """The output of a step without fan-out (None if it did not succeed)."""
        return self.outputs.get("")

    def values(self) -> list[Any]:
        """Outputs of the items that succeeded, in item order."""
        return list(self.outputs.values())


@dataclass(frozen=True, slots=True)
class Context:
    """What a handler knows about its invocation; the first argument of every handler."""

    run_id: str
    task_id: str
    step: str
    item_key: str
    attempt: int
    event: Mapping[str, Any]
    upstream: Mapping[str, Upstream]
    http: httpx.AsyncClient
    log: Any

    @property
    def idempotency_key(self) -> str:
        """Stable across re-dispatches of one attempt: pass it on to external services."""
        return f"{self.task_id}:{self.attempt}"


@dataclass(frozen=True, slots=True)
class HandlerResult:
    outcome: Outcome
    output: Any = None
    error: str | None = None


@dataclass(frozen=True, slots=True)
class Handler:
    """A loaded handler: the callable, how to call it, and how to check what it returns."""

    path: str
    function: Callable[..., Any]
    is_async: bool
    output_type: Any = None
    output_adapter: pydantic.TypeAdapter[Any] | None = None

    def check_output(self, value: Any) -> Any:
        """The output as JSON-ready data; ValueError says why it is not acceptable."""
        adapter = self.output_adapter
        if adapter is not None:
            try:
                value = adapter.dump_python(adapter.validate_python(value), mode="json")
            except pydantic.ValidationError as error:
                name = _type_name(self.output_type)
                raise ValueError(f"output does not match {name}: {error}") from None
            except pydantic_core.PydanticSerializationError as error:
                raise ValueError(f"output is not JSON serializable: {error}") from None
        try:
            json.dumps(value)
        except (TypeError, ValueError) as error:
            raise ValueError(f"output is not JSON serializable: {error}") from None
        return value


def _type_name(annotation: Any) -> str:
    return getattr(annotation, "__name__", repr(annotation))


def load_handler(path: str) -> Handler:
    """Import `module:callable`; HandlerImportError says what is wrong in words."""
    module_name, _, attribute = path.partition(":")
    try:
        module = importlib.import_module(module_name)
    except Exception as error:
        raise HandlerImportError(f"cannot import module {module_name!r}: {error}") from error
    function = getattr(module, attribute, None)
    if function is None or not callable(function):
        raise HandlerImportError(f"module {module_name!r} has no callable {attribute!r}")
    output_type = _declared_output(function)
    return Handler(
        path=path,
        function=function,
        is_async=inspect.iscoroutinefunction(function),
        output_type=output_type,
        output_adapter=None if output_type is None else pydantic.TypeAdapter(output_type),
    )


def _declared_output(function: Callable[..., Any]) -> Any:
    try:
        hints = typing.get_type_hints(function)
    except Exception:
        return None
    declared = hints.get("return")
    if declared in (None, type(None), Any):
        return None
    return declared


async def invoke(
    handler: Handler, ctx: Context, item: Any, fan_out: bool, executor: Executor
) -> HandlerResult:
    """Call the handler (sync ones in a worker thread) and turn what happens into a result."""
    args = (ctx, item) if fan_out else (ctx,)
    try:
        if handler.is_async:
            value = await handler.function(*args)
        else:
            call = functools.partial(contextvars.copy_context().run, handler.function, *args)
            value = await asyncio.get_running_loop().run_in_executor(executor, call)
        output = handler.check_output(value)
    except asyncio.CancelledError:
        raise
    except Exception as error:
        return HandlerResult(Outcome.FAILED, error=f"{type(error).__name__}: {error}")
    return HandlerResult(Outcome.SUCCEEDED, output=output)
