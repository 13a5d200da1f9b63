"""5. Memory: the service's RSS idle, and with 50 agents running (command runner)."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import psutil

from bench.common import Agents, rss_mb, runs, service, stats
from bench.deliveries import issue_assigned
from bench.load import fixed_rate

AGENTS = 50


def _running_agents(pid: int) -> int:
    """The service's `sleep` agents; a child that ends while they are counted is not one."""
    running = 0
    for child in psutil.Process(pid).children(recursive=True):
        try:
            running += child.name() == "sleep"
        except psutil.NoSuchProcess:
            continue
    return running


def run(quick: bool) -> dict[str, Any]:
    agents = 5 if quick else AGENTS
    idle, busy, per_agent = [], [], []
    for run_index in range(runs(quick)):
        with service(Agents(command=["sleep", "600"], instances=agents)) as hooks:
            time.sleep(0.5)
            before = rss_mb(hooks.pid)
            deliveries = [issue_assigned(run_index * 1000 + n) for n in range(1, agents + 1)]
            result = asyncio.run(
                fixed_rate("127.0.0.1", hooks.port, "/webhook", deliveries, 200, 8)
            )
            assert set(result.statuses) == {202}, result.statuses
            deadline = time.perf_counter() + 30
            while _running_agents(hooks.pid) < agents:
                assert time.perf_counter() < deadline, "the agents did not all start"
                time.sleep(0.05)
            time.sleep(0.5)
            after = rss_mb(hooks.pid)
            idle.append(before)
            busy.append(after)
            per_agent.append((after - before) / agents)
    return {
        "agents": agents,
        "idle_rss_mb": stats(idle),
        "rss_with_agents_mb": stats(busy),
        "per_running_agent_mb": stats(per_agent),
    }
