"""Cron expressions from anyone: a validation error or a schedule that fires, never a crash."""

from __future__ import annotations

from datetime import UTC, datetime
from zoneinfo import ZoneInfo

import pydantic
from hypothesis import example, given
from hypothesis import strategies as st

from orchestrator.cron import Schedule, fires_after, valid_expression
from orchestrator.model import TriggerSpec
from tests.fuzz.budget import budget

NOW = datetime(2026, 3, 29, 0, 30, tzinfo=UTC)  # the night Europe springs forward
field_parts = st.sampled_from(
    ["*", "0", "1", "7", "23", "31", "59", "60", "99", "-1", "*/0", "*/15", "1-5", "5-1", "1,2",
     "MON-FRI", "SUN", "JAN", "L", "5L", "1#2", "9#9", "?", "W", "15W", "H", "", ",", "/", "-"]
)  # fmt: skip
cron_like = st.lists(field_parts, min_size=1, max_size=7).map(" ".join)
macros = st.sampled_from(["@daily", "@hourly", "@weekly", "@monthly", "@yearly", "@reboot", "@"])
expressions = st.text(max_size=40) | cron_like | macros


@given(expressions)
@example("0 0 30 2 *")
@example("*/0 * * * *")
@example("0 0 31 4 *")
@example("\x00")
@budget(quick=300, long=20_000)
def test_any_string_is_valid_or_not_and_a_valid_one_fires(expression: str) -> None:
    """valid_expression answers for any string; an expression it accepts has a next fire."""
    if valid_expression(expression):
        schedule = Schedule(expression.strip(), ZoneInfo("Europe/Berlin"))
        (fire,) = fires_after(schedule, NOW, 1)
        assert fire > NOW


@given(expressions, st.sampled_from(["UTC", "Europe/Berlin", "Not/AZone", ""]))
@example("0 0 30 2 *", "UTC")
@budget(quick=200, long=10_000)
def test_a_trigger_with_any_cron_string_validates_or_names_the_problem(
    expression: str, timezone: str
) -> None:
    """TriggerSpec with an arbitrary cron and timezone is valid or a pydantic ValidationError."""
    data = {"workflow": "w", "cron": expression, "timezone": timezone}
    try:
        trigger: TriggerSpec | None = TriggerSpec.model_validate(data)
    except pydantic.ValidationError as error:
        trigger, problems = None, error.errors()
    if trigger is None:
        assert problems
    else:
        assert trigger.cron is not None
        assert valid_expression(trigger.cron)
