"""Reading a run summary as a person would: the printed figures, and redoing its division."""

from __future__ import annotations

import re


def printed(text: str, figure: str) -> float:
    """The number a summary line prints for `figure` (in seconds, or an x for the speedup)."""
    match = re.search(rf"^  {figure} +([0-9.]+)(s|x)", text, re.MULTILINE)
    assert match is not None, f"no {figure!r} line in\n{text}"
    return float(match.group(1))


def assert_checkable_by_hand(text: str) -> None:
    """The printed speedup is the printed sum of run times (plus paced waits) over the
    printed wall-clock, within the rounding of the printed digits."""
    wall, ran, speedup = (printed(text, f) for f in ("wall-clock", "sum of run times", "speedup"))
    paced = printed(text, "paced waits") if "paced waits" in text else 0.0
    # Each printed figure is off by at most half its last digit (at most 0.005 s).
    low = max(0.0, ran + paced - 0.01) / (wall + 0.005)
    high = (ran + paced + 0.01) / max(wall - 0.005, 1e-9)
    shown = re.search(r"^  speedup +([0-9.]+)x", text, re.MULTILINE)
    assert shown is not None
    decimals = len(shown.group(1).partition(".")[2])
    half_digit = 0.5 * 10**-decimals
    assert low - half_digit <= speedup <= high + half_digit, text
