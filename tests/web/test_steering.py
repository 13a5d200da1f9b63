"""Steering a running session: a mention while it runs reaches the running agent (a `command`
agent reads the file named by CLAUDE_HOOKS_STEER) instead of queueing behind it; `queue:` and
`while_running = "queue"` keep a follow-up task; a message the run never took is not lost."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import httpx

from claude_hooks.core.domain import TaskKind, TaskState
from claude_hooks.service.runtime import Service
from claude_hooks.store.base import TaskFilter
from claude_hooks.web.app import create_app
from tests.conftest import ServiceFactory
from tests.dashboard_fixtures import AUTH
from tests.support import GateRunner, fixture, forgejo_headers, make_config, wait_until

# Waits (20 s at most) for the first steering line, prints it, exits.
AGENT = """
import json, os, sys, time
sys.stdin.read()
path = os.environ["CLAUDE_HOOKS_STEER"]
deadline = time.monotonic() + 20
while time.monotonic() < deadline:
    lines = open(path).read().splitlines()
    if lines:
        print("steered by", json.dumps(json.loads(lines[0]), sort_keys=True))
        sys.exit(0)
    time.sleep(0.02)
sys.exit(3)
"""


def config_for(tmp_path: Path, **dev: Any) -> Any:
    config = make_config(
        tmp_path,
        security={"allowed_senders": ["alice"]},
        agents=[{"name": "dev-alpha", "type": "dev"}],
    )
    for key, value in dev.items():
        setattr(config.types["dev"], key, value)
    return config


async def deliver(service: Service, name: str, delivery: str, **change: Any) -> dict[str, Any]:
    body = json.loads(fixture(name)[0])
    if "comment" in change:
        body["comment"].update(change["comment"])
    raw = json.dumps(body).encode()
    event_type = fixture(name)[1]["X-Forgejo-Event-Type"]
    answer = await service.intake.receive(forgejo_headers(event_type, raw, delivery), raw)
    assert answer.status in (200, 202), answer.body
    return answer.body


async def state(service: Service, task_id: str) -> TaskState:
    task = await service.store.get_task(task_id)
    assert task is not None
    return task.state


async def test_a_mention_reaches_the_running_command_agent(
    start_service: ServiceFactory, tmp_path: Path
) -> None:
    service = await start_service(config_for(tmp_path, command=[sys.executable, "-c", AGENT]))
    running = (await deliver(service, "issues_assigned_dev", "a-1"))["tasks"][0]["id"]
    await wait_until(lambda: _is(service, running, TaskState.RUNNING))
    answer = await deliver(
        service,
        "issue_comment_created_mention",
        "m-1",
        comment={"id": 4242, "body": "@dev-bot read the limit from the config file"},
    )
    assert "tasks" not in answer
    assert f"steered dev's running task {running}" in answer["reason"]
    await wait_until(lambda: _is(service, running, TaskState.SUCCEEDED), timeout=20)
    task = await service.store.get_task(running)
    assert task is not None and task.result is not None
    line = json.loads(task.result.split("steered by ", 1)[1])
    assert line["from"] == "alice" and line["comment_id"] == 4242
    assert line["body"] == "@dev-bot read the limit from the config file"
    assert isinstance(line["at"], float)
    [steer] = await service.store.steering.of_task(running)
    assert steer.delivered_at is not None and steer.followed_up_at is None
    assert await service.store.count_tasks(TaskFilter()) == 1  # nothing queued behind it
    transport = httpx.ASGITransport(app=create_app(service))
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        page = (await client.get(f"/tasks/{running}", headers=AUTH)).text
    assert "Steering" in page and "@alice" in page and "reached the agent" in page
    assert "read the limit from the config file" in page


async def _is(service: Service, task_id: str, expected: TaskState) -> bool:
    return await state(service, task_id) is expected


async def test_queue_keeps_a_follow_up_task(
    start_service: ServiceFactory, tmp_path: Path, gate: GateRunner
) -> None:
    service = await start_service(config_for(tmp_path), runner=gate)
    running = (await deliver(service, "issues_assigned_dev", "a-1"))["tasks"][0]["id"]
    await wait_until(lambda: running in gate.started)
    answer = await deliver(
        service,
        "issue_comment_created_mention",
        "m-1",
        comment={"body": "@dev-bot queue: afterwards, update the changelog"},
    )
    [queued] = answer["tasks"]
    assert await state(service, queued["id"]) is TaskState.QUEUED
    assert await service.store.steering.of_task(running) == []
    gate.release_all()


async def test_while_running_queue_keeps_todays_behaviour(
    start_service: ServiceFactory, tmp_path: Path, gate: GateRunner
) -> None:
    service = await start_service(config_for(tmp_path, while_running="queue"), runner=gate)
    running = (await deliver(service, "issues_assigned_dev", "a-1"))["tasks"][0]["id"]
    await wait_until(lambda: running in gate.started)
    answer = await deliver(service, "issue_comment_created_mention", "m-1")
    assert len(answer["tasks"]) == 1
    gate.release_all()


async def test_a_message_the_run_never_took_becomes_a_follow_up_task(
    start_service: ServiceFactory, tmp_path: Path, gate: GateRunner
) -> None:
    service = await start_service(config_for(tmp_path), runner=gate)  # a gate reads nothing
    running = (await deliver(service, "issues_assigned_dev", "a-1"))["tasks"][0]["id"]
    await wait_until(lambda: running in gate.started)
    answer = await deliver(
        service, "issue_comment_created_mention", "m-1", comment={"body": "@dev-bot also X"}
    )
    assert "steered" in answer["reason"]
    gate.release(running)

    await wait_until(lambda: _count(service, 2))
    [follow_up] = [
        t for t in await service.store.list_tasks(TaskFilter(), 10, 0) if t.id != running
    ]
    assert follow_up.kind is TaskKind.ANSWER_MENTION
    assert follow_up.session_key == "dev:acme/widget:17"
    assert follow_up.payload["comment_body"] == "@dev-bot also X"
    [steer] = await service.store.steering.of_task(running)
    assert steer.delivered_at is None and steer.followed_up_at is not None
    gate.release_all()


async def _count(service: Service, expected: int) -> bool:
    return await service.store.count_tasks(TaskFilter()) == expected


async def test_a_mention_when_nothing_runs_is_a_task_as_before(
    start_service: ServiceFactory, tmp_path: Path, gate: GateRunner
) -> None:
    service = await start_service(config_for(tmp_path), runner=gate)
    answer = await deliver(service, "issue_comment_created_mention", "m-1")
    assert len(answer["tasks"]) == 1 and "steered" not in answer["reason"]
    gate.release_all()
