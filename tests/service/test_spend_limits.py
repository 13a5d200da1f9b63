"""Budgets in a running service: work waits at the gate, with its queue intact, and resumes."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections.abc import AsyncIterator
from datetime import datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import httpx
import pytest

from claude_hooks.agents.runners.base import RunContext, RunResult
from claude_hooks.config import Config, load_config
from claude_hooks.core.domain import DispatchRequest, TaskKind, TaskState
from claude_hooks.service.events import Event
from claude_hooks.service.runtime import Service
from claude_hooks.store.sql import SqlStore
from claude_hooks.web.app import create_app
from tests.support import instance_idle, make_config, queue_of, wait_until


class Clock:
    def __init__(self, start: float) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now


class CostRunner:
    """A run that costs `cost` dollars; with `hold`, it runs until the test releases it."""

    def __init__(self, cost: float, hold: bool = False) -> None:
        self.cost = cost
        self.hold = hold
        self.started: list[str] = []
        self.gates: dict[str, asyncio.Event] = {}
        self.cancelled: list[str] = []

    def release(self, task_id: str) -> None:
        self.gates.setdefault(task_id, asyncio.Event()).set()

    async def run(self, ctx: RunContext) -> RunResult:
        self.started.append(ctx.task.id)
        if self.hold:
            try:
                await self.gates.setdefault(ctx.task.id, asyncio.Event()).wait()
            except asyncio.CancelledError:
                self.cancelled.append(ctx.task.id)
                raise
        return RunResult(succeeded=True, exit_code=0, cost_usd=self.cost)


def ts(text: str, zone: str = "UTC") -> float:
    return datetime.fromisoformat(text).replace(tzinfo=ZoneInfo(zone)).timestamp()


def claude_config(tmp_path: Path, dev: dict[str, Any], **overrides: Any) -> Config:
    return make_config(
        tmp_path,
        types={"dev": {"runner": "claude", "workdir": "none", **dev}},
        agents=[{"name": "dev-alpha", "type": "dev"}],
        **overrides,
    )


@pytest.fixture
async def services() -> AsyncIterator[list[Service]]:
    started: list[Service] = []
    yield started
    for service in started:
        await service.stop()


async def start(
    services: list[Service], config: Config, runner: Any, clock: Clock | None = None
) -> Service:
    store = await SqlStore.open(config.database_url, node=config.server.node)
    runner_for = None if runner is None else (lambda _type: runner)
    service = Service(config, store, clock=clock or Clock(0.0), runner_for=runner_for)
    await service.start()
    services.append(service)
    return service


async def queue(service: Service, count: int, agent_type: str = "dev") -> list[str]:
    ids = []
    for number in range(1, count + 1):
        request = DispatchRequest.for_type(agent_type, TaskKind.WORK_ISSUE, "acme/widget", number)
        ids.append(await service.pool.dispatch_by_type(agent_type, request))
    return ids


async def states(service: Service, ids: list[str]) -> list[TaskState]:
    found = [await service.store.get_task(task_id) for task_id in ids]
    return [task.state for task in found if task is not None]


@pytest.mark.parametrize(
    ("budget", "before", "after"),
    [
        ("daily_budget_usd", "2026-04-10 23:00", "2026-04-11 00:00:01"),
        ("monthly_budget_usd", "2026-12-31 23:00", "2027-01-01 00:00:01"),
    ],
)
async def test_a_reached_budget_holds_the_queue_until_the_period_ends(
    tmp_path: Path, services: list[Service], budget: str, before: str, after: str
) -> None:
    clock = Clock(ts(before))
    runner = CostRunner(1.0)
    service = await start(services, claude_config(tmp_path, {budget: 2.0}), runner, clock)
    waiting = service.bus.subscribe()
    ids = await queue(service, 4)
    await wait_until(lambda: len(runner.started) == 2)
    await wait_until(lambda: "dev" in service.pool.limits.paused)
    pause = service.pool.limits.paused["dev"]
    assert pause.reason == "budget"
    assert pause.until == ts(after) - 1
    assert await states(service, ids) == [TaskState.SUCCEEDED] * 2 + [TaskState.QUEUED] * 2
    assert await queue_of(service.store, "dev-alpha") == ids[2:]
    # The issue of the waiting task hears why, once.
    notice = await _next(waiting, "task.waiting")
    assert notice.task is not None and notice.task.id == ids[2]
    assert "($2.00) is reached: $2.00 spent" in notice.data["reason"]

    clock.now = ts(after)
    service.pool.limits.poke()
    await wait_until(lambda: len(runner.started) == 4)
    await wait_until(lambda: "dev" not in service.pool.limits.paused)
    assert runner.started == ids


async def _next(subscription: Any, kind: str) -> Event:
    while True:
        event: Event = await asyncio.wait_for(subscription.get(), 5)
        if event.kind == kind:
            return event


def write_config(tmp_path: Path, extra: str) -> Path:
    path = tmp_path / "claude-hooks.toml"
    path.write_text(
        f"""
[server]
data_dir = "{tmp_path / "data"}"
webhook_secret = "s"
api_token = "t"
poll_interval = 0.05

[types.dev]
runner = "claude"
workdir = "none"
{extra}

[[agents]]
name = "dev-alpha"
type = "dev"
"""
    )
    return path


def cli(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    argv = [sys.executable, "-m", "claude_hooks", *args, "--config", str(config)]
    return subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)


async def test_raising_the_budget_from_the_cli_resumes_a_waiting_queue_at_once(
    tmp_path: Path, services: list[Service]
) -> None:
    path = write_config(tmp_path, "daily_budget_usd = 1.5")
    runner = CostRunner(1.0)
    service = await start(services, load_config(path), runner, Clock(ts("2026-04-10 12:00")))
    ids = await queue(service, 3)
    await wait_until(lambda: "dev" in service.pool.limits.paused)
    assert len(runner.started) == 2  # the second run started with $1 spent, under $1.50

    shown = await asyncio.to_thread(cli, path, "budget", "set", "dev", "--daily", "10")
    assert shown.returncode == 0, shown.stderr
    assert "budget of type dev: day $10.00" in shown.stdout
    await wait_until(lambda: len(runner.started) == 3)
    assert runner.started == ids

    listed = await asyncio.to_thread(cli, path, "budget", "show", "--json")
    assert listed.returncode == 0, listed.stderr
    assert '"source": "cli"' in listed.stdout


async def test_hard_budget_stops_running_work_of_the_type(
    tmp_path: Path, services: list[Service]
) -> None:
    config = make_config(
        tmp_path,
        types={"dev": {"runner": "claude", "workdir": "none", "daily_budget_usd": 1.0}},
        agents=[{"name": "dev-alpha", "type": "dev"}, {"name": "dev-bravo", "type": "dev"}],
        budget={"hard": True},
    )
    runner = CostRunner(1.0, hold=True)
    service = await start(services, config, runner, Clock(ts("2026-04-10 12:00")))
    first, second = await queue(service, 2)
    await wait_until(lambda: len(runner.started) == 2)
    # The first run's $1 reaches the budget: the second run is stopped.
    runner.release(first)
    await wait_until(lambda: runner.cancelled == [second])
    await wait_until(lambda: instance_idle(service.store, "dev-bravo"))
    assert await states(service, [first, second]) == [TaskState.SUCCEEDED, TaskState.CANCELLED]


async def test_work_without_a_cost_is_not_held_by_a_cost_budget(
    tmp_path: Path, services: list[Service]
) -> None:
    config = make_config(
        tmp_path,
        types={
            "dev": {
                "runner": "command",
                "command": ["true"],
                "workdir": "none",
                "daily_budget_usd": 0.0,
            }
        },
        agents=[{"name": "dev-alpha", "type": "dev"}],
        budget={"daily_usd": 0.0},
    )
    service = await start(services, config, None)
    ids = await queue(service, 2)
    await wait_until(lambda: instance_idle(service.store, "dev-alpha"))
    assert await states(service, ids) == [TaskState.SUCCEEDED] * 2
    assert not service.pool.limits.paused


async def test_a_paused_type_shows_on_the_dashboard_the_api_and_the_metrics(
    tmp_path: Path, services: list[Service]
) -> None:
    path = write_config(tmp_path, "daily_budget_usd = 1.0")
    runner = CostRunner(1.25)
    service = await start(services, load_config(path), runner, Clock(ts("2026-04-10 12:00")))
    await queue(service, 2)
    await wait_until(lambda: "dev" in service.pool.limits.paused)
    client = httpx.AsyncClient(
        transport=httpx.ASGITransport(app=create_app(service)),
        base_url="http://test",
        headers={"Authorization": "Bearer t"},
    )
    async with client:
        limits = (await client.get("/api/limits")).json()
        assert limits["paused"]["dev"]["reason"] == "budget"
        assert limits["budgets"] == [
            {
                "scope": "dev",
                "period": "day",
                "usd": 1.0,
                "source": "config",
                "spent": 1.25,
                "reached": True,
                "resets_at": ts("2026-04-11 00:00"),
            }
        ]
        agents = (await client.get("/api/agents")).json()
        assert agents[0]["paused"]["message"].startswith("the daily budget of type 'dev'")
        costs = (await client.get("/api/costs", params={"by": "day", "since": 0})).json()
        assert costs == [{"day": "2026-04-10", "tasks": 1, "cost_usd": 1.25}]
        assert (await client.get("/api/costs", params={"by": "week"})).status_code == 400
        page = (await client.get("/")).text
        assert "dev waits" in page and "($1.00) is reached: $1.25 spent" in page
        assert "<svg" in page and "2026-04-10: $1.25" in page
        metrics = (await client.get("/metrics")).text
        assert 'claude_hooks_type_paused{reason="budget",type="dev"} 1.0' in metrics

    by_issue = await asyncio.to_thread(
        cli, path, "costs", "--by", "issue", "--since", "2026-04-01", "--json"
    )
    assert by_issue.returncode == 0, by_issue.stderr
    assert '"issue": "acme/widget#1"' in by_issue.stdout and '"cost_usd": 1.25' in by_issue.stdout
    table = await asyncio.to_thread(cli, path, "costs", "--since", "2026-04-01")
    assert table.returncode == 0, table.stderr
    assert "Counts only runs that reported a cost" in " ".join(table.stdout.split())
    bad = await asyncio.to_thread(cli, path, "costs", "--since", "yesterday")
    assert bad.returncode == 2 and "--since 'yesterday': give a date as YYYY-MM-DD" in bad.stderr
    unknown = await asyncio.to_thread(cli, path, "budget", "set", "qa", "--daily", "3")
    assert unknown.returncode == 2 and "type 'qa' is not configured" in unknown.stderr
