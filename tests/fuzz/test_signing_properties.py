"""Signature headers from anyone: every scheme answers with SignatureError or a verdict, never a crash."""

from __future__ import annotations

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from orchestrator.signing import (
    SignatureError,
    new_secret,
    sign_headers,
    signature,
    verify,
    verify_github,
    verify_stripe,
)
from tests.fuzz.budget import budget

SECRET = new_secret()
NOW = 1_800_000_000
BODY = b'{"status":"succeeded"}'

# Header values as Starlette hands them over (latin-1 decoded bytes), and arbitrary text too.
header_text = st.text(st.characters(max_codepoint=0xFF), max_size=80) | st.text(max_size=40)
timestamps = st.integers(min_value=-(10**15), max_value=10**15).map(str) | header_text
signatures = (
    header_text
    | st.lists(st.sampled_from(["v1,", "v1a,", "v2,", " ", ","]).flatmap(
        lambda prefix: header_text.map(lambda rest: prefix + rest)), max_size=4).map(" ".join)
)  # fmt: skip


def standard_headers() -> st.SearchStrategy[dict[str, str]]:
    return st.fixed_dictionaries(
        {},
        optional={
            "webhook-id": header_text,
            "webhook-timestamp": timestamps,
            "webhook-signature": signatures,
        },
    )


@given(standard_headers(), st.binary(max_size=64))
@example({"webhook-id": "\ud800", "webhook-timestamp": str(NOW), "webhook-signature": "v1,x"}, BODY)
@example({"webhook-id": "m", "webhook-timestamp": str(NOW), "webhook-signature": "v1,\udfff"}, BODY)
@example({"webhook-id": "m", "webhook-timestamp": "١٢٣", "webhook-signature": "v1,x"}, BODY)
@example(sign_headers(SECRET, BODY, "msg_1", NOW), BODY)
@budget(quick=300, long=20_000)
def test_standard_webhooks_headers_never_raise_anything_else(
    headers: dict[str, str], body: bytes
) -> None:
    """Arbitrary Standard Webhooks headers verify or raise SignatureError, nothing else."""
    try:
        verified = verify([SECRET], headers, body, NOW)
    except SignatureError as error:
        refused: SignatureError | None = error
    else:
        refused = None
    if refused is not None:
        assert str(refused)
    else:  # only the real signature passes
        real = signature(SECRET, verified.message_id, verified.timestamp, body)
        assert real in headers["webhook-signature"].split()


@given(
    st.fixed_dictionaries(
        {}, optional={"x-hub-signature-256": header_text, "x-github-delivery": header_text}
    ),
    st.binary(max_size=64),
)
@example({"x-hub-signature-256": "sha256=\ud800"}, BODY)
@budget(quick=200, long=10_000)
def test_github_headers_never_raise_anything_else(headers: dict[str, str], body: bytes) -> None:
    """Arbitrary X-Hub-Signature-256 headers raise SignatureError (none of them is a real signature)."""
    with pytest.raises(SignatureError, match=r"."):
        verify_github(["a-secret-of-sixteen-bytes"], headers, body)


@given(
    st.fixed_dictionaries({}, optional={"stripe-signature": header_text | signatures}),
    st.binary(max_size=64),
)
@example({"stripe-signature": f"t={NOW},v1=\ud800"}, BODY)
@example({"stripe-signature": "t=99999999999999999999999,v1=ab"}, BODY)
@budget(quick=200, long=10_000)
def test_stripe_headers_never_raise_anything_else(headers: dict[str, str], body: bytes) -> None:
    """Arbitrary Stripe-Signature headers raise SignatureError (none of them is a real signature)."""
    with pytest.raises(SignatureError, match=r"."):
        verify_stripe(["whsec_a-secret-of-sixteen"], headers, body, NOW)
