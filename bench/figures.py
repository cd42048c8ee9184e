"""Figures: a value with its unit and goal, the median of repeated runs with its spread."""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field


@dataclass
class Figure:
    name: str
    value: float
    unit: str
    goal: str
    met: bool | None
    spread: str = ""
    note: str = ""
    samples: list[float] = field(default_factory=list)

    @property
    def mark(self) -> str:
        return "" if self.met is None else "met" if self.met else "MISSED"


def median_figure(
    name: str,
    samples: Sequence[float],
    unit: str,
    goal: str = "-",
    note: str = "",
    *,
    at_most: float | None = None,
    at_least: float | None = None,
) -> Figure:
    """The median of `samples`, with min-max as its spread; met if it is within the bound."""
    value = statistics.median(samples)
    met = None
    if at_most is not None:
        met = value <= at_most
    elif at_least is not None:
        met = value >= at_least
    spread = f"{min(samples):.4g}-{max(samples):.4g}" if len(samples) > 1 else ""
    return Figure(
        name, round(value, 4), unit, goal, met, spread, note, [round(s, 6) for s in samples]
    )


def percentile(samples: Sequence[float], p: float) -> float:
    """The p-th percentile (0-100), nearest rank."""
    ordered = sorted(samples)
    rank = max(0, min(len(ordered) - 1, round(p / 100 * len(ordered) + 0.5) - 1))
    return ordered[rank]
