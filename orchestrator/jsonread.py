"""The one strict JSON reader: RFC 8259 JSON only, bounded in depth and number size, named errors.

Every JSON body the server reads (callbacks, webhooks, admin fire) and every output a
handler returns goes through `read_json`, so what is stored is always strict JSON that any
other parser (a browser, jq, PostgreSQL's jsonb) reads back unchanged. Refused, each with
its own error name:

* `invalid_utf8`: the bytes are not UTF-8 (no BOM, no UTF-16);
* `malformed_json`: not JSON, including `NaN`, `Infinity` and `-Infinity`;
* `json_too_deep`: arrays and objects nested more than `MAX_DEPTH` levels;
* `json_number_too_large`: a number written with more than `MAX_NUMBER_CHARS` characters,
  or one that overflows a 64-bit float (`1e999`);
* `json_lone_surrogate`: a string or key holding half of a UTF-16 surrogate pair
  (`"\\ud800"`), which is no Unicode text at all;
* `json_duplicate_key`: one object naming a key twice. RFC 8259 leaves the meaning open and
  parsers differ (first wins, last wins), so a signed body could mean one thing to the
  sender and another here; it is refused rather than guessed at.

The standard library's decoder does the parsing (in C); the limits are its hooks, a
`RecursionError` backstop for nesting deeper than the interpreter's stack, and one walk of
the parsed value, taken only when the text could break a limit the hooks cannot see.
"""

from __future__ import annotations

import json
import math
import re
from collections import Counter
from typing import Any

MAX_DEPTH = 64
MAX_NUMBER_CHARS = 100

# Raw UTF-8 cannot hold a surrogate (the decoder refuses it), so one can only come from a
# `\uD800`-`\uDFFF` escape; valid pairs are joined by the decoder, what is left is lone.
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")
_SURROGATE = re.compile("[\ud800-\udfff]")


class JsonRejected(ValueError):
    """Why a body is not strict JSON within the limits; `error` names it, `detail` says it."""

    def __init__(self, error: str, detail: str) -> None:
        super().__init__(detail)
        self.error = error
        self.detail = detail


def read_json(raw: bytes) -> Any:
    """The JSON value in `raw`, or JsonRejected; never any other exception."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as error:
        raise JsonRejected(
            "invalid_utf8", f"the body is not UTF-8 (byte {error.start} cannot start a character)"
        ) from None
    try:
        value = _DECODER.decode(text)
    except json.JSONDecodeError as error:
        raise JsonRejected(
            "malformed_json",
            f"the body is not valid JSON: {error.msg} at line {error.lineno} column {error.colno}",
        ) from None
    except RecursionError:
        raise _too_deep() from None
    _check_walk(value, text)
    return value


def check_strict(value: Any) -> str:
    """`value` as strict JSON text, or JsonRejected: what a handler returns must read back."""
    try:
        text = json.dumps(value, allow_nan=False, separators=(",", ":"))
    except RecursionError:
        raise _too_deep() from None
    except ValueError as error:
        if "Out of range float" in str(error):
            raise JsonRejected("malformed_json", "NaN and Infinity are not JSON") from None
        if "integer string conversion" in str(error):
            raise _number_too_large() from None
        raise JsonRejected("malformed_json", str(error)) from None  # a circular reference
    read_json(text.encode())
    return text


def _reject_constant(name: str) -> Any:
    raise JsonRejected("malformed_json", f"{name} is not JSON (strict JSON has no NaN or Infinity)")


def _number_too_large() -> JsonRejected:
    return JsonRejected(
        "json_number_too_large",
        f"a number is written with more than {MAX_NUMBER_CHARS} characters",
    )


def _too_deep() -> JsonRejected:
    return JsonRejected(
        "json_too_deep", f"arrays and objects are nested more than {MAX_DEPTH} levels deep"
    )


def _parse_int(text: str) -> int:
    if len(text) > MAX_NUMBER_CHARS:
        raise _number_too_large()
    return int(text)


def _parse_float(text: str) -> float:
    if len(text) > MAX_NUMBER_CHARS:
        raise _number_too_large()
    value = float(text)
    if math.isinf(value):
        raise JsonRejected("json_number_too_large", "a number overflows a 64-bit float")
    return value


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    value = dict(pairs)
    if len(value) != len(pairs):
        counts = Counter(key for key, _ in pairs)
        key = next(key for key, count in counts.items() if count > 1)
        raise JsonRejected(
            "json_duplicate_key", f"the key {_shown(key)} appears twice in one object"
        )
    return value


def _shown(text: str, limit: int = 40) -> str:
    """A key fit to echo: escaped, and cut short (the sender chose it)."""
    return repr(text[:limit] + ("..." if len(text) > limit else ""))


_DECODER = json.JSONDecoder(
    object_pairs_hook=_unique_keys,
    parse_int=_parse_int,
    parse_float=_parse_float,
    parse_constant=_reject_constant,
)


def _check_walk(value: Any, text: str) -> None:
    """Depth and lone surrogates, each walked only when the text could break that limit."""
    if text.count("[") + text.count("{") > MAX_DEPTH and _nested_too_deep(value):
        raise _too_deep()
    if _SURROGATE_ESCAPE.search(text) is not None and _holds_lone_surrogate(value):
        raise _lone_surrogate()


def _nested_too_deep(value: Any) -> bool:
    """Level by level, containers only: a wide body costs one visit per array and object."""
    level = [value] if isinstance(value, dict | list) else []
    for _ in range(MAX_DEPTH):
        below: list[Any] = []
        for container in level:
            for item in container.values() if type(container) is dict else container:
                if type(item) is dict or type(item) is list:  # what the decoder builds
                    below.append(item)
        if not below:
            return False
        level = below
    return True


def _holds_lone_surrogate(value: Any) -> bool:
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            if _SURROGATE.search(item):
                return True
        elif isinstance(item, dict):
            if any(_SURROGATE.search(key) for key in item):
                return True
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return False


def _lone_surrogate() -> JsonRejected:
    return JsonRejected(
        "json_lone_surrogate",
        "a string holds a lone UTF-16 surrogate (\\ud800-\\udfff without its pair): not text",
    )
