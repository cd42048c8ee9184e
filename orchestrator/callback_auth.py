"""Who may complete a task through its callback URL: the service's `auth` scheme, checked.

Pure: the service spec, the attempt's own secret, the request's headers, body and URL in;
the id its receipt is kept under out, or SignatureError (401) saying why not.

* `standard`: Standard Webhooks, signed with one of the service's secrets or the attempt's
  `ctx.callback_secret`; the receipt is kept under the signed `webhook-id`.
* `header`: the named header equals one of the service's secrets or the attempt's secret.
* `twilio`: X-Twilio-Signature over the URL the service was handed and the form's fields,
  keyed with one of the service's auth tokens.
* `capability`: the token in the URL is the whole proof.

The schemes without a signed message id keep a callback's receipt under its body's hash,
so the same body again is a duplicate, and a different one after completion a conflict.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence

from orchestrator.model import ServiceSpec
from orchestrator.signing import SignatureError, verify, verify_header, verify_twilio


class NotAForm(ValueError):
    """A Twilio-signed callback whose body is not form-encoded (answered 415)."""


def receipt_id(body: bytes) -> str:
    """The receipt id of a callback whose scheme signs no message id: its body's hash."""
    return "body:" + hashlib.sha256(body).hexdigest()


def authenticate(
    service: ServiceSpec | None,
    attempt_secret: str,
    headers: Mapping[str, str],
    body: bytes,
    form: Sequence[tuple[str, str]] | None,
    url: str,
    now: float,
    tolerance: float,
) -> str:
    """The receipt id once the callback proved its sender; SignatureError otherwise.

    `url` is the callback URL as handed to the service (the public URL, the path and any
    query), which a Twilio signature covers; `form` the body's fields if it is a form.
    """
    auth = service.auth if service is not None else "standard"
    secrets = service.secret_values() if service is not None else []
    if auth == "standard":
        return verify([*secrets, attempt_secret], headers, body, now, tolerance).message_id
    if auth == "header":
        header = service.header if service is not None else None
        if header is None:  # pragma: no cover - ServiceSpec requires it with this scheme
            raise SignatureError("no header is configured to check")
        verify_header([*secrets, attempt_secret], headers, header)
    elif auth == "twilio":
        if form is None:
            raise NotAForm("Twilio callbacks are form-encoded (application/x-www-form-urlencoded)")
        verify_twilio(secrets, headers, url, form)
    elif auth != "capability":  # pragma: no cover - the spec allows no other value
        raise SignatureError(f"unknown auth scheme {auth!r}")
    return receipt_id(body)
