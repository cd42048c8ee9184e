"""The callback schemes of services that do not sign the Standard Webhooks way: Twilio's
signature (checked against twilio's own RequestValidator) and a fixed secret header."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from starlette.datastructures import Headers
from twilio.request_validator import RequestValidator

from orchestrator.callback_auth import NotAForm, authenticate, receipt_id
from orchestrator.model import ServiceSpec
from orchestrator.signing import (
    SignatureError,
    sign_headers,
    twilio_signature,
    verify_header,
    verify_twilio,
)

TOKEN = "0123456789abcdef0123456789abcdef"  # a Twilio auth token's shape: 32 hex digits
URL = "https://orchestrator.example.com/callbacks/abc123"
PARAMS = [
    ("MessageSid", "SM1234567890abcdef"),
    ("MessageStatus", "delivered"),
    ("To", "+15558675310"),
    ("Body", "héllo, wörld & more"),
]

texts = st.text(st.characters(codec="utf-8"), max_size=20)


def twilio_signed(url: str, params: list[tuple[str, str]], token: str = TOKEN) -> dict[str, str]:
    """The header Twilio sends, computed by twilio's own library."""
    return {"x-twilio-signature": RequestValidator(token).compute_signature(url, dict(params))}


@settings(max_examples=200)
@given(
    params=st.dictionaries(texts.filter(bool), texts, max_size=8),
    query=st.sampled_from(["", "?a=1", "?b=two&c=3"]),
    port=st.sampled_from(["", ":443", ":8443"]),
)
def test_our_twilio_signature_is_the_one_twilios_validator_computes(params, query, port):
    """For any form fields and URL, the signature equals RequestValidator's."""
    url = f"https://host.example{port}/callbacks/t{query}"
    expected = RequestValidator(TOKEN).compute_signature(url, params)
    assert twilio_signature(TOKEN, url, params.items()) == expected
    verify_twilio([TOKEN], {"x-twilio-signature": expected}, url, list(params.items()))


def test_a_signature_twilio_validates_verifies_and_the_validator_agrees():
    """Both sides accept Twilio's signature of the documented URL and parameters."""
    headers = twilio_signed(URL, PARAMS)
    verify_twilio([TOKEN], headers, URL, PARAMS)
    assert RequestValidator(TOKEN).validate(URL, dict(PARAMS), headers["x-twilio-signature"])


def test_twilio_signed_with_or_without_the_default_port_verifies_either_way():
    """Twilio signs https URLs with or without :443; both are accepted, as its validator does."""
    with_port = URL.replace(".com/", ".com:443/")
    verify_twilio([TOKEN], twilio_signed(with_port, PARAMS), URL, PARAMS)
    verify_twilio([TOKEN], twilio_signed(URL, PARAMS), with_port, PARAMS)


@pytest.mark.parametrize(
    ("url", "params", "token"),
    [
        (URL + "x", PARAMS, TOKEN),  # another URL: another task's
        (URL, [*PARAMS[:1], ("MessageStatus", "failed"), *PARAMS[2:]], TOKEN),  # a changed field
        (URL, [*PARAMS, ("Extra", "1")], TOKEN),  # a field added
        (URL, PARAMS, "f" * 32),  # another account's token
    ],
)
def test_any_change_to_url_fields_or_token_fails_the_twilio_signature(url, params, token):
    """The signature covers the URL, every field and the auth token."""
    with pytest.raises(SignatureError, match="no signature matches"):
        verify_twilio([token], twilio_signed(URL, PARAMS), url, params)


def test_a_rotated_twilio_token_still_verifies_and_a_missing_header_says_so():
    """Every accepted token is tried; no X-Twilio-Signature is its own reason."""
    verify_twilio(["e" * 32, TOKEN], twilio_signed(URL, PARAMS), URL, PARAMS)
    with pytest.raises(SignatureError, match="missing X-Twilio-Signature"):
        verify_twilio([TOKEN], {}, URL, PARAMS)


def test_a_secret_header_must_equal_one_of_the_secrets():
    """The named header is compared with each secret; missing or different is refused."""
    headers = Headers({"X-Webhook-Token": "the-secret-value-123"})
    verify_header(["old-secret-value-000", "the-secret-value-123"], headers, "x-webhook-token")
    with pytest.raises(SignatureError, match="does not match"):
        verify_header(["the-secret-value-124"], headers, "X-Webhook-Token")
    with pytest.raises(SignatureError, match="missing X-Other"):
        verify_header(["the-secret-value-123"], headers, "X-Other")


def test_a_header_value_no_sender_could_send_fails_rather_than_crashes():
    """A lone surrogate in the header compares unequal instead of raising."""
    with pytest.raises(SignatureError):
        verify_header(["the-secret-value-123"], {"x-t": "\ud800"}, "x-t")


def service(**table: object) -> ServiceSpec:
    return ServiceSpec.model_validate(table)


def test_each_scheme_names_the_receipt_its_own_way():
    """Standard Webhooks keeps its webhook-id; the others the body's hash."""
    body = b'{"status": "succeeded"}'
    attempt = "whsec_" + "A" * 43 + "="
    signed = sign_headers(attempt, body, message_id="msg_7", timestamp=1000)
    assert authenticate(None, attempt, signed, body, None, URL, 1000.0, 300.0) == "msg_7"
    header = service(auth="header", header="X-Token")
    assert authenticate(
        header,
        "per-attempt-secret-1",
        {"x-token": "per-attempt-secret-1"},
        body,
        None,
        URL,
        0.0,
        300.0,
    ) == receipt_id(body)
    assert authenticate(service(auth="capability"), attempt, {}, body, None, URL, 0.0, 0.0) == (
        receipt_id(body)
    )


def test_a_twilio_service_needs_a_form_body_and_its_signature():
    """No form: NotAForm (415); a form with Twilio's signature verifies."""
    twilio = service(auth="twilio", secret=TOKEN)
    with pytest.raises(NotAForm):
        authenticate(twilio, "", twilio_signed(URL, PARAMS), b"{}", None, URL, 0.0, 0.0)
    found = authenticate(twilio, "", twilio_signed(URL, PARAMS), b"x", PARAMS, URL, 0.0, 0.0)
    assert found == receipt_id(b"x")
    with pytest.raises(SignatureError):
        authenticate(twilio, "", {}, b"x", PARAMS, URL, 0.0, 0.0)
