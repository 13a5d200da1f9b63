"""Spending budgets: calendar days and months in the service's time zone, and spend against them.

Pure: the caller supplies the time, the zone and the spend; `Limits` does the I/O.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import date, datetime, time, tzinfo
from enum import StrEnum

from claude_hooks.config import Config

TEAM = "*"  # the scope of a team-wide budget; a type's budget has the type's name as scope


class Period(StrEnum):
    DAY = "day"
    MONTH = "month"


def _midnight(day: date, zone: tzinfo) -> float:
    return datetime.combine(day, time(), tzinfo=zone).timestamp()


def period_bounds(period: Period, now: float, zone: tzinfo) -> tuple[float, float]:
    """The start and end (exclusive) of the calendar day or month holding `now`."""
    today = datetime.fromtimestamp(now, zone).date()
    if period is Period.DAY:
        start = today
        end = date.fromordinal(today.toordinal() + 1)
    else:
        start = today.replace(day=1)
        end = date(today.year + today.month // 12, today.month % 12 + 1, 1)
    return _midnight(start, zone), _midnight(end, zone)


@dataclass(frozen=True, slots=True)
class Limit:
    scope: str  # TEAM or a type name
    period: Period
    usd: float

    @property
    def label(self) -> str:
        who = "team" if self.scope == TEAM else f"type {self.scope!r}"
        return f"{'daily' if self.period is Period.DAY else 'monthly'} budget of {who}"


@dataclass(frozen=True, slots=True)
class Reached:
    """A budget that is spent: no new task of its scope starts before `resets_at`."""

    limit: Limit
    spent: float
    resets_at: float

    def describe(self, zone: tzinfo) -> str:
        when = datetime.fromtimestamp(self.resets_at, zone).strftime("%Y-%m-%d %H:%M %Z")
        return (
            f"the {self.limit.label} (${self.limit.usd:.2f}) is reached: ${self.spent:.2f} "
            f"spent; work resumes at {when} or when the budget is raised "
            "('claude-hooks budget set')"
        )


Overrides = Mapping[tuple[str, Period], float]


def configured_limits(config: Config, scope: str) -> dict[Period, float]:
    if scope == TEAM:
        found = {Period.DAY: config.budget.daily_usd, Period.MONTH: config.budget.monthly_usd}
    else:
        type_config = config.types[scope]
        found = {
            Period.DAY: type_config.daily_budget_usd,
            Period.MONTH: type_config.monthly_budget_usd,
        }
    return {period: usd for period, usd in found.items() if usd is not None}


def limits_for(agent_type: str, config: Config, overrides: Overrides) -> list[Limit]:
    """The budgets a task of this type counts against: its type's and the team's.

    A value set with `claude-hooks budget set` (an override) wins over the configuration."""
    limits: list[Limit] = []
    for scope in (agent_type, TEAM):
        values = configured_limits(config, scope)
        for (override_scope, period), usd in overrides.items():
            if override_scope == scope:
                values[period] = usd
        limits.extend(Limit(scope, period, usd) for period, usd in sorted(values.items()))
    return limits


def first_reached(
    limits: list[Limit], spent: Mapping[Limit, float], now: float, zone: tzinfo
) -> Reached | None:
    """The first budget whose spend has reached its limit, or None when all have room."""
    for limit in limits:
        amount = spent.get(limit, 0.0)
        if amount >= limit.usd:
            return Reached(limit, amount, period_bounds(limit.period, now, zone)[1])
    return None


def all_limits(config: Config, overrides: Overrides) -> list[tuple[Limit, str]]:
    """Every budget in force, team first, each with where it comes from (config or CLI)."""
    found: list[tuple[Limit, str]] = []
    for scope in (TEAM, *sorted(config.types)):
        values = {
            period: (usd, "config") for period, usd in configured_limits(config, scope).items()
        }
        for (override_scope, period), usd in overrides.items():
            if override_scope == scope:
                values[period] = (usd, "cli")
        for period, (usd, source) in sorted(values.items()):
            found.append((Limit(scope, period, usd), source))
    return found
