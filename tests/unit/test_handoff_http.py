"""Handing work to a service: what Context.dispatch sends, and how it reads the answer."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime

import httpx
import pytest
import respx
import structlog

from orchestrator.invoke import (
    AwaitCallback,
    Context,
    DispatchError,
    HandoffRefused,
    retry_after_seconds,
)
from orchestrator.model import ServiceSpec

URL = "http://crm.test/jobs"
SERVICE_URL = "http://research.test/v1/jobs"
TASK_ID = "tsk_01hf3j6r2xq7v9c8m4n5p0w1yz"
ATTEMPT = 3
JOB = {"lead": {"name": "Zoë"}, "callback_url": "http://orchestrator.test/callbacks/tok"}


@pytest.fixture
def router() -> Iterator[respx.MockRouter]:
    """Every outgoing request answered by a route, or the test fails; no real network."""
    with respx.mock(assert_all_mocked=True, assert_all_called=False) as mock:
        yield mock


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    """An httpx client as handlers see one (`ctx.http`); respx answers it. The transport
    under the orchestrator's own client is tested against real servers in test_outgoing.py."""
    async with httpx.AsyncClient() as client:
        yield client


def make_context(http: httpx.AsyncClient, service: ServiceSpec | None = None) -> Context:
    return Context(
        run_id="run_01hf3j6r2xq7v9c8m4n5p0w1yz",
        task_id=TASK_ID,
        step="research",
        item_key="ada",
        attempt=ATTEMPT,
        event={"leads": ["ada"]},
        upstream={},
        http=http,
        log=structlog.get_logger("tests.handoff"),
        callback_url="http://orchestrator.test/callbacks/tok",
        callback_secret="whsec_" + "A" * 44,
        service=service,
    )


@pytest.fixture
def ctx(http: httpx.AsyncClient) -> Context:
    return make_context(http)


def http_date(seconds_from_now: float) -> str:
    """An HTTP-date (IMF-fixdate) `seconds_from_now` from the current time."""
    return format_datetime(datetime.now(UTC) + timedelta(seconds=seconds_from_now), usegmt=True)


# The request.


async def test_dispatch_sends_the_idempotency_key_and_the_json_body(
    router: respx.MockRouter, ctx: Context
) -> None:
    """The POST carries `Idempotency-Key: <task id>:<attempt>` and the JSON body as given."""
    route = router.post(URL).respond(202, json={"job": "j-1"})
    await ctx.dispatch(URL, json=JOB)
    request = route.calls.last.request
    assert request.headers["Idempotency-Key"] == f"{TASK_ID}:{ATTEMPT}"
    assert request.headers["content-type"] == "application/json"
    assert json.loads(request.content) == JOB


async def test_dispatch_keeps_the_callers_headers_and_method(
    router: respx.MockRouter, ctx: Context
) -> None:
    """Headers passed in are sent beside the idempotency key, with the method asked for."""
    route = router.put(URL).respond(200)
    await ctx.dispatch(URL, method="PUT", json=JOB, headers={"Authorization": "Bearer t"})
    request = route.calls.last.request
    assert request.method == "PUT"
    assert request.headers["Authorization"] == "Bearer t"
    assert request.headers["Idempotency-Key"] == f"{TASK_ID}:{ATTEMPT}"


async def test_dispatch_defaults_to_the_steps_service_url(
    router: respx.MockRouter, http: httpx.AsyncClient
) -> None:
    """Without a URL, dispatch posts to the URL of the step's service."""
    route = router.post(SERVICE_URL).respond(202)
    ctx = make_context(http, ServiceSpec(url=SERVICE_URL))
    await ctx.dispatch(json=JOB)
    assert route.call_count == 1
    assert json.loads(route.calls.last.request.content) == JOB


async def test_an_explicit_url_wins_over_the_service_url(
    router: respx.MockRouter, http: httpx.AsyncClient
) -> None:
    """A URL passed to dispatch is used instead of the service's."""
    service_route = router.post(SERVICE_URL).respond(202)
    route = router.post(URL).respond(202)
    await make_context(http, ServiceSpec(url=SERVICE_URL)).dispatch(URL, json=JOB)
    assert (route.call_count, service_route.call_count) == (1, 0)


@pytest.mark.parametrize(
    "service", [None, ServiceSpec(), ServiceSpec(url="")], ids=["no-service", "no-url", "empty-url"]
)
async def test_no_url_at_all_is_refused_without_a_request(
    router: respx.MockRouter, http: httpx.AsyncClient, service: ServiceSpec | None
) -> None:
    """With no URL passed and no service URL, dispatch raises HandoffRefused and sends nothing."""
    with pytest.raises(HandoffRefused, match="no URL"):
        await make_context(http, service).dispatch(json=JOB)
    assert router.calls.call_count == 0


# The answer.


@pytest.mark.parametrize("status", [200, 201, 202, 204])
async def test_a_2xx_answer_is_returned(
    router: respx.MockRouter, ctx: Context, status: int
) -> None:
    """A 2xx answer comes back to the handler as the response itself."""
    router.post(URL).respond(status, content=b"" if status == 204 else b'{"job":"j-1"}')
    response = await ctx.dispatch(URL, json=JOB)
    assert response.status_code == status


async def test_a_redirect_is_not_followed_and_is_refused(
    router: respx.MockRouter, ctx: Context
) -> None:
    """A 302 is not followed: HandoffRefused names the status and where it pointed."""
    target = "http://elsewhere.test/login"
    router.post(URL).respond(302, headers={"Location": target})
    elsewhere = router.route(url=target).respond(200)
    with pytest.raises(HandoffRefused, match=rf"answered 302 to {target}") as refused:
        await ctx.dispatch(URL, json=JOB)
    assert "redirects are not followed" in str(refused.value)
    assert not elsewhere.called


async def test_a_redirect_without_location_is_refused(
    router: respx.MockRouter, ctx: Context
) -> None:
    """A 3xx without a Location header is refused too, naming the status."""
    router.post(URL).respond(307)
    with pytest.raises(HandoffRefused, match="answered 307 \\(redirects are not followed\\)"):
        await ctx.dispatch(URL, json=JOB)


@pytest.mark.parametrize("status", [400, 401, 403, 404, 409, 410, 422])
async def test_a_4xx_answer_is_refused(router: respx.MockRouter, ctx: Context, status: int) -> None:
    """A 4xx other than 429 raises HandoffRefused naming the status: retrying will not help."""
    router.post(URL).respond(status)
    with pytest.raises(HandoffRefused, match=f"POST {URL} answered {status}"):
        await ctx.dispatch(URL, json=JOB)


@pytest.mark.parametrize("status", [429, 500, 502, 503, 504])
async def test_a_5xx_or_429_answer_is_a_dispatch_error(
    router: respx.MockRouter, ctx: Context, status: int
) -> None:
    """A 5xx or 429 raises DispatchError naming the status, with no Retry-After to honour."""
    router.post(URL).respond(status)
    with pytest.raises(DispatchError, match=f"answered {status}") as error:
        await ctx.dispatch(URL, json=JOB)
    assert error.value.retry_after is None


@pytest.mark.parametrize("status", [429, 503])
async def test_retry_after_seconds_is_carried_on_the_dispatch_error(
    router: respx.MockRouter, ctx: Context, status: int
) -> None:
    """`Retry-After: 7` on a 429 or 503 becomes retry_after 7.0 on the DispatchError."""
    router.post(URL).respond(status, headers={"Retry-After": "7"})
    with pytest.raises(DispatchError) as error:
        await ctx.dispatch(URL, json=JOB)
    assert error.value.retry_after == 7.0


async def test_retry_after_http_date_is_carried_on_the_dispatch_error(
    router: respx.MockRouter, ctx: Context
) -> None:
    """A Retry-After HTTP-date an hour ahead becomes about 3600 seconds."""
    router.post(URL).respond(503, headers={"Retry-After": http_date(3600)})
    with pytest.raises(DispatchError) as error:
        await ctx.dispatch(URL, json=JOB)
    assert error.value.retry_after is not None
    assert 3590 <= error.value.retry_after <= 3600


@pytest.mark.parametrize(
    "failure", [httpx.ConnectError, httpx.ConnectTimeout, httpx.ReadTimeout, httpx.ReadError]
)
async def test_a_transport_error_is_a_dispatch_error(
    router: respx.MockRouter, ctx: Context, failure: type[httpx.TransportError]
) -> None:
    """A connection error or timeout raises DispatchError naming the error, no retry_after."""
    router.post(URL).mock(side_effect=failure)
    with pytest.raises(DispatchError, match=rf"POST {URL}: {failure.__name__}") as error:
        await ctx.dispatch(URL, json=JOB)
    assert error.value.retry_after is None


# Retry-After on its own.


@pytest.mark.parametrize(("value", "seconds"), [("7", 7.0), (" 120 ", 120.0), ("0", 0.0)])
def test_retry_after_delta_seconds(value: str, seconds: float) -> None:
    """Retry-After as a whole number of seconds reads as that many seconds."""
    response = httpx.Response(503, headers={"Retry-After": value})
    assert retry_after_seconds(response) == seconds


def test_retry_after_http_date_in_the_future() -> None:
    """Retry-After as an HTTP-date reads as the seconds from now until then."""
    response = httpx.Response(503, headers={"Retry-After": http_date(600)})
    seconds = retry_after_seconds(response)
    assert seconds is not None
    assert 590 <= seconds <= 600


def test_retry_after_http_date_in_the_past_is_zero() -> None:
    """A Retry-After date already passed means retry now, never a negative delay."""
    response = httpx.Response(503, headers={"Retry-After": "Wed, 21 Oct 2015 07:28:00 GMT"})
    assert retry_after_seconds(response) == 0.0


@pytest.mark.parametrize("value", ["soon", "7.5", "-1", "", "Mon, 01 Jan 99999 00:00:00 GMT"])
def test_retry_after_unreadable_is_none(value: str) -> None:
    """A Retry-After that is neither delta-seconds nor an HTTP-date is ignored."""
    assert retry_after_seconds(httpx.Response(503, headers={"Retry-After": value})) is None


def test_retry_after_absent_is_none() -> None:
    """No Retry-After header means no delay asked for."""
    assert retry_after_seconds(httpx.Response(503)) is None


# Awaiting the callback.


def test_await_callback_parses_durations(ctx: Context) -> None:
    """await_callback("10m", heartbeat="30s") asks to wait 600 s, with a heartbeat every 30 s."""
    assert ctx.await_callback("10m", heartbeat="30s") == AwaitCallback(600.0, 30.0)


def test_await_callback_takes_seconds_and_defaults_to_no_limits(ctx: Context) -> None:
    """Numbers are seconds; without arguments there is no timeout and no heartbeat."""
    assert ctx.await_callback(90, heartbeat=2.5) == AwaitCallback(90.0, 2.5)
    assert ctx.await_callback() == AwaitCallback(None, None)


def test_await_callback_rejects_a_bad_duration(ctx: Context) -> None:
    """A duration that does not parse is a ValueError when the handler asks, not later."""
    with pytest.raises(ValueError, match="duration"):
        ctx.await_callback("ten minutes")


@pytest.mark.parametrize(
    ("header", "expected"),
    [("²", None), ("9" * 400, None), ("99999", 3600.0), ("not a date", None), ("", None)],
)
def test_garbled_or_huge_retry_after_is_ignored_or_capped(
    header: str, expected: float | None
) -> None:
    """A Retry-After that is not plain ASCII seconds or a date is ignored; a huge one is capped at an hour."""
    response = httpx.Response(503, headers={b"Retry-After": header.encode("latin-1")})
    assert retry_after_seconds(response) == expected


async def test_dispatch_with_auth_goes_through_the_clients_auth_flow(
    router: respx.MockRouter, ctx: Context
) -> None:
    """An `auth=` hand-off is signed by httpx's auth flow (the plain send path skips it)."""
    route = router.post(URL).respond(202)
    await ctx.dispatch(URL, json=JOB, auth=("user", "pass"))
    assert route.calls.last.request.headers["authorization"].startswith("Basic ")
