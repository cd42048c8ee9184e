"""Lane loads from rows: what every store's `lane_loads` returns, built the same way."""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping

from orchestrator.store.base import Lane, LaneLoad


def lane_loads_of(
    lanes: Collection[Lane],
    in_flight: Mapping[Lane, int],
    started: Iterable[tuple[str, str, float]],
    since: Mapping[Lane, float],
) -> dict[Lane, LaneLoad]:
    """Each lane's load from its dispatched count and the (workflow, step, started_at) rows
    read since the earliest `since`; a lane keeps only its starts after its own `since`."""
    starts: dict[Lane, list[float]] = {}
    for workflow, step, at in started:
        lane = (workflow, step)
        after = since.get(lane)
        if after is not None and at > after:
            starts.setdefault(lane, []).append(at)
    return {
        lane: LaneLoad(in_flight.get(lane, 0), tuple(sorted(starts.get(lane, ()))))
        for lane in lanes
    }
