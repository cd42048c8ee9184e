"""Standard Webhooks signing: round trips, rotation, every rejection, and the reference library."""

from __future__ import annotations

import base64
import json
import time
from datetime import UTC, datetime

import pytest
import standardwebhooks
from hypothesis import given
from hypothesis import strategies as st
from standardwebhooks import WebhookVerificationError

from orchestrator.signing import (
    SECRET_PREFIX,
    SignatureError,
    Verified,
    new_secret,
    sign_headers,
    signature,
    verify,
)

KEY = bytes(range(32))
BARE = base64.b64encode(KEY).decode()
SECRET = SECRET_PREFIX + BARE
OLD_SECRET = SECRET_PREFIX + base64.b64encode(b"o" * 32).decode()
T = 1_700_000_000
BODY = b'{"status":"succeeded","output":{"name":"Zo\xc3\xab"}}'


def signed(body: bytes = BODY, secret: str = SECRET, message_id: str = "msg_1") -> dict[str, str]:
    """Headers for `body` signed with `secret` at time T."""
    return sign_headers(secret, body, message_id, T)


# Round trips.


def test_sign_then_verify_round_trips() -> None:
    """Headers from sign_headers verify for the same body, naming the message id and time."""
    assert verify([SECRET], signed(), BODY, now=T) == Verified("msg_1", T)


def test_sign_headers_fills_in_an_id_and_the_current_time() -> None:
    """Without an id or time, sign_headers makes a msg_ id and stamps the current second."""
    before = int(time.time())
    headers = sign_headers(SECRET, BODY)
    after = int(time.time())
    assert headers["webhook-id"].startswith("msg_")
    assert before <= int(headers["webhook-timestamp"]) <= after
    assert sign_headers(SECRET, BODY)["webhook-id"] != headers["webhook-id"]
    verified = verify([SECRET], headers, BODY, now=float(headers["webhook-timestamp"]))
    assert verified.message_id == headers["webhook-id"]


def test_signature_header_is_v1_and_base64_of_a_sha256_mac() -> None:
    """The signature is `v1,` then the base64 of 32 MAC bytes."""
    value = signed()["webhook-signature"]
    assert value.startswith("v1,")
    assert len(base64.b64decode(value.removeprefix("v1,"), validate=True)) == 32


def test_any_one_of_several_signatures_is_enough() -> None:
    """A header listing several signatures verifies when any one of them matches."""
    good = signed()["webhook-signature"]
    other = signed(secret=OLD_SECRET)["webhook-signature"]
    for listing in (f"{other} {good}", f"{good} {other}", f"v2,AAAA {good}", f"v1,junk  {good}"):
        headers = {**signed(), "webhook-signature": listing}
        assert verify([SECRET], headers, BODY, now=T) == Verified("msg_1", T)


def test_any_one_of_several_accepted_secrets_is_enough() -> None:
    """During a rotation a message signed with either the old or the new secret verifies."""
    for secret in (OLD_SECRET, SECRET):
        assert verify([OLD_SECRET, SECRET], signed(secret=secret), BODY, now=T).timestamp == T


def test_secret_with_and_without_prefix_sign_alike() -> None:
    """The whsec_ prefix is optional: the bare base64 key signs and verifies the same."""
    assert signature(BARE, "msg_1", T, BODY) == signature(SECRET, "msg_1", T, BODY)
    assert verify([BARE], signed(secret=SECRET), BODY, now=T) == Verified("msg_1", T)
    assert verify([SECRET], signed(secret=BARE), BODY, now=T) == Verified("msg_1", T)


def test_new_secret_is_a_fresh_usable_whsec_secret() -> None:
    """new_secret returns a whsec_ secret of 32 random bytes that signs and verifies."""
    secret = new_secret()
    assert secret.startswith(SECRET_PREFIX)
    assert len(base64.b64decode(secret.removeprefix(SECRET_PREFIX))) == 32
    assert secret != new_secret()
    assert verify([secret], signed(secret=secret), BODY, now=T).message_id == "msg_1"


@pytest.mark.parametrize("secret", ["whsec_not base64!", "whsec_abc", "%%%", "whsec_é"])
def test_secret_that_is_not_base64_raises_value_error(secret: str) -> None:
    """A secret that is not base64 is a ValueError saying so, not a signature."""
    with pytest.raises(ValueError, match="base64"):
        sign_headers(secret, BODY, "msg_1", T)


# Rejections.


def test_tampered_body_is_rejected() -> None:
    """A body changed after signing no longer verifies."""
    with pytest.raises(SignatureError, match="no signature matches"):
        verify([SECRET], signed(), BODY.replace(b"succeeded", b"failed"), now=T)


def test_wrong_secret_is_rejected() -> None:
    """A message signed with a secret that is not accepted does not verify."""
    with pytest.raises(SignatureError, match="no signature matches"):
        verify([SECRET], signed(secret=OLD_SECRET), BODY, now=T)


@pytest.mark.parametrize("header", ["webhook-id", "webhook-timestamp"])
def test_changed_id_or_timestamp_is_rejected(header: str) -> None:
    """The id and the timestamp are signed too: changing either one breaks the signature."""
    changed = str(T + 1) if header == "webhook-timestamp" else "msg_2"
    with pytest.raises(SignatureError, match="no signature matches"):
        verify([SECRET], {**signed(), header: changed}, BODY, now=T)


@pytest.mark.parametrize("offset", [-300, 0, 300])
def test_timestamp_within_the_tolerance_is_accepted(offset: int) -> None:
    """A timestamp up to the tolerance (300 s) before or after now verifies."""
    assert verify([SECRET], signed(), BODY, now=T + offset) == Verified("msg_1", T)


@pytest.mark.parametrize("offset", [-301, 301, -86_400, 86_400])
def test_timestamp_outside_the_tolerance_is_rejected(offset: int) -> None:
    """A timestamp too old (now after it) or too new (now before it) is refused."""
    with pytest.raises(SignatureError, match="more than 300 s from now"):
        verify([SECRET], signed(), BODY, now=T + offset)


def test_tolerance_is_an_argument() -> None:
    """A smaller tolerance passed in narrows the accepted window."""
    assert verify([SECRET], signed(), BODY, now=T + 10, tolerance=10).timestamp == T
    with pytest.raises(SignatureError, match="more than 10 s"):
        verify([SECRET], signed(), BODY, now=T + 11, tolerance=10)


@pytest.mark.parametrize("header", ["webhook-id", "webhook-timestamp", "webhook-signature"])
@pytest.mark.parametrize("missing", ["absent", "empty"])
def test_missing_header_is_rejected(header: str, missing: str) -> None:
    """Each of the three headers is required: absent or empty, the message is refused."""
    headers = signed()
    if missing == "absent":
        del headers[header]
    else:
        headers[header] = ""
    with pytest.raises(SignatureError, match="missing"):
        verify([SECRET], headers, BODY, now=T)


@pytest.mark.parametrize(
    "stamp", ["soon", "1700000000.0", "-1700000000", " 1700000000", "1.7e9", "0x6553f100"]
)
def test_non_numeric_timestamp_is_rejected(stamp: str) -> None:
    """A timestamp that is not plain Unix seconds is a SignatureError."""
    with pytest.raises(SignatureError, match="Unix seconds"):
        verify([SECRET], {**signed(), "webhook-timestamp": stamp}, BODY, now=T)


@pytest.mark.parametrize("value", ["v2,AAAA", "AAAA", "v1", "V1,AAAA", " ", "v1;AAAA"])
def test_signature_header_without_v1_is_rejected(value: str) -> None:
    """A signature header with no `v1,` entry is refused as having no v1 signature."""
    with pytest.raises(SignatureError, match="no v1 signature"):
        verify([SECRET], {**signed(), "webhook-signature": value}, BODY, now=T)


@pytest.mark.parametrize(
    "value",
    [
        "v1,",
        "v1,!!!not-base64!!!",
        "v1,AAAA=====",
        "v1," + base64.b64encode(bytes(32)).decode(),
        "v1,ÿ€\u2603",
        "v1,\x00\x01",
        "v1,,,, v1,=",
    ],
)
def test_garbage_signature_is_a_signature_error(value: str) -> None:
    """A v1 signature that is garbage or bad base64 is a SignatureError, never a crash."""
    with pytest.raises(SignatureError, match="no signature matches"):
        verify([SECRET], {**signed(), "webhook-signature": value}, BODY, now=T)


# Properties.


@given(body=st.binary(min_size=1, max_size=512), message_id=st.text(min_size=1), data=st.data())
def test_sign_verify_round_trips_and_detects_any_changed_byte(
    body: bytes, message_id: str, data: st.DataObject
) -> None:
    """For any body and message id, sign then verify succeeds, and changing one byte fails."""
    headers = sign_headers(SECRET, body, message_id, T)
    assert verify([SECRET], headers, body, now=T) == Verified(message_id, T)
    index = data.draw(st.integers(0, len(body) - 1), label="index")
    flip = data.draw(st.integers(1, 255), label="xor")
    changed = body[:index] + bytes([body[index] ^ flip]) + body[index + 1 :]
    with pytest.raises(SignatureError):
        verify([SECRET], headers, changed, now=T)


# The reference implementation.


@pytest.mark.parametrize("secret", [SECRET, BARE])
def test_reference_library_signature_verifies_with_ours(secret: str) -> None:
    """A message signed by the standardwebhooks package verifies with our verify."""
    payload = json.dumps({"status": "succeeded", "output": {"name": "Zoë"}}, ensure_ascii=False)
    sent_at = datetime.fromtimestamp(T, tz=UTC)
    value = standardwebhooks.Webhook(secret).sign("msg_ref", sent_at, payload)
    headers = {"webhook-id": "msg_ref", "webhook-timestamp": str(T), "webhook-signature": value}
    assert verify([SECRET], headers, payload.encode(), now=T) == Verified("msg_ref", T)


@pytest.mark.parametrize("secret", [SECRET, BARE])
def test_our_headers_verify_with_the_reference_library(secret: str) -> None:
    """Headers from our sign_headers (current time) verify with the standardwebhooks package."""
    message = {"status": "succeeded", "output": {"name": "Zoë", "n": [1, None]}}
    body = json.dumps(message, ensure_ascii=False).encode()
    headers = sign_headers(secret, body)
    assert standardwebhooks.Webhook(SECRET).verify(body, headers) == message


def test_reference_library_rejects_our_headers_for_another_body() -> None:
    """The reference library agrees that our signature does not cover a changed body."""
    headers = sign_headers(SECRET, BODY)
    with pytest.raises(WebhookVerificationError):
        standardwebhooks.Webhook(SECRET).verify(BODY + b" ", headers)


@pytest.mark.parametrize(
    "stamp",
    [
        "²",
        "\uff11\uff17\uff10\uff10\uff10\uff10\uff10\uff10\uff10\uff10",
        "1" + "0" * 400,
        "9" * 5000,
    ],
)
def test_exotic_or_huge_timestamps_are_signature_errors(stamp: str) -> None:
    """Unicode digits and absurdly long numbers are refused as SignatureError, never a crash."""
    headers = {**signed(), "webhook-timestamp": stamp}
    with pytest.raises(SignatureError, match="Unix seconds"):
        verify([SECRET], headers, BODY, now=time.time())
