"""The dashboard's *Outcomes* page: what the agents' work came to, as server-rendered SVG.

Merge rate and cost per merged PR week by week, the funnel assignment -> PR -> approved ->
merged, the histogram of review rounds until approval, and the report's table by type: the
same query and arithmetic as `claude-hooks report` (`store/outcomes.py`,
`core/outcome_report.py`), drawn without a script or a CDN.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any

from claude_hooks.core.outcome_report import GroupReport, group_json, summarise
from claude_hooks.service.runtime import Service

WEEK = 7 * 86400.0
WEEKS = 12
WIDTH = 600
HEIGHT = 100


@dataclass(frozen=True, slots=True)
class Bar:
    label: str
    value: float | None
    x: float
    y: float
    width: float
    height: float


def bars(series: list[tuple[str, float | None]], top: float | None = None) -> list[Bar]:
    """Vertical bars of a series scaled to the box (a missing value draws nothing)."""
    highest = top or max((v for _, v in series if v is not None), default=0.0) or 1.0
    slot = WIDTH / max(len(series), 1)
    drawn = []
    for index, (label, value) in enumerate(series):
        height = round((value or 0.0) / highest * HEIGHT, 2)
        drawn.append(
            Bar(label, value, round(index * slot + 1, 2), round(HEIGHT - height, 2),
                round(slot - 2, 2), height)
        )  # fmt: skip
    return drawn


def week_series(reports: list[GroupReport], first: float) -> list[GroupReport | None]:
    """The last WEEKS weeks from `first` (a week's start), each with its report if any."""
    found = {int(float(r.group)): r for r in reports}
    return [found.get(int(first + i * WEEK)) for i in range(WEEKS)]


def funnel(total: GroupReport | None) -> list[tuple[str, int, float]]:
    """(stage, count, width in the box) from assignment to merge."""
    p = total.pulls if total else None
    stages = [
        ("assigned", total.issues if total else 0),
        ("PR opened", p.opened if p else 0),
        ("approved", p.approved if p else 0),
        ("merged", p.merged if p else 0),
    ]
    top = max((n for _, n in stages), default=0) or 1
    return [(name, n, round(n / top * WIDTH, 2)) for name, n in stages]


async def outcomes_context(service: Service) -> dict[str, Any]:
    now = service.clock()
    first = (now // WEEK - (WEEKS - 1)) * WEEK
    store = service.store.outcomes
    weekly = week_series(summarise(await store.report(first, "week"), "week"), first)
    labels = [_day(first + i * WEEK) for i in range(WEEKS)]
    rates = [(label, r.merge_rate if r else None) for label, r in zip(labels, weekly, strict=True)]
    costs = [
        (label, r.cost_per_merged_pr if r else None)
        for label, r in zip(labels, weekly, strict=True)
    ]
    overall = summarise(await store.report(first, None), None)
    total = overall[0] if overall else None
    rounds = sorted(total.rounds.items()) if total else []
    by_type = summarise(await store.report(first, "type"), "type")
    return {
        "width": WIDTH,
        "height": HEIGHT,
        "weeks": WEEKS,
        "rate_bars": bars(rates, top=1.0),
        "cost_bars": bars(costs),
        "funnel": funnel(total),
        "round_bars": bars([(str(k), float(v)) for k, v in rounds]),
        "total": group_json(total) if total else None,
        "rows": [group_json(r) for r in by_type],
    }


def _day(at: float) -> str:
    return dt.datetime.fromtimestamp(at, dt.UTC).strftime("%Y-%m-%d")
