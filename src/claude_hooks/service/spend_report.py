"""Budgets with their spend so far, for the CLI, the API and the dashboard."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from claude_hooks.config import Config, zone_of
from claude_hooks.core.budget import TEAM, all_limits, period_bounds
from claude_hooks.store.spend import SpendStore


@dataclass(frozen=True, slots=True)
class BudgetLine:
    scope: str  # "team" or a type name
    period: str
    usd: float
    source: str  # "config" or "cli"
    spent: float
    resets_at: float

    @property
    def reached(self) -> bool:
        return self.spent >= self.usd

    def as_dict(self) -> dict[str, Any]:
        return {
            "scope": self.scope,
            "period": self.period,
            "usd": self.usd,
            "source": self.source,
            "spent": round(self.spent, 6),
            "reached": self.reached,
            "resets_at": self.resets_at,
        }


async def budget_report(config: Config, spend: SpendStore, now: float) -> list[BudgetLine]:
    zone = zone_of(config.server.timezone)
    lines: list[BudgetLine] = []
    for limit, source in all_limits(config, await spend.budgets()):
        start, end = period_bounds(limit.period, now, zone)
        scope = None if limit.scope == TEAM else limit.scope
        spent = await spend.spent(scope, start, end)
        name = "team" if limit.scope == TEAM else limit.scope
        lines.append(BudgetLine(name, limit.period.value, limit.usd, source, spent, end))
    return lines
