"""Webhook signatures: sign and verify, pure functions with the clock passed in.

Standard Webhooks (below), GitHub and Stripe for inbound hooks; Twilio's
X-Twilio-Signature and a fixed secret header for callbacks of services that do not sign
the Standard Webhooks way.

The scheme (https://www.standardwebhooks.com): headers `webhook-id`, `webhook-timestamp`
(Unix seconds) and `webhook-signature`, a space-separated list of `v1,<base64 HMAC-SHA256>`
over `{id}.{timestamp}.{raw body}`, keyed with the base64 secret after its `whsec_` prefix.
Several signatures (and several accepted secrets) let a secret rotate without downtime.

A service written in Python signs its callback like this:

    from orchestrator.signing import sign_headers
    headers = sign_headers(secret, body)          # body: the exact bytes you POST
    httpx.post(callback_url, content=body, headers={**headers, "content-type": "application/json"})
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import re
import secrets as random_secrets
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from urllib.parse import urlsplit, urlunsplit

_UNIX_SECONDS = re.compile(r"[0-9]{1,12}")  # ASCII digits only; no overflow, no "²"
SECRET_PREFIX = "whsec_"  # noqa: S105 - the scheme's prefix, not a secret
DEFAULT_TOLERANCE = 300.0


class SignatureError(ValueError):
    """Why a request's signature is not accepted; the message is safe to show the sender."""


@dataclass(frozen=True, slots=True)
class Verified:
    message_id: str
    timestamp: int


def new_secret() -> str:
    """A fresh `whsec_` secret with 256 random bits."""
    return SECRET_PREFIX + base64.b64encode(random_secrets.token_bytes(32)).decode()


def secret_from_key(key: bytes) -> str:
    """A `whsec_` secret whose key bytes are `key` (for per-task secrets derived elsewhere)."""
    return SECRET_PREFIX + base64.b64encode(key).decode()


def _key(secret: str) -> bytes:
    try:
        return base64.b64decode(secret.removeprefix(SECRET_PREFIX), validate=True)
    except (binascii.Error, ValueError):
        raise ValueError("a webhook secret must be base64, optionally prefixed whsec_") from None


def _raw(text: str) -> bytes:
    """Header text as bytes to sign or compare. Any str encodes, lone surrogates included:
    a value no sender could have signed must fail the comparison, not crash it."""
    return text.encode("utf-8", "surrogatepass")


def signature(secret: str, message_id: str, timestamp: int, body: bytes) -> str:
    """The `v1,<base64>` signature of one message."""
    signed = _raw(f"{message_id}.{timestamp}.") + body
    digest = hmac.new(_key(secret), signed, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode()


def sign_headers(
    secret: str, body: bytes, message_id: str | None = None, timestamp: int | None = None
) -> dict[str, str]:
    """The three Standard Webhooks headers for POSTing `body` (exact bytes) signed with `secret`."""
    message_id = message_id or "msg_" + random_secrets.token_hex(12)
    timestamp = int(time.time()) if timestamp is None else timestamp
    return {
        "webhook-id": message_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": signature(secret, message_id, timestamp, body),
    }


def verify(
    accepted: Sequence[str],
    headers: Mapping[str, str],
    body: bytes,
    now: float,
    tolerance: float = DEFAULT_TOLERANCE,
) -> Verified:
    """Check the signature headers against every accepted secret; SignatureError says why not.

    The raw body bytes are verified, never re-serialized JSON; comparison is constant-time.
    A malformed header is a SignatureError like any other, never a crash.
    """
    message_id = headers.get("webhook-id")
    stamp = headers.get("webhook-timestamp")
    signatures = headers.get("webhook-signature")
    if not message_id or not stamp or not signatures:
        raise SignatureError("missing webhook-id, webhook-timestamp or webhook-signature header")
    if not _UNIX_SECONDS.fullmatch(stamp):
        raise SignatureError("webhook-timestamp must be Unix seconds")
    timestamp = int(stamp)
    if abs(now - timestamp) > tolerance:
        raise SignatureError(f"webhook-timestamp is more than {int(tolerance)} s from now")
    presented = [part.removeprefix("v1,") for part in signatures.split() if part.startswith("v1,")]
    if not presented:
        raise SignatureError("webhook-signature has no v1 signature")
    for secret in accepted:
        expected = signature(secret, message_id, timestamp, body).removeprefix("v1,")
        for candidate in presented:
            if hmac.compare_digest(expected.encode(), _raw(candidate)):
                return Verified(message_id, timestamp)
    raise SignatureError("no signature matches")


def verify_github(accepted: Sequence[str], headers: Mapping[str, str], body: bytes) -> str | None:
    """GitHub's `X-Hub-Signature-256: sha256=<hex HMAC>`; returns the X-GitHub-Delivery id."""
    header = headers.get("x-hub-signature-256", "")
    if not header.startswith("sha256="):
        raise SignatureError("missing X-Hub-Signature-256 (sha256=...) header")
    presented = _raw(header.removeprefix("sha256=").strip())
    for secret in accepted:
        expected = hmac.new(secret.encode(), body, hashlib.sha256).hexdigest().encode()
        if hmac.compare_digest(expected, presented):
            return headers.get("x-github-delivery")
    raise SignatureError("no signature matches")


def verify_stripe(
    accepted: Sequence[str],
    headers: Mapping[str, str],
    body: bytes,
    now: float,
    tolerance: float = DEFAULT_TOLERANCE,
) -> int:
    """Stripe's `Stripe-Signature: t=<seconds>,v1=<hex HMAC of "t.body">`; returns t."""
    stamps, signatures = [], []
    for part in headers.get("stripe-signature", "").split(","):
        key, _, value = part.strip().partition("=")
        if key == "t":
            stamps.append(value)
        elif key == "v1":
            signatures.append(_raw(value))
    if len(stamps) != 1 or not _UNIX_SECONDS.fullmatch(stamps[0]) or not signatures:
        raise SignatureError("Stripe-Signature needs t=<Unix seconds> and at least one v1=")
    timestamp = int(stamps[0])
    if abs(now - timestamp) > tolerance:
        raise SignatureError(f"Stripe-Signature timestamp is more than {int(tolerance)} s from now")
    signed = f"{timestamp}.".encode() + body
    for secret in accepted:
        expected = hmac.new(secret.encode(), signed, hashlib.sha256).hexdigest().encode()
        if any(hmac.compare_digest(expected, candidate) for candidate in signatures):
            return timestamp
    raise SignatureError("no signature matches")


def twilio_signature(auth_token: str, url: str, params: Iterable[tuple[str, str]]) -> str:
    """Twilio's X-Twilio-Signature: base64 HMAC-SHA1, keyed with the auth token, of the
    full URL followed by each form parameter's name and value, sorted by name (then by
    value; a pair repeated counts once), as twilio's RequestValidator computes it."""
    values: dict[str, set[str]] = {}
    for name, value in params:
        values.setdefault(name, set()).add(value)
    signed = url + "".join(
        name + value for name in sorted(values) for value in sorted(values[name])
    )
    digest = hmac.new(_raw(auth_token), _raw(signed), hashlib.sha1).digest()
    return base64.b64encode(digest).decode()


def _with_and_without_port(url: str) -> list[str]:
    """The URL as signed with the default port written out and left out: Twilio signs
    either way (its own validator accepts both)."""
    parts = urlsplit(url)
    host = parts.netloc.rsplit("@", 1)[-1]
    default = "443" if parts.scheme == "https" else "80"
    if parts.port is not None:
        bare = parts.netloc.rsplit(":", 1)[0]
        return (
            [url] if str(parts.port) != default else [url, urlunsplit(parts._replace(netloc=bare))]
        )
    return [url, urlunsplit(parts._replace(netloc=f"{host}:{default}"))]


def verify_twilio(
    accepted: Sequence[str],
    headers: Mapping[str, str],
    url: str,
    params: Sequence[tuple[str, str]],
) -> None:
    """Check X-Twilio-Signature over `url` (as the sender was given it) and the form
    parameters, against every accepted auth token; SignatureError says why not."""
    presented = headers.get("x-twilio-signature")
    if not presented:
        raise SignatureError("missing X-Twilio-Signature header")
    candidate = _raw(presented.strip())
    for token in accepted:
        for signed_url in _with_and_without_port(url):
            expected = twilio_signature(token, signed_url, params).encode()
            if hmac.compare_digest(expected, candidate):
                return
    raise SignatureError("no signature matches")


def verify_header(accepted: Sequence[str], headers: Mapping[str, str], name: str) -> None:
    """Check that header `name` equals one of the accepted secrets, in constant time
    (`headers` as Starlette's, or lowercase keys)."""
    presented = headers.get(name.lower())
    if presented is None:
        raise SignatureError(f"missing {name} header")
    found = False
    for secret in accepted:
        found |= hmac.compare_digest(_raw(secret), _raw(presented))
    if not found:
        raise SignatureError(f"{name} does not match")
