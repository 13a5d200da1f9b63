"""Spend and limits on the web: `/api/limits`, `/api/costs`, and the overview's two sections.

The chart of the last days' spend is inline SVG built here: no script, nothing from a CDN.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request

from claude_hooks.config import zone_of
from claude_hooks.service.costs import Grouping, daily_series, group_costs, series_start
from claude_hooks.service.runtime import Service
from claude_hooks.service.spend_report import budget_report
from claude_hooks.web.auth import require_token

router = APIRouter(dependencies=[Depends(require_token)])
CHART_DAYS = 30
CHART_WIDTH = 600
CHART_HEIGHT = 100


def _service(request: Request) -> Service:
    service: Service = request.app.state.service
    return service


ServiceDep = Annotated[Service, Depends(_service)]


def pause_json(service: Service, agent_type: str) -> dict[str, Any] | None:
    """Why a type takes no new task now (a budget, the API breaker), or None."""
    pause = service.pool.limits.paused.get(agent_type)
    if pause is None:
        return None
    return {"reason": pause.reason, "message": pause.message, "until": pause.until}


@dataclass(frozen=True, slots=True)
class Bar:
    day: str
    cost: float
    x: float
    y: float
    width: float
    height: float


def chart(series: list[tuple[Any, float]]) -> list[Bar]:
    """Bars of a daily spend series, scaled to the chart's box."""
    top = max((cost for _, cost in series), default=0.0) or 1.0
    slot = CHART_WIDTH / max(len(series), 1)
    bars = []
    for index, (day, cost) in enumerate(series):
        height = round(cost / top * CHART_HEIGHT, 2)
        bars.append(
            Bar(
                day.isoformat(),
                cost,
                round(index * slot + 1, 2),
                round(CHART_HEIGHT - height, 2),
                round(slot - 2, 2),
                height,
            )
        )
    return bars


async def limits_context(service: Service) -> dict[str, Any]:
    """The banner: paused types, every budget with its spend, issues needing a human, and
    sessions paused from the forge (`@<login> pause`)."""
    zone = zone_of(service.config.server.timezone)
    budgets = await budget_report(service.config, service.store.spend, service.clock())
    return {
        "paused": sorted(service.pool.limits.paused.values(), key=lambda p: p.type),
        "budgets": budgets,
        "humans": await service.store.spend.tripped(),
        "held": await service.store.commands.paused(),
        "zone": zone,
        "when": lambda ts: datetime.fromtimestamp(ts, zone).strftime("%Y-%m-%d %H:%M %Z"),
    }


async def costs_context(service: Service) -> dict[str, Any]:
    zone = zone_of(service.config.server.timezone)
    now = service.clock()
    rows = await service.store.spend.cost_rows(series_start(now, CHART_DAYS, zone))
    series = daily_series(rows, now, CHART_DAYS, zone)
    return {
        "bars": chart(series),
        "width": CHART_WIDTH,
        "height": CHART_HEIGHT,
        "days": CHART_DAYS,
        "total": sum(cost for _, cost in series),
        "by_type": group_costs(rows, Grouping.TYPE, zone),
        "by_repo": group_costs(rows, Grouping.REPO, zone)[:5],
        "by_issue": group_costs(rows, Grouping.ISSUE, zone)[:5],
    }


@router.get("/api/limits", summary="Budgets with their spend, paused types, issues for a human")
async def limits(service: ServiceDep) -> dict[str, Any]:
    budgets = await budget_report(service.config, service.store.spend, service.clock())
    return {
        "budgets": [line.as_dict() for line in budgets],
        "paused": {t: pause_json(service, t) for t in sorted(service.pool.limits.paused)},
        "needs_human": [
            {"repo": g.repo, "number": g.number, "reason": g.reason, "since": g.tripped_at}
            for g in await service.store.spend.tripped()
        ],
        "paused_sessions": [
            {"session_key": p.session_key, "paused_by": p.paused_by, "since": p.paused_at}
            for p in await service.store.commands.paused()
        ],
    }


@router.get("/api/costs", summary="Spend grouped by type, repo, issue or day")
async def costs(
    service: ServiceDep,
    by: Grouping = Grouping.TYPE,
    since: Annotated[float | None, Query(ge=0, le=2**40)] = None,
) -> list[dict[str, Any]]:
    zone = zone_of(service.config.server.timezone)
    start = since if since is not None else series_start(service.clock(), CHART_DAYS, zone)
    rows = await service.store.spend.cost_rows(start)
    return [
        {by.value: line.key, "tasks": line.tasks, "cost_usd": line.cost_usd}
        for line in group_costs(rows, by, zone)
    ]
