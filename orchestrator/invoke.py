"""Loading handlers by import path and invoking them: the context they get, the report they give."""

from __future__ import annotations

import asyncio
import contextvars
import email.utils
import functools
import importlib
import inspect
import re
import sys
import threading
import time
import types
import typing
from collections.abc import Callable, Mapping
from concurrent.futures import Executor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Generic, TypeVar
from urllib.parse import urlsplit, urlunsplit

import httpx
import pydantic
import pydantic_core

from orchestrator.durations import parse_duration
from orchestrator.event_keys import key_problem
from orchestrator.jsonread import JsonRejected, check_strict
from orchestrator.model import NAME_PATTERN, ServiceSpec, WorkflowSpec
from orchestrator.sending import plain_request, send_plain
from orchestrator.states import Outcome

if typing.TYPE_CHECKING:  # at run time only its methods are used: keeps `--help` fast
    from orchestrator.tracecontext import TraceContext

T = TypeVar("T")


class HandlerImportError(ValueError):
    """A handler path that does not name an importable callable."""


@dataclass(frozen=True, slots=True)
class Upstream:
    """What one upstream step produced, as a join sees it.

    `outputs` maps item key to output for the items that succeeded; `failed` maps item key to
    error for those that failed or timed out; `missing` lists items that never arrived
    (cancelled when the barrier opened early or the run stopped). A step without fan-out has
    the single item key "". `finished_at` is when the last of its tasks to finish did.
    """

    outputs: dict[str, Any] = field(default_factory=dict)
    failed: dict[str, str] = field(default_factory=dict)
    missing: list[str] = field(default_factory=list)
    finished_at: float | None = None

    @property
    def output(self) -> Any:
        """The output of a step without fan-out (None if it did not succeed)."""
        return self.outputs.get("")

    def values(self) -> list[Any]:
        """Outputs of the items that succeeded, in item order."""
        return list(self.outputs.values())


@dataclass(frozen=True, slots=True)
class AwaitCallback(Generic[T]):
    """What a handler returns once it handed its work to an external service.

    The task stays dispatched, costing nothing, until the service POSTs to the callback
    URL, a heartbeat stops arriving, or the timeout passes. Annotate the handler as
    `-> AwaitCallback[Model]` and the callback's output is validated against `Model`.
    """

    timeout: float | None = None
    heartbeat: float | None = None


@dataclass(frozen=True, slots=True)
class AwaitEvent(Generic[T]):
    """What a handler returns to wait for an inbound event of `trigger` whose key is `key`.

    The trigger's webhook declares where its events carry the key (`completes`); the first
    such event completes the task, its payload the task's output (validated against
    `Model` when the handler is annotated `-> AwaitEvent[Model]`). An event that arrived
    before the handler returned, and was kept for early arrival, completes it at once.
    """

    trigger: str
    key: str
    timeout: float | None = None


class DispatchError(Exception):
    """The hand-off did not reach the service (connection error, 5xx, 429).

    The same attempt is dispatched again later from the timer heap, honouring Retry-After;
    it does not use up one of the step's retries.
    """

    def __init__(self, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


@dataclass(frozen=True, slots=True)
class Context:
    """What a handler knows about its invocation; the first argument of every handler.

    `cancelled` is set when this attempt is interrupted: it timed out, its run was
    cancelled, its barrier no longer needs it, or the server is shutting down. An async
    handler is cancelled outright; a plain function runs in a thread, which nothing can
    stop from outside, so a long one should check it (`ctx.cancelled.is_set()`) or wait on
    it instead of sleeping (`ctx.cancelled.wait(5)`) and return once it is set. Whatever it
    returns after that is ignored.

    `trace` is the W3C trace context of this invocation (None: the run's event came with
    none): the event's trace, under a span of this task's own. `ctx.dispatch` sends it on;
    a handler making its own calls can send `ctx.trace.headers()`.
    """

    run_id: str
    task_id: str
    step: str
    item_key: str
    attempt: int
    event: Mapping[str, Any]
    upstream: Mapping[str, Upstream]
    http: httpx.AsyncClient
    log: Any
    callback_url: str = field(default="", repr=False)  # a capability: kept out of reprs and logs
    callback_secret: str = field(default="", repr=False)
    service: ServiceSpec | None = None
    cancelled: threading.Event = field(default_factory=threading.Event, repr=False, compare=False)
    trace: TraceContext | None = None

    @property
    def idempotency_key(self) -> str:
        """Stable across re-dispatches of one attempt: pass it on to external services."""
        return f"{self.task_id}:{self.attempt}"

    def await_callback(
        self, timeout: float | str | None = None, heartbeat: float | str | None = None
    ) -> AwaitCallback[Any]:
        """Return this from the handler: the task completes when the service calls back."""
        return AwaitCallback(
            None if timeout is None else parse_duration(timeout),
            None if heartbeat is None else parse_duration(heartbeat),
        )

    def await_event(
        self, *, trigger: str, key: str, timeout: float | str | None = None
    ) -> AwaitEvent[Any]:
        """Return this from the handler: the task completes when an event of `trigger` with
        this key arrives (or arrived, within the trigger's `keep_unmatched`). A key is 1 to
        256 printable characters; ValueError otherwise, which fails the attempt."""
        problem = key_problem(key)
        if problem is not None:
            raise ValueError(f"await_event: {problem}")
        if not isinstance(trigger, str) or not re.fullmatch(NAME_PATTERN, trigger):
            raise ValueError(f"await_event: {trigger!r} is not a trigger name")
        return AwaitEvent(trigger, key, None if timeout is None else parse_duration(timeout))

    async def dispatch(
        self, url: str | None = None, *, method: str = "POST", **kwargs: Any
    ) -> httpx.Response:
        """Hand work to an external service (default: the step's service URL).

        Sends `Idempotency-Key: <task id>:<attempt>` and the task's `traceparent` and
        `tracestate` (unless `headers` has its own `traceparent`), and follows no redirect.
        A connection error, 5xx or 429 raises DispatchError (retried later, same attempt);
        a 3xx or another 4xx raises HandoffRefused, which fails the attempt.
        """
        target = url or (self.service.url if self.service else None)
        shown = _redacted(target) if target else ""
        if not target:
            raise HandoffRefused("no URL: pass one, or give the step a service with a url")
        headers = _with_trace(
            {"Idempotency-Key": self.idempotency_key, **kwargs.pop("headers", {})}, self.trace
        )
        try:
            if "auth" in kwargs:  # the client's auth flow: the full send
                response = await self.http.request(
                    method, target, headers=headers, follow_redirects=False, **kwargs
                )
            else:
                request = plain_request(self.http, method, target, headers, kwargs)
                response = await send_plain(self.http, request)
        except httpx.TransportError as error:
            raise DispatchError(f"{method} {shown}: {type(error).__name__}: {error}") from None
        status = response.status_code
        if status == 429 or status >= 500:
            raise DispatchError(
                f"{method} {shown} answered {status}", retry_after_seconds(response)
            )
        if status >= 300:
            detail = (
                f" to {response.headers['location']}"
                if 300 <= status < 400 and "location" in response.headers
                else ""
            )
            raise HandoffRefused(
                f"{method} {shown} answered {status}{detail} (redirects are not followed)"
            )
        return response


def _with_trace(headers: dict[str, str], trace: TraceContext | None) -> dict[str, str]:
    """`headers` with the trace's `traceparent` and `tracestate` added, unless there is no
    trace or the handler set its own `traceparent` (then its `tracestate` goes with it)."""
    names = {name.lower() for name in headers}
    if trace is None or "traceparent" in names:
        return headers
    return {**headers, **{k: v for k, v in trace.headers().items() if k not in names}}


def _redacted(url: str) -> str:
    """The URL without credentials or query string, fit for history and logs."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    netloc = f"{host}:{parts.port}" if parts.port else host
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))


class HandoffRefused(Exception):
    """The service refused the hand-off for good (a 3xx or a 4xx other than 429)."""


MAX_RETRY_AFTER = 3600.0


def retry_after_seconds(response: httpx.Response) -> float | None:
    """Seconds from a Retry-After header (delta-seconds or an HTTP date), at most an hour.

    A garbled header is ignored (the backoff applies), never an error.
    """
    value = response.headers.get("retry-after", "").strip()
    if not value:
        return None
    if re.fullmatch(r"[0-9]{1,9}", value):
        return min(float(value), MAX_RETRY_AFTER)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    return min(max(0.0, when.timestamp() - time.time()), MAX_RETRY_AFTER)


@dataclass(frozen=True, slots=True)
class HandlerResult:
    outcome: Outcome
    output: Any = None
    error: str | None = None


@dataclass(frozen=True, slots=True)
class EventWait:
    """What a task awaiting an event waits for: an event of `trigger` whose key is `key`."""

    trigger: str
    key: str


@dataclass(frozen=True, slots=True)
class Handoff:
    """The handler handed its work off and returned AwaitCallback, or AwaitEvent (`event`)."""

    timeout: float | None
    heartbeat: float | None
    event: EventWait | None = None


@dataclass(frozen=True, slots=True)
class Redispatch:
    """The hand-off did not get through; dispatch the same attempt again later."""

    error: str
    retry_after: float | None


Invocation = HandlerResult | Handoff | Redispatch


@dataclass(frozen=True, slots=True)
class Handler:
    """A loaded handler: the callable, how to call it, and how to check what it returns."""

    path: str
    function: Callable[..., Any]
    is_async: bool
    output_type: Any = None
    output_adapter: pydantic.TypeAdapter[Any] | None = None
    callback_adapter: pydantic.TypeAdapter[Any] | None = None
    event_adapter: pydantic.TypeAdapter[Any] | None = None

    def check_callback_output(self, value: Any) -> Any:
        """A callback's output as JSON-ready data, checked against AwaitCallback[Model]."""
        return _checked(self.callback_adapter, value, "callback")

    def check_event_output(self, value: Any) -> Any:
        """An event's payload as the task's output, checked against AwaitEvent[Model]."""
        return _checked(self.event_adapter, value, "event")

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
            check_strict(value)
        except TypeError as error:
            raise ValueError(f"output is not JSON serializable: {error}") from None
        except JsonRejected as error:
            raise ValueError(f"output is not strict JSON ({error.error}): {error}") from None
        return value


def _checked(adapter: pydantic.TypeAdapter[Any] | None, value: Any, what: str) -> Any:
    if adapter is None:
        return value
    try:
        return adapter.dump_python(adapter.validate_python(value), mode="json")
    except pydantic.ValidationError as error:
        raise ValueError(f"output does not match the declared {what} output: {error}") from None


def _type_name(annotation: Any) -> str:
    return getattr(annotation, "__name__", repr(annotation))


_import_roots: list[Path] = []  # the directories add_import_roots put first, for messages


def add_import_roots(config: Path) -> list[Path]:
    """Put the config file's directory and the working directory first on the import path.

    So handler modules that sit beside the config, or where the command runs, import without
    PYTHONPATH (the installed `orchestrator` script does not put the working directory there).
    """
    roots = [config.resolve().parent, Path.cwd().resolve()]
    present = {Path(entry or ".").resolve() for entry in sys.path}
    for root in reversed(roots):
        if root not in present:
            sys.path.insert(0, str(root))
    _import_roots[:] = roots
    return roots


def _where_handlers_come_from() -> str:
    if not _import_roots:
        return "handlers are imported from sys.path: PYTHONPATH and installed packages"
    config_dir, cwd = _import_roots
    return (
        f"handlers are imported from the config file's directory ({config_dir}) and the "
        f"working directory ({cwd}), then PYTHONPATH and installed packages"
    )


def load_handler(path: str) -> Handler:
    """Import `module:callable`; HandlerImportError says what is wrong in words."""
    module_name, _, attribute = path.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as error:
        missing = error.name or ""
        hint = ""
        if module_name == missing or module_name.startswith(missing + "."):
            hint = f" ({_where_handlers_come_from()})"  # not one of its own imports: the module
        raise HandlerImportError(f"cannot import module {module_name!r}: {error}{hint}") from error
    except Exception as error:
        raise HandlerImportError(f"cannot import module {module_name!r}: {error}") from error
    function = getattr(module, attribute, None)
    if function is None or not callable(function):
        raise HandlerImportError(f"module {module_name!r} has no callable {attribute!r}")
    output_type, callback_type, event_type = _declared_outputs(function)
    return Handler(
        path=path,
        function=function,
        is_async=inspect.iscoroutinefunction(function),
        output_type=output_type,
        output_adapter=_adapter(output_type),
        callback_adapter=_adapter(callback_type),
        event_adapter=_adapter(event_type),
    )


def _adapter(declared: Any) -> pydantic.TypeAdapter[Any] | None:
    return None if declared is None else pydantic.TypeAdapter(declared)


def _declared_outputs(function: Callable[..., Any]) -> tuple[Any, Any, Any]:
    """(local output type, callback output type, event output type) from the return
    annotation; None = unchecked.

    `-> Model` checks a returned value; `-> AwaitCallback[Model]` checks the callback's
    output, `-> AwaitEvent[Model]` the event's payload; `-> Model | AwaitCallback[Other]`
    checks both.
    """
    try:
        declared = typing.get_type_hints(function).get("return")
    except Exception:  # unresolvable annotations simply declare nothing
        return None, None, None
    members = typing.get_args(declared) if _is_union(declared) else (declared,)
    callbacks = _awaited(members, AwaitCallback)
    events = _awaited(members, AwaitEvent)
    local = [
        m for m in members
        if m not in callbacks and m not in events and m not in (None, type(None), Any)
    ]  # fmt: skip
    callback_type, event_type = _argument_of(callbacks), _argument_of(events)
    if not local:
        return None, callback_type, event_type
    local_type = local[0] if len(local) == 1 else typing.Union[tuple(local)]  # noqa: UP007 - built at run time
    return local_type, callback_type, event_type


def _awaited(members: tuple[Any, ...], kind: type) -> list[Any]:
    return [m for m in members if m is kind or typing.get_origin(m) is kind]


def _argument_of(awaited: list[Any]) -> Any:
    """The Model of AwaitCallback[Model] (or AwaitEvent[Model]); None for a bare one or Any."""
    args = typing.get_args(awaited[0]) if awaited else ()
    return args[0] if args and args[0] is not Any else None


def sync_steps_with_timeout(
    workflows: Mapping[str, WorkflowSpec], load: Callable[[str], Handler]
) -> list[tuple[str, str, str, float]]:
    """(workflow, step, handler, timeout) of every step whose plain-function handler has a
    timeout: a thread cannot be stopped, so its timeout only stops the waiting for it."""
    found = []
    for workflow_name, workflow in workflows.items():
        for step_name, step in workflow.steps.items():
            if step.timeout is None:
                continue
            try:
                handler = load(step.handler)
            except HandlerImportError:
                continue  # reported where it matters: `orchestrator check`, and the task itself
            if not handler.is_async:
                found.append((workflow_name, step_name, step.handler, step.timeout))
    return found


def _is_union(annotation: Any) -> bool:
    return typing.get_origin(annotation) in (typing.Union, types.UnionType)


@dataclass(frozen=True, slots=True)
class Spent:
    """When a local handler really ran: `began` (a plain function, once a worker thread
    took it up; None for an async handler, which starts when launched) and `ended` (when
    it returned), so neither the thread pool's queue nor the wait for its result to be
    recorded counts as run time."""

    began: float | None = None
    ended: float | None = None


async def invoke(
    handler: Handler,
    ctx: Context,
    item: Any,
    fan_out: bool,
    executor: Executor,
    clock: Callable[[], float] = time.time,
) -> tuple[Invocation, Spent]:
    """Call the handler (sync ones in a worker thread) and turn what happens into a result,
    with when it really ran."""
    args = (ctx, item) if fan_out else (ctx,)
    began: list[float] = []
    ended: list[float] = []

    def call() -> Any:
        began.append(clock())
        try:
            return handler.function(*args)
        finally:
            ended.append(clock())

    try:
        if handler.is_async:
            try:
                value = await handler.function(*args)
            finally:
                ended.append(clock())
        else:
            run = functools.partial(contextvars.copy_context().run, call)
            value = await asyncio.get_running_loop().run_in_executor(executor, run)
        if isinstance(value, AwaitCallback):
            return Handoff(value.timeout, value.heartbeat), Spent()
        if isinstance(value, AwaitEvent):
            return Handoff(value.timeout, None, EventWait(value.trigger, value.key)), Spent()
        output = handler.check_output(value)
    except asyncio.CancelledError:
        ctx.cancelled.set()  # a handler's thread runs on: this tells it to stop
        raise
    except DispatchError as error:
        return Redispatch(str(error), error.retry_after), Spent()
    except Exception as error:
        failed = HandlerResult(Outcome.FAILED, error=f"{type(error).__name__}: {error}")
        return failed, _spent(began, ended)
    return HandlerResult(Outcome.SUCCEEDED, output=output), _spent(began, ended)


def _spent(began: list[float], ended: list[float]) -> Spent:
    return Spent(began[0] if began else None, ended[0] if ended else None)
