"""Form-encoded bodies (application/x-www-form-urlencoded), read strictly and bounded.

Twilio and other providers POST their callbacks as forms. A body is `key=value` pairs
joined by `&`, percent-encoded ASCII with `+` for a space. Anything else is refused with a
reason rather than guessed at: a pair without `=`, an empty key, an empty pair (`a=1&&b`),
a `%` not followed by two hex digits, a byte outside printable ASCII, an escape that does
not decode as UTF-8, a control character once decoded, more than MAX_FIELDS pairs.
"""

from __future__ import annotations

import re
import unicodedata
from urllib.parse import unquote_to_bytes

FORM_TYPE = "application/x-www-form-urlencoded"
MAX_FIELDS = 1000
_RAW = re.compile(r"(?:[A-Za-z0-9*\-._~!$'()+,;:@/?=]|%[0-9A-Fa-f]{2})*")


class FormRejected(ValueError):
    """A body that is not a strict form; `error` is the code answered with 400."""

    def __init__(self, error: str, detail: str) -> None:
        super().__init__(detail)
        self.error = error
        self.detail = detail


def is_form(content_type: str | None) -> bool:
    """Whether a Content-Type header names a form body (parameters such as charset aside)."""
    if content_type is None:
        return False
    return content_type.split(";", 1)[0].strip().lower() == FORM_TYPE


def parse_form(body: bytes) -> list[tuple[str, str]]:
    """The (key, value) pairs of a form body, in order, decoded; FormRejected says why not."""
    try:
        text = body.decode("ascii")
    except UnicodeDecodeError:
        raise FormRejected("invalid_form", "a form body is percent-encoded ASCII") from None
    if not text:
        return []
    parts = text.split("&")
    if len(parts) > MAX_FIELDS:
        raise FormRejected("invalid_form", f"a form body holds at most {MAX_FIELDS} fields")
    return [_pair(part, number) for number, part in enumerate(parts, 1)]


def _pair(part: str, number: int) -> tuple[str, str]:
    raw_key, equals, raw_value = part.partition("=")
    if not equals or not raw_key:
        raise FormRejected("invalid_form", f"field {number} is not key=value")
    return _decoded(raw_key, number), _decoded(raw_value, number)


def _decoded(raw: str, number: int) -> str:
    if not _RAW.fullmatch(raw):
        raise FormRejected(
            "invalid_form", f"field {number} has a character that must be percent-encoded"
        )
    try:
        text = unquote_to_bytes(raw.replace("+", " ")).decode("utf-8")
    except UnicodeDecodeError:
        raise FormRejected("invalid_form", f"field {number} does not decode as UTF-8") from None
    if any(unicodedata.category(ch) == "Cc" and ch not in "\t\n\r" for ch in text):
        raise FormRejected("invalid_form", f"field {number} holds a control character")
    return text


def form_object(pairs: list[tuple[str, str]]) -> dict[str, str]:
    """The pairs as one object; a key given twice is refused (which one would count?)."""
    found: dict[str, str] = {}
    for key, value in pairs:
        if key in found:
            raise FormRejected("duplicate_field", "a form field appears more than once")
        found[key] = value
    return found
