"""A hard budget with the REAL Claude Code CLI: the cost the stand-in's usage adds up to stops
the run still going."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from claude_hooks.core.domain import DispatchRequest, TaskKind, TaskState
from claude_hooks.service.runtime import Service
from tests.conftest import ServiceFactory
from tests.messages_standin import MessagesStandin, cli_environment, stall
from tests.support import instance_idle, make_config, wait_until


@pytest.fixture
def api() -> Iterator[MessagesStandin]:
    with MessagesStandin() as standin:
        yield standin


async def test_a_hard_budget_stops_a_running_claude_session(
    start_service: ServiceFactory,
    tmp_path: Path,
    api: MessagesStandin,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    cli_environment(api, monkeypatch, tmp_path / "home")
    config = make_config(
        tmp_path,
        types={
            "dev": {
                "runner": "claude",
                "workdir": "none",
                "comments": False,
                "max_api_retries": 0,
                "daily_budget_usd": 0.001,
                "env": {"DISABLE_TELEMETRY": "1"},
            }
        },
        agents=[{"name": "dev-alpha", "type": "dev"}, {"name": "dev-bravo", "type": "dev"}],
        budget={"hard": True},
    )
    service: Service = await start_service(config)
    api.script(stall("Working on it"))  # the first session to ask hangs; the other answers
    ids = [
        await service.pool.dispatch_by_type(
            "dev", DispatchRequest.for_type("dev", TaskKind.WORK_ISSUE, "acme/widget", n)
        )
        for n in (1, 2)
    ]

    for name in ("dev-alpha", "dev-bravo"):
        await wait_until(lambda name=name: instance_idle(service.store, name), timeout=90)
    tasks = [await service.store.get_task(task_id) for task_id in ids]
    by_state = {task.state: task for task in tasks if task is not None}
    assert set(by_state) == {TaskState.SUCCEEDED, TaskState.CANCELLED}
    spent = by_state[TaskState.SUCCEEDED].cost_usd
    assert spent is not None and spent >= 0.001  # the answer's usage reached the budget
    assert by_state[TaskState.CANCELLED].error == "cancelled while running"
    assert api.first_stall.is_set()  # the stopped session was mid-answer
