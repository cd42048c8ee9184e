"""Cron fire times in a timezone, with stated DST and misfire policies; pure, the clock passed in.

croniter walks the *wall clock* (naive local times that match the expression); this module
turns each wall-clock time into UTC instants itself, because that is where schedulers go
wrong around daylight saving:

* a local time that does not exist (spring forward): `shift` fires at the end of the gap,
  the first instant that exists; `skip` does not fire;
* a local time that occurs twice (fall back): `first` fires at the earlier instant, `last`
  at the later, `both` at each.

Unless a trigger says otherwise, the defaults are Vixie cron's (`dst_defaults`): a job at a
fixed time of day shifts and fires once, while a job with a wildcard in its minute or hour
(`*/15 * * * *`, `@hourly`) follows the clock as it is: the times a gap removes do not
happen, the times an overlap repeats happen twice, so such a job keeps its real interval.
Day of month and day of week are also read as Vixie does: when both are restricted a day
matching either fires, unless one of them starts with `*` (`*/2`), then it must match both.

Two wall-clock times that shift to the same instant fire once. After downtime, `misfires`
says which of the missed fire times to fire: `skip` none, `latest` the last one (default),
`all` every one; only fires within the grace window count.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Literal
from zoneinfo import ZoneInfo

from croniter import CroniterBadDateError, croniter

OnGap = Literal["shift", "skip"]
OnOverlap = Literal["first", "last", "both"]
Misfire = Literal["skip", "latest", "all"]


@dataclass(frozen=True, slots=True)
class Schedule:
    expression: str
    timezone: ZoneInfo
    on_gap: OnGap = "shift"
    on_overlap: OnOverlap = "first"

    @classmethod
    def of(
        cls,
        expression: str,
        timezone: ZoneInfo,
        on_gap: OnGap | None = None,
        on_overlap: OnOverlap | None = None,
    ) -> Schedule:
        """A schedule whose unset DST policies are Vixie's for its expression."""
        gap, overlap = dst_defaults(expression)
        return cls(expression, timezone, on_gap or gap, on_overlap or overlap)


FIXED_MACROS = {"@yearly", "@annually", "@monthly", "@weekly", "@daily", "@midnight"}


def dst_defaults(expression: str) -> tuple[OnGap, OnOverlap]:
    """Vixie cron's rule: a job at a fixed time of day (no `*` leading its minute or hour)
    fires once at a change, shifted out of a gap; a wildcard job follows the wall clock."""
    fields = expression.strip().split()
    if len(fields) == 1:
        wildcard = fields[0].lower() not in FIXED_MACROS
    else:
        wildcard = fields[0].startswith("*") or fields[1].startswith("*")
    return ("skip", "both") if wildcard else ("shift", "first")


def _walker(expression: str, start: datetime) -> croniter:
    """croniter with Vixie's day matching (a `*`-led day field makes the two an AND)."""
    return croniter(expression, start, implement_cron_bug=True)


def valid_expression(expression: str) -> bool:
    """Five fields, or a macro such as @daily or @hourly, that matches some date at all."""
    expression = expression.strip()
    if len(expression.split()) not in (1, 5) or not croniter.is_valid(expression):
        return False
    try:  # "0 0 30 2 *" is well-formed, but 30 February never comes
        _walker(expression, datetime(2026, 1, 1, tzinfo=UTC)).get_next(datetime)
    except CroniterBadDateError:
        return False
    return True


def fires_after(schedule: Schedule, after: datetime, limit: int = 1) -> list[datetime]:
    """The next `limit` fire instants (UTC, aware) strictly after `after`."""
    found: list[datetime] = []
    if limit <= 0:
        return found
    for instant in _instants(schedule, after):
        if not found or instant != found[-1]:
            found.append(instant)
        if len(found) == limit:
            break
    return found


def fires_between(schedule: Schedule, after: datetime, until: datetime) -> list[datetime]:
    """Every fire instant in (after, until], oldest first."""
    found: list[datetime] = []
    for instant in _instants(schedule, after):
        if instant > until:
            break
        if not found or instant != found[-1]:
            found.append(instant)
    return found


def misfires(
    schedule: Schedule,
    last_fired: datetime | None,
    now: datetime,
    policy: Misfire,
    grace: timedelta,
) -> list[datetime]:
    """The missed fire instants to fire now, after downtime since `last_fired`."""
    if last_fired is None or policy == "skip":
        return []
    window_start = max(last_fired, now - grace)
    missed = fires_between(schedule, window_start, now)
    if policy == "latest":
        return missed[-1:]
    return missed


def _instants(schedule: Schedule, after: datetime) -> Iterator[datetime]:
    """UTC instants in increasing order, possibly repeated (shifted gap times coincide)."""
    zone = schedule.timezone
    # The wall clock maps to instants in order except inside an overlap, where a later wall
    # time can be an earlier instant by up to the DST shift. Starting a few hours early and
    # holding instants back by that margin yields them in order.
    margin = timedelta(hours=3)
    start = after.astimezone(zone).replace(tzinfo=None) - margin
    walker = _walker(schedule.expression, start)
    pending: list[datetime] = []
    while True:
        local = walker.get_next(datetime)
        pending.extend(instant for instant in _resolve(local, schedule) if instant > after)
        pending.sort()
        offsets = [
            local.replace(tzinfo=zone, fold=fold).utcoffset() or timedelta() for fold in (0, 1)
        ]
        horizon = local.replace(tzinfo=UTC) - max(offsets) - margin
        while pending and pending[0] <= horizon:
            yield pending.pop(0)


def _resolve(local: datetime, schedule: Schedule) -> list[datetime]:
    """The UTC instants a naive wall-clock time stands for, under the DST policies."""
    zone = schedule.timezone
    early = local.replace(tzinfo=zone, fold=0)
    late = local.replace(tzinfo=zone, fold=1)
    early_utc, late_utc = early.astimezone(UTC), late.astimezone(UTC)
    if early_utc.astimezone(zone).replace(tzinfo=None) != local:
        # A gap: this wall-clock time never happens.
        return [] if schedule.on_gap == "skip" else [_gap_end(early_utc, late_utc, zone)]
    if early_utc != late_utc:
        # An overlap: it happens twice.
        first, last = sorted((early_utc, late_utc))
        return {"first": [first], "last": [last], "both": [first, last]}[schedule.on_overlap]
    return [early_utc]


def _gap_end(a: datetime, b: datetime, zone: ZoneInfo) -> datetime:
    """The instant the clock jumps forward: the first one that exists after the gap."""
    low, high = min(a, b), max(a, b)
    offset = low.astimezone(zone).utcoffset()
    while high - low > timedelta(seconds=1):
        middle = low + (high - low) / 2
        if middle.astimezone(zone).utcoffset() == offset:
            low = middle
        else:
            high = middle
    return high.replace(microsecond=0)
