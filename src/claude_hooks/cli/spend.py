"""`claude-hooks budget …` and `claude-hooks costs`: spend limits and what the agents cost.

A budget set here is written to the database and a signal tells a running service, which
reads the budgets again within `server.poll_interval` and resumes waiting work at once.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import TYPE_CHECKING, Annotated, Any, TypeVar

import typer
from rich.console import Console
from rich.table import Table

from claude_hooks.cli.options import ConfigOption, command_config, fail
from claude_hooks.config import Config, zone_of
from claude_hooks.core.budget import TEAM, Period
from claude_hooks.errors import ClaudeHooksError
from claude_hooks.service.costs import Grouping, group_costs

if TYPE_CHECKING:  # imported where used: a command that opens no store does not load it
    from claude_hooks.store.sql import SqlStore

T = TypeVar("T")
DEFAULT_DAYS = 30

budget_app = typer.Typer(help="Show and set spend budgets.", no_args_is_help=True)
out = Console(
    markup=False, highlight=False, soft_wrap=True, width=None if sys.stdout.isatty() else 200
)

JsonOption = Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")]
TeamOption = Annotated[bool, typer.Option("--team", help="The team-wide budget ([budget]).")]


def _with_store(
    config: Config, action: Callable[[SqlStore], Awaitable[T]], create: bool = True
) -> T:
    from claude_hooks.store.sql import SqlStore, Timeouts

    async def run() -> T:
        store = await SqlStore.open(config.database_url, Timeouts.of(config.server), create=create)
        try:
            return await action(store)
        finally:
            await store.close()

    try:
        return asyncio.run(run())
    except ClaudeHooksError as exc:
        fail(str(exc))


def _scope(config: Config, agent_type: str | None, team: bool) -> str:
    if team == (agent_type is not None):
        fail("name one agent type, or give --team for the team-wide budget", 2)
    if agent_type is None:
        return TEAM
    if agent_type not in config.types:
        known = ", ".join(sorted(config.types)) or "none"
        fail(f"type {agent_type!r} is not configured (configured: {known})", 2)
    return agent_type


def _print_json(value: Any) -> None:
    sys.stdout.write(json.dumps(value, indent=2) + "\n")


def _when(timestamp: float, config: Config) -> str:
    zone = zone_of(config.server.timezone)
    return datetime.fromtimestamp(timestamp, zone).strftime("%Y-%m-%d %H:%M %Z")


@budget_app.command("show")
def budget_show(config_file: ConfigOption = None, as_json: JsonOption = False) -> None:
    """Every budget in force, what was spent in its period, and when it resets."""
    from claude_hooks.service.spend_report import budget_report

    config = command_config(config_file)
    lines = _with_store(config, lambda s: budget_report(config, s.spend, time.time()), create=False)
    if as_json:
        _print_json([line.as_dict() for line in lines])
        return
    if not lines:
        out.print("no budgets: set one in the configuration or with 'claude-hooks budget set'")
        return
    table = Table("scope", "period", "budget", "spent", "state", "resets", "from")
    for line in lines:
        table.add_row(
            line.scope,
            line.period,
            f"${line.usd:.2f}",
            f"${line.spent:.2f}",
            "REACHED" if line.reached else "ok",
            _when(line.resets_at, config),
            line.source,
        )
    out.print(table)


@budget_app.command("set")
def budget_set(
    agent_type: Annotated[str | None, typer.Argument(help="An agent type.")] = None,
    team: TeamOption = False,
    daily: Annotated[float | None, typer.Option(min=0, help="US dollars per day.")] = None,
    monthly: Annotated[float | None, typer.Option(min=0, help="US dollars per month.")] = None,
    config_file: ConfigOption = None,
) -> None:
    """Set a daily or monthly budget; it wins over the configuration and applies at once."""
    from claude_hooks.service.limits import SIGNAL_BUDGET

    config = command_config(config_file)
    scope = _scope(config, agent_type, team)
    if daily is None and monthly is None:
        fail("give --daily or --monthly (or both), in US dollars", 2)
    wanted = {Period.DAY: daily, Period.MONTH: monthly}

    async def write(store: SqlStore) -> None:
        now = time.time()
        for period, usd in wanted.items():
            if usd is not None:
                await store.spend.set_budget(scope, period, usd, now)
        await store.emit_signal(SIGNAL_BUDGET, scope, now)

    _with_store(config, write)
    who = "team" if scope == TEAM else f"type {scope}"
    parts = [f"{p.value} ${usd:.2f}" for p, usd in wanted.items() if usd is not None]
    out.print(f"budget of {who}: {', '.join(parts)}")


@budget_app.command("clear")
def budget_clear(
    agent_type: Annotated[str | None, typer.Argument(help="An agent type.")] = None,
    team: TeamOption = False,
    config_file: ConfigOption = None,
) -> None:
    """Drop the budgets set with `budget set`: the configuration's apply again."""
    from claude_hooks.service.limits import SIGNAL_BUDGET

    config = command_config(config_file)
    scope = _scope(config, agent_type, team)

    async def clear(store: SqlStore) -> int:
        removed = await store.spend.clear_budgets(scope)
        await store.emit_signal(SIGNAL_BUDGET, scope, time.time())
        return removed

    removed = _with_store(config, clear)
    out.print(f"cleared {removed} budget(s) set from the command line")


def _since(value: str | None, config: Config) -> float:
    zone = zone_of(config.server.timezone)
    if value is None:
        return time.time() - DEFAULT_DAYS * 86400
    try:
        day = datetime.strptime(value, "%Y-%m-%d")
    except ValueError:
        fail(f"--since {value!r}: give a date as YYYY-MM-DD", 2)
    return day.replace(tzinfo=zone).timestamp()


def costs(
    since: Annotated[
        str | None, typer.Option(help="First day counted, YYYY-MM-DD (default: 30 days ago).")
    ] = None,
    by: Annotated[
        Grouping, typer.Option(help="Group by type, repo, issue or day.")
    ] = Grouping.TYPE,
    as_json: JsonOption = False,
    config_file: ConfigOption = None,
) -> None:
    """What the agents' runs cost, per type, repository, issue or day."""
    config = command_config(config_file)
    start = _since(since, config)
    rows = _with_store(config, lambda s: s.spend.cost_rows(start), create=False)
    lines = group_costs(rows, by, zone_of(config.server.timezone))
    if as_json:
        _print_json(
            [{by.value: line.key, "tasks": line.tasks, "cost_usd": line.cost_usd} for line in lines]
        )
        return
    table = Table(by.value, "tasks", "cost")
    for line in lines:
        table.add_row(line.key, str(line.tasks), f"${line.cost_usd:.2f}")
    total = sum(line.cost_usd for line in lines)
    table.add_row("total", str(sum(line.tasks for line in lines)), f"${total:.2f}")
    out.print(table)
    out.print(
        "Counts only runs that reported a cost: claude runs that reached a result "
        "(command and merge runs report none)."
    )
