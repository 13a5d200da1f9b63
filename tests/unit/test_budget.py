"""Budget periods and limits, pure: calendar days and months in a time zone."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from claude_hooks.core.budget import TEAM, Limit, Period, first_reached, limits_for, period_bounds
from tests.support import make_config


def ts(text: str, zone: str = "UTC") -> float:
    return datetime.fromisoformat(text).replace(tzinfo=ZoneInfo(zone)).timestamp()


@pytest.mark.parametrize(
    ("period", "now", "zone", "start", "end"),
    [
        (Period.DAY, "2026-04-10 23:59:59", "UTC", "2026-04-10 00:00", "2026-04-11 00:00"),
        (Period.DAY, "2026-04-11 00:00:00", "UTC", "2026-04-11 00:00", "2026-04-12 00:00"),
        (Period.MONTH, "2026-12-31 23:00", "UTC", "2026-12-01 00:00", "2027-01-01 00:00"),
        (Period.MONTH, "2027-01-01 00:00", "UTC", "2027-01-01 00:00", "2027-02-01 00:00"),
        (Period.MONTH, "2028-02-29 12:00", "UTC", "2028-02-01 00:00", "2028-03-01 00:00"),
        # A day in Berlin when the clocks go forward is 23 hours long.
        (
            Period.DAY,
            "2026-03-29 12:00",
            "Europe/Berlin",
            "2026-03-29 00:00",
            "2026-03-30 00:00",
        ),
    ],
)
def test_period_bounds_follow_the_calendar_of_the_zone(
    period: Period, now: str, zone: str, start: str, end: str
) -> None:
    got = period_bounds(period, ts(now, zone), ZoneInfo(zone))
    assert got == (ts(start, zone), ts(end, zone))


def test_a_day_in_another_zone_starts_at_its_own_midnight() -> None:
    # 23:30 UTC on the 10th is already the 11th in Tokyo.
    start, _ = period_bounds(Period.DAY, ts("2026-04-10 23:30"), ZoneInfo("Asia/Tokyo"))
    assert datetime.fromtimestamp(start, UTC) == datetime(2026, 4, 10, 15, 0, tzinfo=UTC)


def test_limits_come_from_the_type_and_the_team_and_the_cli_wins(tmp_path: Path) -> None:
    config = make_config(
        tmp_path,
        types={"dev": {"runner": "claude", "daily_budget_usd": 20.0, "monthly_budget_usd": 300}},
        budget={"daily_usd": 50.0},
    )
    limits = limits_for("dev", config, {("dev", Period.DAY): 25.0})
    assert limits == [
        Limit("dev", Period.DAY, 25.0),
        Limit("dev", Period.MONTH, 300.0),
        Limit(TEAM, Period.DAY, 50.0),
    ]
    now = ts("2026-04-10 12:00")
    zone = ZoneInfo("UTC")
    assert first_reached(limits, {limits[0]: 24.99, limits[2]: 49.0}, now, zone) is None
    reached = first_reached(limits, {limits[0]: 10.0, limits[2]: 50.0}, now, zone)
    assert reached is not None
    assert reached.limit.scope == TEAM
    assert reached.resets_at == ts("2026-04-11 00:00")
    assert "daily budget of team ($50.00) is reached" in reached.describe(zone)


def test_an_unknown_time_zone_is_a_clear_configuration_error(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown time zone 'Mars/Olympus'"):
        make_config(tmp_path, server={"timezone": "Mars/Olympus"})
