"""Human durations ("30s", "1h30m", "250ms") as seconds, for config fields."""

from __future__ import annotations

import math
import re
from typing import Annotated

from pydantic import BeforeValidator

_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d)")


def parse_duration(value: object) -> float:
    """Seconds from a number of seconds or a string like "1h30m"; ValueError names the problem."""
    if isinstance(value, bool):
        raise ValueError("expected a duration such as 30, '30s', '10m' or '1h30m'")
    if isinstance(value, int | float):
        seconds = float(value)
    elif isinstance(value, str):
        seconds = _parse_text(value.strip())
    else:
        raise ValueError("expected a duration such as 30, '30s', '10m' or '1h30m'")
    if not math.isfinite(seconds) or seconds < 0:
        raise ValueError("a duration must be a finite number of seconds, zero or more")
    return seconds


def _parse_text(text: str) -> float:
    if not text:
        raise ValueError("expected a duration such as '30s', got an empty string")
    try:
        return float(text)
    except ValueError:
        pass
    position, total = 0, 0.0
    for match in _PART.finditer(text):
        if match.start() != position:
            break
        total += float(match.group(1)) * _UNIT_SECONDS[match.group(2)]
        position = match.end()
    if position != len(text):
        raise ValueError(
            f"expected a duration such as '30s', '10m' or '1h30m' (units ms, s, m, h, d), got {text!r}"
        )
    return total


Duration = Annotated[float, BeforeValidator(parse_duration)]
"""A config field holding seconds, written as a number or a string with units."""
