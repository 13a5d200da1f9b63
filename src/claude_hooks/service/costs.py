"""What the agents cost, grouped by type, repository, issue or day (in the service's zone).

Pure: the rows come from `SpendStore.cost_rows`.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import date, datetime, timedelta, tzinfo
from enum import StrEnum
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # `costs --help` lists Grouping without loading the store
    from claude_hooks.store.spend import CostRow


class Grouping(StrEnum):
    TYPE = "type"
    REPO = "repo"
    ISSUE = "issue"
    DAY = "day"


@dataclass(frozen=True, slots=True)
class CostLine:
    key: str
    tasks: int
    cost_usd: float


def day_of(timestamp: float, zone: tzinfo) -> date:
    return datetime.fromtimestamp(timestamp, zone).date()


def _key(row: CostRow, by: Grouping, zone: tzinfo) -> str:
    if by is Grouping.TYPE:
        return row.type
    if by is Grouping.REPO:
        return row.repo
    if by is Grouping.ISSUE:
        return f"{row.repo}#{row.number}"
    return day_of(row.finished_at, zone).isoformat()


def group_costs(rows: Iterable[CostRow], by: Grouping, zone: tzinfo) -> list[CostLine]:
    """Spend per key: days in calendar order, the rest the most expensive first."""
    tasks: dict[str, int] = {}
    costs: dict[str, float] = {}
    for row in rows:
        key = _key(row, by, zone)
        tasks[key] = tasks.get(key, 0) + 1
        costs[key] = costs.get(key, 0.0) + row.cost_usd
    lines = [CostLine(key, tasks[key], round(costs[key], 6)) for key in costs]
    if by is Grouping.DAY:
        return sorted(lines, key=lambda line: line.key)
    return sorted(lines, key=lambda line: (-line.cost_usd, line.key))


def daily_series(
    rows: Iterable[CostRow], now: float, days: int, zone: tzinfo
) -> list[tuple[date, float]]:
    """The spend of each of the last `days` days up to today, days without spend included."""
    today = day_of(now, zone)
    first = today - timedelta(days=days - 1)
    totals = {first + timedelta(days=offset): 0.0 for offset in range(days)}
    for row in rows:
        day = day_of(row.finished_at, zone)
        if day in totals:
            totals[day] += row.cost_usd
    return sorted(totals.items())


def series_start(now: float, days: int, zone: tzinfo) -> float:
    """The first instant of the window `daily_series` covers."""
    first = day_of(now, zone) - timedelta(days=days - 1)
    return datetime.combine(first, datetime.min.time(), tzinfo=zone).timestamp()
