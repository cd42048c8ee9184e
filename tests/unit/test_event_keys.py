"""Reading an event's keys, filter and outcome; reading a provider's callback body; the specs
that declare both, and their config errors."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from orchestrator.event_keys import KEY_MAX, event_keys, key_problem, match_event
from orchestrator.fields import MISSING, lookup, matches
from orchestrator.model import ResultMapping, ServiceSpec, TriggerSpec, WebhookSpec
from orchestrator.result_mapping import MappingError, map_result
from orchestrator.states import Outcome

SECRET = "a-stripe-secret-of-some-length"


def hook(**table: Any) -> WebhookSpec:
    return WebhookSpec.model_validate({"scheme": "stripe", "secret": SECRET, **table})


STRIPE = hook(
    completes="data.object.id",
    completes_when={"type": ["payment_intent.succeeded", "payment_intent.payment_failed"]},
    fails_when={"type": "payment_intent.payment_failed"},
    error_field="data.object.last_payment_error.message",
)


def stripe_event(type: str, intent: Any = "pi_1", **more: Any) -> dict[str, Any]:
    return {"id": "evt_1", "type": type, "data": {"object": {"id": intent, **more}}}


def test_a_path_reads_objects_and_list_items_and_misses_quietly():
    """Dots go into objects, digits into lists; anything else is MISSING, never an error."""
    body = {"a": {"b": [{"c": 1}, {"c": 2}]}, "s": "text"}
    assert lookup(body, "a.b.1.c") == 2
    assert lookup(body, "a.b.2.c") is MISSING
    assert lookup(body, "s.x") is MISSING
    assert lookup(body, "a.b.x") is MISSING
    assert lookup(body, "a.b.\u0661") is MISSING  # a digit, but not an ASCII one


def test_a_filter_compares_exactly():
    """true is not 1 and "1" is not 1: a filter matches the value and its type."""
    assert matches({"ok": True}, {"ok": [True]})
    assert not matches({"ok": 1}, {"ok": [True]})
    assert not matches({"n": "1"}, {"n": [1]})
    assert matches({}, {})


def test_a_succeeded_event_completes_its_key_and_a_failed_one_fails_with_its_message():
    """The type filter passes both; fails_when turns the second into a failure."""
    assert match_event(STRIPE, stripe_event("payment_intent.succeeded")) == (
        match_event(STRIPE, stripe_event("payment_intent.succeeded"))
    )
    ok = match_event(STRIPE, stripe_event("payment_intent.succeeded"))
    assert ok is not None
    assert (ok.keys, ok.outcome, ok.error) == (("pi_1",), Outcome.SUCCEEDED, None)
    declined = stripe_event(
        "payment_intent.payment_failed", last_payment_error={"message": "card declined"}
    )
    failed = match_event(STRIPE, declined)
    assert failed is not None
    assert (failed.outcome, failed.error) == (Outcome.FAILED, "card declined")


def test_a_failure_without_a_message_says_what_matched():
    """Without the error field, the error names the fields that meant failure."""
    failed = match_event(STRIPE, stripe_event("payment_intent.payment_failed"))
    assert failed is not None
    assert failed.error == (
        "the event says the work failed (type = 'payment_intent.payment_failed')"
    )


@pytest.mark.parametrize(
    "payload",
    [
        stripe_event("payment_intent.created"),  # filtered out by type
        stripe_event("payment_intent.succeeded", intent=None),
        stripe_event("payment_intent.succeeded", intent=True),  # a bool is no key
        stripe_event("payment_intent.succeeded", intent=""),
        stripe_event("payment_intent.succeeded", intent="k" * (KEY_MAX + 1)),
        stripe_event("payment_intent.succeeded", intent="pi\n1"),
        stripe_event("payment_intent.succeeded", intent={"id": "x"}),
        {"type": "payment_intent.succeeded"},
        [],
    ],
)
def test_an_event_without_a_key_or_filtered_out_completes_nothing(payload):
    """No key (absent, too long, not printable, not a string or number), or another type."""
    assert match_event(STRIPE, payload) is None


def test_keys_come_from_every_path_deduplicated_and_numbers_count():
    """Several paths give several keys, once each; a whole number is its digits."""
    github = hook(completes=["check_run.id", "check_run.external_id", "missing.path"])
    payload = {"check_run": {"id": 4242, "external_id": "4242"}}
    assert event_keys(github, payload) == ("4242",)
    payload["check_run"]["external_id"] = "run-7"
    assert event_keys(github, payload) == ("4242", "run-7")
    assert match_event(hook(), payload) is None  # a trigger without completes


@given(
    st.recursive(
        st.none() | st.booleans() | st.integers() | st.text(max_size=300),
        lambda inner: (
            st.lists(inner, max_size=3)
            | st.dictionaries(st.sampled_from(["data", "object", "id"]), inner, max_size=3)
        ),
        max_leaves=10,
    )
)
def test_whatever_the_payload_every_key_read_is_one_a_wait_may_have(payload):
    """Keys read from any payload pass the same check await_event applies."""
    spec = hook(completes=["data.object.id", "id", "data.0"])
    for key in event_keys(spec, payload):
        assert key_problem(key) is None


TWILIO = ResultMapping(
    status_field="MessageStatus",
    succeeded_when=("delivered",),
    failed_when=("failed", "undelivered"),
    error_field="ErrorCode",
)


def test_a_status_maps_to_success_failure_or_progress():
    """delivered succeeds with the whole body; failed fails; sent is progress."""
    delivered = {"MessageStatus": "delivered", "MessageSid": "SM1"}
    assert map_result(TWILIO, delivered).outcome is Outcome.SUCCEEDED
    assert map_result(TWILIO, delivered).output == delivered
    failed = map_result(TWILIO, {"MessageStatus": "undelivered", "ErrorCode": "30003"})
    assert (failed.outcome, failed.error) == (Outcome.FAILED, "30003")
    plain = map_result(TWILIO.model_copy(update={"error_field": None}), {"MessageStatus": "failed"})
    assert plain.error == "MessageStatus = 'failed'"
    sent = map_result(TWILIO, {"MessageStatus": "sent"})
    assert (sent.outcome, sent.status) == (None, "sent")


def test_an_output_field_is_the_output_and_a_missing_one_is_refused():
    """output_field picks the output; a body without it, or without the status, is a 422."""
    mapping = ResultMapping(
        status_field="status", succeeded_when=("completed",), output_field="transcript.text"
    )
    body = {"status": "completed", "transcript": {"text": "hello"}}
    assert map_result(mapping, body).output == "hello"
    with pytest.raises(MappingError, match="output_field"):
        map_result(mapping, {"status": "completed"})
    with pytest.raises(MappingError, match="status_field"):
        map_result(mapping, {"transcript": {}})
    assert map_result(ResultMapping(), {"any": "body"}).output == {"any": "body"}
    progress = map_result(mapping, {"status": {"nested": True}})
    assert progress.status == "(dict)"


@pytest.mark.parametrize(
    ("table", "problem"),
    [
        ({"succeeded_when": ["ok"]}, "need a status_field"),
        ({"status_field": "s"}, "needs succeeded_when"),
        ({"status_field": "s", "succeeded_when": "x", "failed_when": ["x"]}, "in both"),
        ({"status_field": "a..b", "succeeded_when": "x"}, "status_field"),
    ],
)
def test_a_result_mapping_that_cannot_work_is_a_config_error(table, problem):
    """Statuses without a field, a field without success values, a value in both lists."""
    with pytest.raises(ValidationError, match=problem):
        ResultMapping.model_validate(table)


@pytest.mark.parametrize(
    ("table", "problem"),
    [
        ({"auth": "header"}, "needs header"),
        ({"auth": "header", "header": "X Bad"}, "header"),
        ({"header": "X-Token"}, "only read with auth"),
        ({"auth": "twilio"}, "needs the auth token"),
        ({"auth": "capability", "secret": "s" * 20}, "checks no secret"),
        ({"secret": "not-base64-but-long!!"}, "base64"),
        ({"auth": "bearer"}, "auth"),
    ],
)
def test_a_service_auth_that_cannot_work_is_a_config_error(table, problem):
    """Each scheme's own needs are checked when the config loads."""
    with pytest.raises(ValidationError, match=problem):
        ServiceSpec.model_validate(table)


@pytest.mark.parametrize(
    ("table", "problem"),
    [
        ({"webhook": {"scheme": "none", "completes": "id"}, "workflow": "w"}, "signed scheme"),
        (
            {
                "webhook": {"scheme": "stripe", "secret": SECRET, "fails_when": {"t": "x"}},
                "workflow": "w",
            },
            "only read with completes",
        ),
        (
            {"webhook": {"scheme": "stripe", "secret": SECRET, "starts_runs": False}},
            "needs completes",
        ),
        (
            {"webhook": {"scheme": "stripe", "secret": SECRET, "completes": "id"}},
            "workflow: required",
        ),
        (
            {
                "webhook": {
                    "scheme": "stripe",
                    "secret": SECRET,
                    "completes": "id",
                    "starts_runs": False,
                },
                "workflow": "w",
            },
            "starts no workflow",
        ),
        (
            {
                "webhook": {"scheme": "stripe", "secret": SECRET, "completes": ["a"] * 9},
                "workflow": "w",
            },
            "at most 8",
        ),
        ({}, "workflow: required"),
    ],
)
def test_a_trigger_that_completes_by_key_wrongly_is_a_config_error(table, problem):
    """An unsigned hook, filters without completes, a trigger that would do nothing, a
    workflow missing or named where none starts."""
    with pytest.raises(ValidationError, match=problem):
        TriggerSpec.model_validate(table)


def test_a_trigger_that_only_completes_needs_no_workflow():
    """starts_runs = false with completes: a trigger of its own, no workflow."""
    trigger = TriggerSpec.model_validate(
        {
            "webhook": {
                "scheme": "stripe",
                "secret": SECRET,
                "completes": "data.object.id",
                "starts_runs": False,
            }
        }
    )
    assert trigger.workflow is None
    assert trigger.webhook is not None
    assert (trigger.webhook.keep_unmatched, trigger.webhook.keep_unmatched_max) == (3600.0, 10000)
