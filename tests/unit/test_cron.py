"""Cron fire times across DST, misfires after downtime, and the cron fields of a trigger spec."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from itertools import pairwise
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from orchestrator.cron import (
    OnGap,
    OnOverlap,
    Schedule,
    dst_defaults,
    fires_after,
    fires_between,
    misfires,
    valid_expression,
)
from orchestrator.model import TriggerSpec
from orchestrator.scheduler import schedule_of

BERLIN = ZoneInfo("Europe/Berlin")
NEW_YORK = ZoneInfo("America/New_York")
MINUTE = timedelta(minutes=1)
HOUR = timedelta(hours=1)
DAY = timedelta(days=1)


def utc(month: int, day: int, hour: int = 0, minute: int = 0) -> datetime:
    """An instant in 2026, given in UTC."""
    return datetime(2026, month, day, hour, minute, tzinfo=UTC)


def walls(instants: list[datetime], zone: ZoneInfo) -> list[str]:
    """The instants as local wall times with their offset, for readable assertions."""
    return [instant.astimezone(zone).isoformat() for instant in instants]


# Where the 2026 transitions are (every test below relies on these instants).

BERLIN_SPRING = utc(3, 29, 1)  # 02:00 CET -> 03:00 CEST
BERLIN_FALL = utc(10, 25, 1)  # 03:00 CEST -> 02:00 CET
NEW_YORK_SPRING = utc(3, 8, 7)  # 02:00 EST -> 03:00 EDT
NEW_YORK_FALL = utc(11, 1, 6)  # 02:00 EDT -> 01:00 EST
ZONES_UNDER_TEST = [BERLIN, NEW_YORK]


@pytest.mark.parametrize(
    ("zone", "transition", "before", "after"),
    [
        (BERLIN, BERLIN_SPRING, "2026-03-29T01:59:59+01:00", "2026-03-29T03:00:00+02:00"),
        (BERLIN, BERLIN_FALL, "2026-10-25T02:59:59+02:00", "2026-10-25T02:00:00+01:00"),
        (NEW_YORK, NEW_YORK_SPRING, "2026-03-08T01:59:59-05:00", "2026-03-08T03:00:00-04:00"),
        (NEW_YORK, NEW_YORK_FALL, "2026-11-01T01:59:59-04:00", "2026-11-01T01:00:00-05:00"),
    ],
)
def test_the_2026_transitions_are_where_these_tests_assume(zone, transition, before, after):
    """The tz database puts each 2026 clock change at the UTC instant the tests below use."""
    second = timedelta(seconds=1)
    assert walls([transition - second, transition], zone) == [before, after]


# A wall-clock time that does not exist (spring forward).

SPRINGS = [
    pytest.param(BERLIN, BERLIN_SPRING, id="berlin"),
    pytest.param(NEW_YORK, NEW_YORK_SPRING, id="new_york"),
]


@pytest.mark.parametrize(("zone", "transition"), SPRINGS)
def test_a_time_in_the_gap_shifts_to_the_end_of_the_gap(zone, transition):
    """With on_gap='shift', 02:30 fires once at the transition instant (03:00) on the gap day."""
    fires = fires_after(
        Schedule("30 2 * * *", zone, on_gap="shift"), transition - DAY - 2 * HOUR, 3
    )
    assert fires[1] == transition
    local = [fire.astimezone(zone) for fire in fires]
    assert [at.strftime("%H:%M") for at in local] == ["02:30", "03:00", "02:30"]
    gap_day = transition.astimezone(zone).date()
    assert [at.date() for at in local] == [gap_day - DAY, gap_day, gap_day + DAY]


@pytest.mark.parametrize(("zone", "transition"), SPRINGS)
def test_a_time_in_the_gap_is_skipped_with_skip(zone, transition):
    """With on_gap='skip', 02:30 does not fire on the gap day; the days around fire at 02:30."""
    fires = fires_after(Schedule("30 2 * * *", zone, on_gap="skip"), transition - DAY - 2 * HOUR, 3)
    local = [fire.astimezone(zone) for fire in fires]
    assert [at.strftime("%H:%M") for at in local] == ["02:30", "02:30", "02:30"]
    gap_day = transition.astimezone(zone).date()
    assert [at.date() for at in local] == [gap_day - DAY, gap_day + DAY, gap_day + 2 * DAY]


def test_the_gap_day_fires_exactly_at_the_transition_in_berlin():
    """Berlin's 02:30 on 2026-03-29 shifts to 01:00 UTC; the next day's 02:30 CEST is 00:30 UTC."""
    fires = fires_after(Schedule("30 2 * * *", BERLIN), utc(3, 27, 12), 4)
    assert fires == [utc(3, 28, 1, 30), utc(3, 29, 1), utc(3, 30, 0, 30), utc(3, 31, 0, 30)]


@pytest.mark.parametrize(("zone", "transition"), SPRINGS)
def test_two_times_in_the_same_gap_fire_once(zone, transition):
    """02:00 and 02:30 both fall in the gap and shift to the same instant, which fires once."""
    schedule = Schedule("0,30 2 * * *", zone, on_gap="shift")
    day = fires_between(schedule, transition - 12 * HOUR, transition + 12 * HOUR)
    assert day == [transition]
    around = fires_between(schedule, transition - 36 * HOUR, transition + 36 * HOUR)
    assert [wall[11:16] for wall in walls(around, zone)] == [
        "02:00",
        "02:30",
        "03:00",
        "02:00",
        "02:30",
    ]


def test_shifted_gap_times_merge_with_a_real_fire_at_the_end_of_the_gap():
    """Every quarter hour in Berlin: 02:00-02:45 shift onto 03:00, which fires once, then 03:15."""
    schedule = Schedule("*/15 * * * *", BERLIN, on_gap="shift")
    fires = fires_between(schedule, BERLIN_SPRING - 20 * MINUTE, BERLIN_SPRING + 15 * MINUTE)
    assert walls(fires, BERLIN) == [
        "2026-03-29T01:45:00+01:00",
        "2026-03-29T03:00:00+02:00",
        "2026-03-29T03:15:00+02:00",
    ]


# A wall-clock time that happens twice (fall back).

OVERLAPS = [
    pytest.param(BERLIN, "30 2 * * *", utc(10, 25, 0, 30), id="berlin"),
    pytest.param(NEW_YORK, "30 1 * * *", utc(11, 1, 5, 30), id="new_york"),
]


@pytest.mark.parametrize(("zone", "expression", "earlier"), OVERLAPS)
@pytest.mark.parametrize(
    ("policy", "hours_later"), [("first", [0]), ("last", [1]), ("both", [0, 1])]
)
def test_a_time_in_the_overlap_fires_by_policy(zone, expression, earlier, policy, hours_later):
    """'first' fires the earlier instant, 'last' the later, 'both' each, an hour apart in order."""
    schedule = Schedule(expression, zone, on_overlap=policy)
    fires = fires_between(schedule, earlier - 12 * HOUR, earlier + 12 * HOUR)
    assert fires == [earlier + hours * HOUR for hours in hours_later]
    assert len({wall[11:16] for wall in walls(fires, zone)}) == 1


@pytest.mark.parametrize(("zone", "expression", "earlier"), OVERLAPS)
@pytest.mark.parametrize("policy", ["first", "last", "both"])
def test_the_days_around_an_overlap_fire_once_at_the_wall_time(zone, expression, earlier, policy):
    """The days before and after the fall-back day fire once each, at the same wall-clock time."""
    schedule = Schedule(expression, zone, on_overlap=policy)
    before = fires_between(schedule, earlier - 36 * HOUR, earlier - 12 * HOUR)
    after = fires_between(schedule, earlier + 12 * HOUR, earlier + 36 * HOUR)
    assert before == [earlier - DAY]
    assert after == [earlier + DAY + HOUR]
    assert walls(before, zone)[0][11:16] == walls(after, zone)[0][11:16]


def test_both_in_new_york_lists_the_overlap_with_its_two_offsets():
    """New York's 01:30 on 2026-11-01 fires at 01:30 EDT and again at 01:30 EST with 'both'."""
    schedule = Schedule("30 1 * * *", NEW_YORK, on_overlap="both")
    fires = fires_after(schedule, utc(10, 31), 4)
    assert walls(fires, NEW_YORK) == [
        "2026-10-31T01:30:00-04:00",
        "2026-11-01T01:30:00-04:00",
        "2026-11-01T01:30:00-05:00",
        "2026-11-02T01:30:00-05:00",
    ]


def test_fires_after_inside_the_overlap_yields_only_the_later_instant():
    """Starting between the two 02:30s in Berlin, 'both' still owes the later one and fires it."""
    schedule = Schedule("30 2 * * *", BERLIN, on_overlap="both")
    assert fires_after(schedule, utc(10, 25, 0, 45), 2) == [utc(10, 25, 1, 30), utc(10, 26, 1, 30)]


# Ordinary schedules across both changes.


def test_weekday_mornings_keep_their_wall_time_across_both_changes():
    """'42 7 * * MON-FRI' fires at 07:42 Berlin time on each weekday; the UTC hour follows DST."""
    schedule = Schedule("42 7 * * MON-FRI", BERLIN)
    for start, end in [(utc(3, 20), utc(4, 6)), (utc(10, 16), utc(11, 2))]:
        fires = fires_between(schedule, start, end)
        local = [fire.astimezone(BERLIN) for fire in fires]
        assert all((at.hour, at.minute) == (7, 42) for at in local)
        days = [start.date() + k * DAY for k in range((end - start).days)]
        assert [at.date() for at in local] == [day for day in days if day.weekday() < 5]
    spring = fires_between(schedule, utc(3, 26), utc(3, 31))
    assert spring == [utc(3, 26, 6, 42), utc(3, 27, 6, 42), utc(3, 30, 5, 42)]
    fall = fires_between(schedule, utc(10, 22), utc(10, 27))
    assert fall == [utc(10, 22, 5, 42), utc(10, 23, 5, 42), utc(10, 26, 6, 42)]


def test_daily_macro_fires_at_local_midnight_across_the_changes():
    """@daily fires at 00:00 Berlin time every day, 23:00 UTC in winter and 22:00 UTC in summer."""
    fires = fires_between(Schedule("@daily", BERLIN), utc(3, 27), utc(3, 31))
    assert fires == [utc(3, 27, 23), utc(3, 28, 23), utc(3, 29, 22), utc(3, 30, 22)]
    assert {fire.astimezone(BERLIN).time().isoformat() for fire in fires} == {"00:00:00"}


@pytest.mark.parametrize("zone", ZONES_UNDER_TEST)
def test_hourly_macro_fires_every_utc_hour_through_both_changes(zone):
    """@hourly with shift and both fires once at every whole UTC hour: no hole, no double fire."""
    schedule = Schedule("@hourly", zone, on_gap="shift", on_overlap="both")
    for month in (3, 10):
        start = utc(month, 1)
        fires = fires_between(schedule, start, start + 40 * DAY)
        assert fires == [start + k * HOUR for k in range(1, 40 * 24 + 1)]


@pytest.mark.parametrize(("zone", "midnight"), [(BERLIN, utc(3, 28, 23)), (NEW_YORK, utc(3, 8, 5))])
@pytest.mark.parametrize("on_gap", ["shift", "skip"])
def test_hourly_macro_fires_23_times_on_the_short_day(zone, midnight, on_gap):
    """On the 23-hour spring day, @hourly fires once per real hour, with shift or skip."""
    schedule = Schedule("@hourly", zone, on_gap=on_gap)
    fires = fires_between(schedule, midnight - MINUTE, midnight + 23 * HOUR - MINUTE)
    assert fires == [midnight + k * HOUR for k in range(23)]


@pytest.mark.parametrize(
    ("zone", "midnight"), [(BERLIN, utc(10, 24, 22)), (NEW_YORK, utc(11, 1, 4))]
)
@pytest.mark.parametrize(("policy", "count"), [("first", 24), ("last", 24), ("both", 25)])
def test_hourly_macro_on_the_long_day(zone, midnight, policy, count):
    """On the 25-hour fall-back day, @hourly fires 24 times with first or last, 25 with both."""
    schedule = Schedule("@hourly", zone, on_overlap=policy)
    fires = fires_between(schedule, midnight - MINUTE, midnight + 25 * HOUR - MINUTE)
    assert len(fires) == count
    repeated = 2 if zone is BERLIN else 1
    assert [at.astimezone(zone).hour for at in fires].count(repeated) == (
        2 if policy == "both" else 1
    )


# The contracts of fires_after and fires_between.


def test_fires_after_is_strictly_after():
    """A fire exactly at `after` is not returned; one a microsecond later than `after` is."""
    schedule = Schedule("*/10 * * * *", BERLIN)
    at = utc(5, 1, 12)
    assert fires_after(schedule, at, 1) == [at + 10 * MINUTE]
    assert fires_after(schedule, at - timedelta(microseconds=1), 1) == [at]


def test_fires_after_returns_limit_instants_in_utc_whatever_zone_after_is_in():
    """`after` may be aware in any zone; the answer is `limit` increasing instants, UTC-aware."""
    schedule = Schedule("*/15 * * * *", NEW_YORK)
    in_utc = fires_after(schedule, utc(7, 4, 12, 5), 5)
    in_berlin = fires_after(schedule, utc(7, 4, 12, 5).astimezone(BERLIN), 5)
    assert in_utc == in_berlin == [utc(7, 4, 12, 15) + k * 15 * MINUTE for k in range(5)]
    assert all(fire.utcoffset() == timedelta(0) for fire in in_berlin)


def test_fires_between_is_open_at_after_and_closed_at_until():
    """fires_between(after, until) holds fires in (after, until]: `until` in, `after` out."""
    schedule = Schedule("0 * * * *", BERLIN)
    assert fires_between(schedule, utc(5, 1, 10), utc(5, 1, 12)) == [utc(5, 1, 11), utc(5, 1, 12)]
    assert fires_between(schedule, utc(5, 1, 10), utc(5, 1, 10)) == []
    assert fires_between(schedule, utc(5, 1, 10), utc(5, 1, 10, 59)) == []


def test_fires_between_agrees_with_fires_after():
    """The fires in a window are the first fires after its start, as many as fit in it."""
    schedule = Schedule("30 2 * * *", BERLIN, on_overlap="both")
    window = fires_between(schedule, utc(10, 20), utc(10, 30))
    assert window == fires_after(schedule, utc(10, 20), len(window))
    assert len(window) == 11


# Misfires after downtime.

EVERY_TEN = Schedule("*/10 * * * *", BERLIN)
NOW = utc(6, 1, 12, 5)


@pytest.mark.parametrize("policy", ["skip", "latest", "all"])
def test_no_misfires_for_a_trigger_that_never_fired(policy):
    """A trigger with no last fire (a new one) has nothing to catch up on, whatever the policy."""
    assert misfires(EVERY_TEN, None, NOW, policy, timedelta(hours=1)) == []


def test_skip_fires_none_of_the_missed_times():
    """misfire='skip' catches up on nothing, however many fires were missed within grace."""
    assert misfires(EVERY_TEN, NOW - 2 * HOUR, NOW, "skip", timedelta(days=1)) == []


def test_latest_fires_only_the_last_missed_time():
    """misfire='latest' fires only the most recent missed fire."""
    missed = misfires(EVERY_TEN, NOW - HOUR, NOW, "latest", timedelta(hours=1))
    assert missed == [utc(6, 1, 12)]


def test_all_fires_every_missed_time_within_grace_oldest_first():
    """misfire='all' fires each missed fire inside the grace window, oldest first."""
    missed = misfires(EVERY_TEN, utc(6, 1, 11, 20), NOW, "all", timedelta(hours=1))
    assert missed == [utc(6, 1, 11, 30), utc(6, 1, 11, 40), utc(6, 1, 11, 50), utc(6, 1, 12)]


@pytest.mark.parametrize("policy", ["latest", "all"])
def test_fires_older_than_the_grace_window_are_never_returned(policy):
    """After a long outage only fires newer than now - grace count; older ones are dropped."""
    grace = timedelta(minutes=25)
    missed = misfires(EVERY_TEN, NOW - DAY, NOW, policy, grace)
    assert all(fire > NOW - grace for fire in missed)
    expected = [utc(6, 1, 11, 50), utc(6, 1, 12)]
    assert missed == (expected if policy == "all" else expected[-1:])


@pytest.mark.parametrize("policy", ["latest", "all"])
def test_nothing_missed_when_every_fire_is_older_than_grace(policy):
    """When the grace window holds no fire time, there is nothing to catch up on."""
    assert misfires(EVERY_TEN, NOW - DAY, NOW, policy, timedelta(minutes=4)) == []


@pytest.mark.parametrize("policy", ["latest", "all"])
def test_nothing_at_or_before_the_last_fire_is_fired_again(policy):
    """The last fire itself and anything before it are never misfires, even inside grace."""
    last = utc(6, 1, 11, 50)
    missed = misfires(EVERY_TEN, last, NOW, policy, timedelta(hours=3))
    assert missed == [utc(6, 1, 12)]
    assert misfires(EVERY_TEN, utc(6, 1, 12), NOW, policy, timedelta(hours=3)) == []


def test_misfires_follow_the_dst_policies():
    """A missed night across the Berlin gap counts the shifted 03:00 fire once, at 01:00 UTC."""
    schedule = Schedule("0,30 2 * * *", BERLIN, on_gap="shift")
    missed = misfires(schedule, utc(3, 28, 1, 30), utc(3, 29, 6), "all", timedelta(hours=12))
    assert missed == [BERLIN_SPRING]


# Which expressions are valid.


@pytest.mark.parametrize(
    "expression",
    [
        "* * * * *",
        "42 7 * * MON-FRI",
        "*/15 * * * *",
        "0,30 2 * * *",
        "0 9 1 JAN,JUL *",
        "@daily",
        "@hourly",
        "@weekly",
        "@monthly",
        "@yearly",
    ],
)
def test_five_fields_and_macros_are_valid(expression):
    """Five-field expressions (with ranges, steps, lists and names) and the macros are valid."""
    assert valid_expression(expression)


@pytest.mark.parametrize(
    "expression",
    [
        "* * * * * *",
        "0 0 * * * 2026",
        "0 0 * *",
        "garbage",
        "a b c d e",
        "61 * * * *",
        "0 25 * * *",
        "*/0 * * * *",
        "@fortnightly",
        "@reboot",
        "",
        "   ",
    ],
)
def test_other_expressions_are_invalid(expression):
    """Six fields (seconds or years), four, garbage, out-of-range values and empty are invalid."""
    assert not valid_expression(expression)


# The cron fields of a trigger spec.


def test_a_cron_trigger_reads_its_timezone_and_policies():
    """A cron trigger parses its zone, DST policies, misfire policy and grace from config."""
    trigger = TriggerSpec.model_validate(
        {
            "workflow": "w",
            "cron": "42 7 * * MON-FRI",
            "timezone": "Europe/Berlin",
            "on_gap": "skip",
            "on_overlap": "both",
            "misfire": "all",
            "misfire_grace": "30m",
        }
    )
    assert trigger.timezone == BERLIN
    assert (trigger.on_gap, trigger.on_overlap, trigger.misfire) == ("skip", "both", "all")
    assert trigger.misfire_grace == 1800.0


def test_a_cron_trigger_defaults_to_utc_latest_and_an_hour_of_grace():
    """Unset, a cron trigger runs in UTC, fires the latest misfire within an hour, and leaves
    its DST policies to the expression."""
    trigger = TriggerSpec(workflow="w", cron="@daily")
    assert trigger.timezone == ZoneInfo("UTC")
    assert (trigger.on_gap, trigger.on_overlap, trigger.misfire) == (None, None, "latest")
    assert trigger.misfire_grace == 3600.0
    assert schedule_of(trigger) == Schedule("@daily", ZoneInfo("UTC"), "shift", "first")


@pytest.mark.parametrize(
    ("expression", "defaults"),
    [
        ("42 7 * * MON-FRI", ("shift", "first")),
        ("30 2 * * *", ("shift", "first")),
        ("0 9,17 * * *", ("shift", "first")),
        ("0 8-18 * * *", ("shift", "first")),
        ("@daily", ("shift", "first")),
        ("@weekly", ("shift", "first")),
        ("30 * * * *", ("skip", "both")),
        ("*/15 * * * *", ("skip", "both")),
        ("*/30 2 * * *", ("skip", "both")),
        ("@hourly", ("skip", "both")),
    ],
)
def test_dst_defaults_follow_vixie_cron(expression, defaults):
    """A fixed time of day shifts out of a gap and fires once in an overlap; a `*` leading
    the minute or hour follows the clock as it is."""
    assert dst_defaults(expression) == defaults


def test_a_wildcard_job_keeps_its_real_interval_across_both_changes():
    """'*/30 * * * *' by default fires every 30 real minutes through a gap and an overlap:
    the gap's wall times do not happen, the overlap's happen twice."""
    schedule = Schedule.of("*/30 * * * *", BERLIN)
    for change in (BERLIN_SPRING, BERLIN_FALL):
        fires = fires_between(schedule, change - 3 * HOUR, change + 3 * HOUR)
        assert fires == [change - 3 * HOUR + k * 30 * MINUTE for k in range(1, 13)]
    spring = fires_between(schedule, BERLIN_SPRING - HOUR, BERLIN_SPRING + 30 * MINUTE)
    assert [wall[11:16] for wall in walls(spring, BERLIN)] == ["01:30", "03:00", "03:30"]


def test_a_fixed_time_job_fires_once_on_each_change_by_default():
    """'30 2 * * *' by default fires at 03:00 on the spring day (shifted) and once, at the
    first 02:30, on the fall day."""
    schedule = Schedule.of("30 2 * * *", BERLIN)
    assert fires_between(schedule, BERLIN_SPRING - 12 * HOUR, BERLIN_SPRING + 12 * HOUR) == [
        BERLIN_SPRING
    ]
    assert fires_between(schedule, BERLIN_FALL - 12 * HOUR, BERLIN_FALL + 12 * HOUR) == [
        utc(10, 25, 0, 30)
    ]


def test_a_policy_the_trigger_sets_wins_over_the_default():
    """on_gap and on_overlap written in the config are used as written, for any expression."""
    trigger = TriggerSpec.model_validate(
        {"workflow": "w", "cron": "*/15 * * * *", "on_gap": "shift", "on_overlap": "first"}
    )
    assert (schedule_of(trigger).on_gap, schedule_of(trigger).on_overlap) == ("shift", "first")


@pytest.mark.parametrize(
    ("expression", "dates"),
    [
        ("0 0 13 * 5", ["2026-01-02", "2026-01-09", "2026-01-13", "2026-01-16"]),
        ("0 0 1-31/2 * MON", ["2026-01-03", "2026-01-05", "2026-01-07", "2026-01-09"]),
        ("0 0 */2 * 1", ["2026-01-05", "2026-01-19", "2026-02-09", "2026-02-23"]),
        ("0 0 * * 0,7", ["2026-01-04", "2026-01-11", "2026-01-18", "2026-01-25"]),
    ],
)
def test_day_of_month_and_day_of_week_combine_as_in_vixie_cron(expression, dates):
    """Both restricted: either matches; one of them led by `*` (`*/2`): both must match."""
    fires = fires_after(Schedule.of(expression, ZoneInfo("UTC")), utc(1, 1), len(dates))
    assert [fire.date().isoformat() for fire in fires] == dates


@pytest.mark.parametrize("zone", ["Europe/Bonn", "Mars/Olympus_Mons", "", "../etc/passwd"])
def test_an_unknown_timezone_is_refused_by_name(zone):
    """A timezone that is not in the IANA database is an error that names it."""
    with pytest.raises(ValidationError, match="unknown IANA timezone") as error:
        TriggerSpec.model_validate({"workflow": "w", "cron": "@daily", "timezone": zone})
    assert repr(zone) in str(error.value)


@pytest.mark.parametrize("expression", ["0 0 * * * *", "every day", "60 * * * *", ""])
def test_a_bad_cron_expression_is_refused(expression):
    """A cron field that is not a valid expression is an error that quotes it."""
    with pytest.raises(ValidationError, match="is not a cron expression") as error:
        TriggerSpec.model_validate({"workflow": "w", "cron": expression})
    assert f"cron = {expression!r}" in str(error.value)


@pytest.mark.parametrize(
    ("field", "value"),
    [("on_gap", "later"), ("on_overlap", "never"), ("misfire", "some"), ("misfire_grace", "soon")],
)
def test_an_unknown_policy_is_refused(field, value):
    """on_gap, on_overlap and misfire take only their listed words; misfire_grace a duration."""
    with pytest.raises(ValidationError, match=field):
        TriggerSpec.model_validate({"workflow": "w", "cron": "@daily", field: value})


def test_cron_and_webhook_together_are_refused():
    """A trigger is a cron schedule or a webhook, never both."""
    with pytest.raises(ValidationError, match="not both"):
        TriggerSpec.model_validate(
            {"workflow": "w", "cron": "@daily", "webhook": {"scheme": "none"}}
        )


@pytest.mark.parametrize("scheme", ["github", "stripe", "standard"])
def test_a_signed_webhook_scheme_without_a_secret_is_refused(scheme):
    """Every scheme but 'none' needs a secret, and the error says how to give one."""
    with pytest.raises(ValidationError, match=f"scheme '{scheme}' needs a secret"):
        TriggerSpec.model_validate({"workflow": "w", "webhook": {"scheme": scheme}})


def test_scheme_none_needs_no_secret():
    """scheme='none' is accepted without a secret (it is chosen explicitly)."""
    trigger = TriggerSpec.model_validate({"workflow": "w", "webhook": {"scheme": "none"}})
    assert trigger.webhook is not None
    assert trigger.webhook.secret_values() == []


def test_an_env_secret_is_read_from_the_environment(monkeypatch):
    """secret = 'env:NAME' takes the value of NAME, any text for github, and hides it in repr."""
    monkeypatch.setenv("ORCH_TEST_GITHUB_SECRET", "It's a Secret to Everybody")
    trigger = TriggerSpec.model_validate(
        {"workflow": "w", "webhook": {"scheme": "github", "secret": "env:ORCH_TEST_GITHUB_SECRET"}}
    )
    assert trigger.webhook is not None
    assert trigger.webhook.secret_values() == ["It's a Secret to Everybody"]
    assert "Everybody" not in repr(trigger)


def test_an_unset_env_secret_is_refused_by_name(monkeypatch):
    """secret = 'env:NAME' with NAME unset is an error that names the variable."""
    monkeypatch.delenv("ORCH_TEST_UNSET_SECRET", raising=False)
    with pytest.raises(ValidationError, match="environment variable ORCH_TEST_UNSET_SECRET"):
        TriggerSpec.model_validate(
            {
                "workflow": "w",
                "webhook": {"scheme": "stripe", "secret": "env:ORCH_TEST_UNSET_SECRET"},
            }
        )


def test_a_standard_webhook_secret_must_be_base64(monkeypatch):
    """The standard scheme refuses a secret that is not base64, given inline or through env:."""
    monkeypatch.setenv("ORCH_TEST_STANDARD_SECRET", "not base64 at all, sorry!")
    for secret in ["not base64 at all, sorry!", "env:ORCH_TEST_STANDARD_SECRET"]:
        with pytest.raises(ValidationError, match="must be base64"):
            TriggerSpec.model_validate(
                {"workflow": "w", "webhook": {"scheme": "standard", "secret": secret}}
            )
    accepted = TriggerSpec.model_validate(
        {
            "workflow": "w",
            "webhook": {"scheme": "standard", "secret": "whsec_AAECAwQFBgcICQoLDA0ODw=="},
        }
    )
    assert accepted.webhook is not None
    assert accepted.webhook.secret_values() == ["whsec_AAECAwQFBgcICQoLDA0ODw=="]


def test_secret_and_secrets_together_are_refused():
    """A webhook takes `secret` or `secrets` (for rotation), not both."""
    with pytest.raises(ValidationError, match="either secret or secrets"):
        TriggerSpec.model_validate(
            {"workflow": "w", "webhook": {"scheme": "github", "secret": "a", "secrets": ["b"]}}
        )


@pytest.mark.parametrize(
    ("config", "kind"),
    [
        ({"cron": "@hourly"}, "cron"),
        ({"webhook": {"scheme": "github", "secret": "a-long-enough-secret"}}, "webhook"),
        ({}, "manual"),
    ],
)
def test_kind_names_what_starts_the_trigger(config, kind):
    """kind is 'cron' with a schedule, 'webhook' with a webhook, and 'manual' with neither."""
    assert TriggerSpec.model_validate({"workflow": "w", **config}).kind == kind


# Properties.


@dataclass(frozen=True)
class Case:
    """A cron expression with the wall-clock minutes (and hours, if limited) it matches."""

    expression: str
    minutes: frozenset[int]
    hours: frozenset[int] | None = None

    def matches(self, wall: datetime) -> bool:
        return wall.minute in self.minutes and (self.hours is None or wall.hour in self.hours)


CASES = [
    Case("@hourly", frozenset({0})),
    Case("*/15 * * * *", frozenset(range(0, 60, 15))),
    Case("*/5 * * * *", frozenset(range(0, 60, 5))),
    Case("7,37 * * * *", frozenset({7, 37})),
    Case("45 * * * *", frozenset({45})),
    Case("0,30 1-3 * * *", frozenset({0, 30}), frozenset({1, 2, 3})),
]
TRANSITIONS = [BERLIN_SPRING, BERLIN_FALL, NEW_YORK_SPRING, NEW_YORK_FALL]
YEAR = datetime(2026, 1, 1, tzinfo=UTC)
MICROSECONDS_IN_2026 = 365 * 86_400 * 1_000_000

starts = st.one_of(
    st.integers(0, MICROSECONDS_IN_2026 - 1).map(lambda us: YEAR + timedelta(microseconds=us)),
    st.builds(
        lambda at, minutes: at + minutes * MINUTE,
        st.sampled_from(TRANSITIONS),
        st.integers(-6 * 60, 3 * 60),
    ),
    st.builds(
        lambda at, us: at + timedelta(microseconds=us),
        st.sampled_from(TRANSITIONS),
        st.integers(-6 * 3_600_000_000, 3 * 3_600_000_000),
    ),
)
gaps: st.SearchStrategy[OnGap] = st.sampled_from(["shift", "skip"])
overlaps: st.SearchStrategy[OnOverlap] = st.sampled_from(["first", "last", "both"])


def offset(instant: datetime, zone: ZoneInfo) -> timedelta:
    """The zone's UTC offset at `instant`."""
    return instant.astimezone(zone).utcoffset() or timedelta(0)


def is_spring_forward(instant: datetime, zone: ZoneInfo) -> bool:
    """Whether the clock jumps forward at `instant` (the end of a gap)."""
    return offset(instant, zone) > offset(instant - timedelta(seconds=1), zone)


@settings(max_examples=100, deadline=None)
@given(
    case=st.sampled_from(CASES),
    zone=st.sampled_from(ZONES_UNDER_TEST),
    start=starts,
    on_gap=gaps,
    on_overlap=overlaps,
)
def test_fires_after_is_increasing_after_start_utc_and_on_the_expression(
    case, zone, start, on_gap, on_overlap
):
    """Fifty fires are strictly increasing, after start, UTC-aware, at whole minutes the
    expression names (or, with shift, exactly at the end of a gap)."""
    fires = fires_after(Schedule(case.expression, zone, on_gap, on_overlap), start, 50)
    assert len(fires) == 50
    assert fires[0] > start
    assert all(earlier < later for earlier, later in pairwise(fires))
    for fire in fires:
        assert fire.utcoffset() == timedelta(0)
        wall = fire.astimezone(zone)
        assert (wall.second, wall.microsecond) == (0, 0)
        assert case.matches(wall) or (on_gap == "shift" and is_spring_forward(fire, zone))


def brute_force(
    case: Case,
    zone: ZoneInfo,
    on_gap: OnGap,
    on_overlap: OnOverlap,
    after: datetime,
    until: datetime,
) -> list[datetime]:
    """The module's DST rules restated: walk every UTC minute in (after, until] and decide."""
    fires = []
    instant = after.astimezone(UTC).replace(second=0, microsecond=0) + MINUTE
    while instant <= until:
        here = instant.astimezone(zone)
        wall = here.replace(tzinfo=None)
        twin = wall.replace(tzinfo=zone, fold=1 - here.fold).astimezone(UTC)
        overlap_ok = twin == instant or on_overlap in ("both", ("first", "last")[here.fold])
        jump = offset(instant, zone) - offset(instant - MINUTE, zone)
        skipped = [wall - jump + k * MINUTE for k in range(jump // MINUTE)]
        shifted_here = on_gap == "shift" and any(case.matches(gone) for gone in skipped)
        if (case.matches(wall) and overlap_ok) or shifted_here:
            fires.append(instant)
        instant += MINUTE
    return fires


@settings(max_examples=100, deadline=None)
@given(
    case=st.sampled_from(CASES),
    zone=st.sampled_from(ZONES_UNDER_TEST),
    start=starts,
    on_gap=gaps,
    on_overlap=overlaps,
)
def test_fires_between_matches_a_minute_by_minute_walk(case, zone, start, on_gap, on_overlap):
    """Over six hours from any start, fires_between equals a minute-by-minute walk of UTC."""
    schedule = Schedule(case.expression, zone, on_gap, on_overlap)
    until = start + 6 * HOUR
    assert fires_between(schedule, start, until) == brute_force(
        case, zone, on_gap, on_overlap, start, until
    )


@pytest.mark.parametrize("expression", ["0 0 30 2 *", "0 0 31 4 *"])
def test_expression_that_never_matches_a_date_is_invalid(expression: str) -> None:
    """A well-formed expression for a date that never comes (30 February) is refused up front."""
    assert not valid_expression(expression)


def test_zero_or_negative_limit_returns_nothing() -> None:
    """Asking for no fires returns at once with an empty list."""
    schedule = Schedule("@hourly", ZoneInfo("UTC"))
    assert fires_after(schedule, datetime(2026, 1, 1, tzinfo=UTC), 0) == []
    assert fires_after(schedule, datetime(2026, 1, 1, tzinfo=UTC), -1) == []


@pytest.mark.parametrize(
    ("scheme", "secret"),
    [
        ("github", ""),
        ("github", "short"),
        ("stripe", "whsec_x"),
        ("standard", "whsec_"),
        ("standard", "whsec_AAECAwQ="),
    ],
)
def test_empty_or_short_webhook_secrets_are_refused(scheme: str, secret: str) -> None:
    """An empty key would let anyone sign, and a short one can be guessed: both are refused."""
    with pytest.raises(ValidationError, match="at least 16"):
        TriggerSpec.model_validate(
            {"workflow": "w", "webhook": {"scheme": scheme, "secret": secret}}
        )
