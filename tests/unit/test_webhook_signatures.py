"""GitHub and Stripe webhook signatures: the senders' own examples, rotation and every rejection."""

from __future__ import annotations

import hashlib
import hmac

import pytest
import stripe
from hypothesis import given, settings
from hypothesis import strategies as st
from starlette.datastructures import Headers

from orchestrator.signing import SignatureError, verify_github, verify_stripe

# GitHub, with the example from its "Validating webhook deliveries" documentation.

GITHUB_SECRET = "It's a Secret to Everybody"
GITHUB_BODY = b"Hello, World!"
GITHUB_SIGNATURE = "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17"
DELIVERY = "72d3162e-cc78-11e3-81ab-4c9367dc0958"


def github_headers(signature: str = GITHUB_SIGNATURE) -> dict[str, str]:
    """Lowercase headers of a GitHub delivery, as the app's case-insensitive headers read them."""
    return {"x-hub-signature-256": signature, "x-github-delivery": DELIVERY}


def github_signature(secret: str, body: bytes) -> str:
    """The X-Hub-Signature-256 value GitHub sends for `body`."""
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def test_githubs_published_example_verifies_and_names_the_delivery():
    """GitHub's documented secret, payload and signature verify and return X-GitHub-Delivery."""
    assert verify_github([GITHUB_SECRET], github_headers(), GITHUB_BODY) == DELIVERY


def test_a_github_delivery_without_an_id_still_verifies():
    """A valid signature with no X-GitHub-Delivery header verifies and returns None."""
    headers = {"x-hub-signature-256": GITHUB_SIGNATURE}
    assert verify_github([GITHUB_SECRET], headers, GITHUB_BODY) is None


def test_github_headers_work_as_starlette_sends_them():
    """Starlette's case-insensitive Headers, with GitHub's capitalisation, verify too."""
    headers = Headers({"X-Hub-Signature-256": GITHUB_SIGNATURE, "X-GitHub-Delivery": DELIVERY})
    assert verify_github([GITHUB_SECRET], headers, GITHUB_BODY) == DELIVERY


@pytest.mark.parametrize(
    "body", [b"Hello, World?", b"hello, World!", b"Hello, World! ", b"Hello, World", b""]
)
def test_a_changed_github_body_is_refused(body):
    """Any change to the body, even one byte, fails the signature."""
    with pytest.raises(SignatureError, match="no signature matches"):
        verify_github([GITHUB_SECRET], github_headers(), body)


def test_a_wrong_github_secret_is_refused():
    """A signature made with another secret is refused, as is having no accepted secret."""
    with pytest.raises(SignatureError, match="no signature matches"):
        verify_github(["It's a Secret to Nobody"], github_headers(), GITHUB_BODY)
    with pytest.raises(SignatureError, match="no signature matches"):
        verify_github([], github_headers(), GITHUB_BODY)


@pytest.mark.parametrize(
    "headers",
    [
        pytest.param({"x-github-delivery": DELIVERY}, id="missing"),
        pytest.param(github_headers(""), id="empty"),
        pytest.param(github_headers(GITHUB_SIGNATURE.removeprefix("sha256=")), id="bare-hex"),
        pytest.param(github_headers(GITHUB_SIGNATURE.replace("sha256", "sha1")), id="sha1"),
        pytest.param(github_headers(GITHUB_SIGNATURE.replace("sha256", "SHA256")), id="upper"),
        pytest.param(github_headers(GITHUB_SIGNATURE.replace("=", " = ")), id="spaced"),
    ],
)
def test_a_missing_or_malformed_github_header_is_refused(headers):
    """Without an X-Hub-Signature-256 header that starts 'sha256=', the delivery is refused."""
    with pytest.raises(SignatureError, match=r"X-Hub-Signature-256 \(sha256=\.\.\.\) header"):
        verify_github([GITHUB_SECRET], headers, GITHUB_BODY)


@pytest.mark.parametrize(
    "signature",
    [
        GITHUB_SIGNATURE[:-1],
        GITHUB_SIGNATURE[:-1] + "f",
        "sha256=",
        GITHUB_SIGNATURE + "00",
        "sha256=" + "é" * 64,
    ],
)
def test_a_wrong_github_signature_is_refused(signature):
    """A signature that is truncated, altered, extended, empty or not hex is refused."""
    with pytest.raises(SignatureError, match="no signature matches"):
        verify_github([GITHUB_SECRET], github_headers(signature), GITHUB_BODY)


@pytest.mark.parametrize("signed_with", ["old secret", GITHUB_SECRET])
def test_either_github_secret_verifies_during_a_rotation(signed_with):
    """With two accepted secrets (old and new), a delivery signed with either verifies."""
    headers = github_headers(github_signature(signed_with, GITHUB_BODY))
    assert verify_github(["old secret", GITHUB_SECRET], headers, GITHUB_BODY) == DELIVERY
    assert verify_github([GITHUB_SECRET, "old secret"], headers, GITHUB_BODY) == DELIVERY


@settings(max_examples=100, deadline=None)
@given(header=st.text(), body=st.binary(max_size=64))
def test_any_github_header_text_is_a_signature_error_never_a_crash(header, body):
    """Arbitrary header text, prefixed or not, is refused with a SignatureError and nothing else."""
    for value in (header, "sha256=" + header):
        with pytest.raises(SignatureError):
            verify_github([GITHUB_SECRET], github_headers(value), body)


# Stripe, with headers made by the stripe package's own test helper.

STRIPE_SECRET = "whsec_test_secret_for_stripe"
STRIPE_PAYLOAD = '{"id":"evt_1","type":"invoice.paid","data":{"object":{"name":"Zoë"}}}'
STRIPE_BODY = STRIPE_PAYLOAD.encode()
T = 1_767_225_600  # 2026-01-01T00:00:00Z


def stripe_headers(
    payload: str = STRIPE_PAYLOAD, secret: str = STRIPE_SECRET, timestamp: int = T
) -> dict[str, str]:
    """A Stripe-Signature header made by stripe.WebhookSignature, as the app reads it."""
    header = stripe.WebhookSignature.generate_signature_header(payload, secret, timestamp=timestamp)
    return {"stripe-signature": header}


def stripe_v1(secret: str, timestamp: int, body: bytes) -> str:
    """The hex v1 signature Stripe computes over `{t}.{body}`."""
    return hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()


def test_a_header_from_the_stripe_package_verifies_and_returns_its_timestamp():
    """stripe's own generate_signature_header output verifies, returning t."""
    assert verify_stripe([STRIPE_SECRET], stripe_headers(), STRIPE_BODY, now=T) == T


def test_the_stripe_helper_and_this_module_agree_on_the_signed_text():
    """The header stripe makes is exactly t=<t>,v1=<HMAC of "t.body">, the format verified here."""
    assert (
        stripe_headers()["stripe-signature"]
        == f"t={T},v1={stripe_v1(STRIPE_SECRET, T, STRIPE_BODY)}"
    )


def test_stripe_headers_work_as_starlette_sends_them():
    """Starlette's case-insensitive Headers, with Stripe's capitalisation, verify too."""
    headers = Headers({"Stripe-Signature": stripe_headers()["stripe-signature"]})
    assert verify_stripe([STRIPE_SECRET], headers, STRIPE_BODY, now=T) == T


@pytest.mark.parametrize("skew", [-300, 0, 300])
def test_a_stripe_timestamp_within_tolerance_verifies(skew):
    """A timestamp up to the tolerance (300 s by default) before or after now is accepted."""
    assert verify_stripe([STRIPE_SECRET], stripe_headers(), STRIPE_BODY, now=T + skew) == T


@pytest.mark.parametrize("skew", [-301, 301, 86_400])
def test_a_stripe_timestamp_outside_tolerance_is_refused(skew):
    """A timestamp more than the tolerance away from now, either way, is refused (replays)."""
    with pytest.raises(SignatureError, match="more than 300 s from now"):
        verify_stripe([STRIPE_SECRET], stripe_headers(), STRIPE_BODY, now=T + skew)


def test_the_stripe_tolerance_is_a_parameter():
    """A tighter tolerance refuses a timestamp the default would accept, and says so."""
    with pytest.raises(SignatureError, match="more than 10 s from now"):
        verify_stripe([STRIPE_SECRET], stripe_headers(), STRIPE_BODY, now=T + 11, tolerance=10)
    verified = verify_stripe(
        [STRIPE_SECRET], stripe_headers(), STRIPE_BODY, now=T + 10, tolerance=10
    )
    assert verified == T


@pytest.mark.parametrize("right_first", [True, False])
def test_one_matching_v1_among_several_verifies(right_first):
    """Stripe sends one v1 per active secret; the header verifies when any one of them matches."""
    right = stripe_v1(STRIPE_SECRET, T, STRIPE_BODY)
    wrong = stripe_v1("whsec_rolled", T, STRIPE_BODY)
    signatures = [right, wrong] if right_first else [wrong, right]
    header = f"t={T}," + ",".join(f"v1={signature}" for signature in signatures) + ",v0=ab"
    headers = {"stripe-signature": header}
    assert verify_stripe([STRIPE_SECRET], headers, STRIPE_BODY, now=T) == T


@pytest.mark.parametrize("signed_with", ["whsec_old", STRIPE_SECRET])
def test_either_stripe_secret_verifies_during_a_rotation(signed_with):
    """With two accepted endpoint secrets, a header signed with either verifies."""
    headers = stripe_headers(secret=signed_with)
    assert verify_stripe(["whsec_old", STRIPE_SECRET], headers, STRIPE_BODY, now=T) == T


def test_a_changed_stripe_body_is_refused():
    """A body that differs from the signed payload by one byte is refused."""
    body = STRIPE_BODY.replace(b"paid", b"void")
    with pytest.raises(SignatureError, match="no signature matches"):
        verify_stripe([STRIPE_SECRET], stripe_headers(), body, now=T)


def test_a_wrong_stripe_secret_is_refused():
    """A header signed with another endpoint's secret is refused."""
    with pytest.raises(SignatureError, match="no signature matches"):
        verify_stripe(["whsec_other"], stripe_headers(), STRIPE_BODY, now=T)


def test_a_stripe_signature_for_another_timestamp_is_refused():
    """Moving t without re-signing (a replay dressed as fresh) fails the signature."""
    v1 = stripe_v1(STRIPE_SECRET, T, STRIPE_BODY)
    headers = {"stripe-signature": f"t={T + 60},v1={v1}"}
    with pytest.raises(SignatureError, match="no signature matches"):
        verify_stripe([STRIPE_SECRET], headers, STRIPE_BODY, now=T)


V1 = stripe_v1(STRIPE_SECRET, T, STRIPE_BODY)


@pytest.mark.parametrize(
    "header",
    [
        pytest.param(None, id="no-header"),
        pytest.param("", id="empty"),
        pytest.param(f"v1={V1}", id="no-t"),
        pytest.param(f"t=,v1={V1}", id="empty-t"),
        pytest.param(f"t=soon,v1={V1}", id="non-numeric-t"),
        pytest.param(f"t={T}.5,v1={V1}", id="fractional-t"),
        pytest.param(f"t=-{T},v1={V1}", id="negative-t"),
        pytest.param(f"t=\u00b2,v1={V1}", id="superscript-t"),
        pytest.param(f"t=\u0661\u0662,v1={V1}", id="arabic-indic-t"),
        pytest.param("t=" + "9" * 400 + f",v1={V1}", id="huge-t"),
        pytest.param(f"t={T},t={T},v1={V1}", id="two-t"),
        pytest.param(f"t={T}", id="no-v1"),
        pytest.param(f"t={T},v0={V1}", id="only-v0"),
        pytest.param(f"t={T};v1={V1}", id="semicolons"),
    ],
)
def test_a_malformed_stripe_header_is_a_signature_error(header):
    """A missing, empty, non-numeric, repeated or non-ASCII t, or no v1, is a SignatureError."""
    headers = {} if header is None else {"stripe-signature": header}
    with pytest.raises(SignatureError, match="needs t=<Unix seconds> and at least one v1="):
        verify_stripe([STRIPE_SECRET], headers, STRIPE_BODY, now=T)


@settings(max_examples=100, deadline=None)
@given(
    header=st.one_of(
        st.text(),
        st.builds(lambda rest: f"t={T},v1={rest}", st.text()),
        st.builds(lambda rest: f"t={rest},v1={V1}", st.text()),
        st.lists(st.text(alphabet="tv1=,0 9a"), max_size=6).map(",".join),
    ),
)
def test_any_stripe_header_text_is_a_signature_error_never_a_crash(header):
    """Arbitrary Stripe-Signature text is refused with a SignatureError and nothing else."""
    with pytest.raises(SignatureError):
        verify_stripe([STRIPE_SECRET], {"stripe-signature": header}, STRIPE_BODY, now=T)
