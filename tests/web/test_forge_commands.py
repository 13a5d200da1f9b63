"""Commands in forge comments (`@dev-bot stop`), end to end: signed deliveries into the app,
a fake Forgejo on 127.0.0.1 that records reactions and comments."""

from __future__ import annotations

import itertools
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from claude_hooks.core.domain import TaskState
from claude_hooks.service.runtime import Service
from claude_hooks.store.base import TaskFilter
from claude_hooks.web.app import create_app
from tests.conftest import ServiceFactory
from tests.dashboard_fixtures import AUTH
from tests.fake_forgejo import FakeForgejo
from tests.support import GateRunner, fixture, forgejo_headers, make_config, wait_until

HEAD = "dc5b081193719209a67d020d386d4c1ddc27c662"
_ids = itertools.count(5000)


def forge_config(tmp_path: Path, forge: FakeForgejo, command: list[str] | None = None) -> Any:
    forge.add_token("tok-admin", "admin-bot", site_admin=True)
    forge.add_token("tok-dev", "dev-bot")
    forge.add_repo(
        "acme",
        "widget",
        collaborators={"alice": "write", "mallory": "read", "dev-bot": "write"},
    )
    forge.add_user("alice", "mallory")
    forge.add_issue("acme", "widget", number=17, title="Retry failed deliveries")
    forge.add_pull(
        "acme",
        "widget",
        number=18,
        head_sha=HEAD,
        head_ref="dev-bot/issue-17-retry",
        user="dev-bot",
        body="Fixes #17.",
    )
    dev = {
        "login": "dev-bot",
        "token": "tok-dev",
        "runner": "command",
        "command": command or ["true"],
        "workdir": "none",
    }
    return make_config(
        tmp_path,
        server={"public_url": "https://hooks.example.com/"},
        forgejo={"url": forge.base_url, "token": "tok-admin", "retries": 1},
        types={"dev": dev},
        agents=[{"name": "dev-alpha", "type": "dev"}],
    )


@pytest.fixture
async def client_for(start_service: ServiceFactory) -> AsyncIterator[Any]:
    clients: list[httpx.AsyncClient] = []

    async def make(config: Any, runner: Any = None) -> tuple[Service, httpx.AsyncClient]:
        service: Service = await start_service(config, runner=runner)
        client = httpx.AsyncClient(
            transport=httpx.ASGITransport(app=create_app(service)), base_url="http://test"
        )
        clients.append(client)
        return service, client

    yield make
    for client in clients:
        await client.aclose()


async def comment(
    client: httpx.AsyncClient, body: str, sender: str = "alice", number: int = 17
) -> tuple[int, httpx.Response]:
    """Deliver a new comment on #number, signed like Forgejo's; its comment id and the answer."""
    pull = number == 18
    name = "pull_request_comment_created_mention" if pull else "issue_comment_created_mention"
    data = json.loads(fixture(name)[0])
    comment_id = next(_ids)
    data["comment"].update(id=comment_id, body=body)
    data["sender"]["login"] = sender
    data["issue"]["number"] = number
    if pull:
        data["pull_request"]["number"] = number
        data["pull_request"]["user"]["login"] = "dev-bot"
        data["pull_request"]["head"].update(ref="dev-bot/issue-17-retry", sha=HEAD)
    raw = json.dumps(data).encode()
    event = "pull_request_comment" if pull else "issue_comment"
    headers = forgejo_headers(event, raw, f"c-{comment_id}")
    return comment_id, await client.post("/webhook", content=raw, headers=headers)


async def assign(client: httpx.AsyncClient, delivery: str = "assign-1") -> str:
    body = fixture("issues_assigned_dev")[0]
    answer = await client.post(
        "/webhook", content=body, headers=forgejo_headers("issue_assign", body, delivery)
    )
    assert answer.status_code == 202, answer.text
    return str(answer.json()["tasks"][0]["id"])


async def state_of(service: Service, task_id: str) -> TaskState:
    task = await service.store.get_task(task_id)
    assert task is not None
    return task.state


def bodies(forge: FakeForgejo, marker: str) -> list[str]:
    return [c.body for c in forge.comments if marker in c.body]


async def test_stop_cancels_the_running_and_the_queued_work_of_the_session(
    client_for: Any, fake_forgejo: FakeForgejo, tmp_path: Path, gate: GateRunner
) -> None:
    service, client = await client_for(forge_config(tmp_path, fake_forgejo), gate)
    running = await assign(client)
    await wait_until(lambda: running in gate.started)
    _id, mention = await comment(client, "@dev-bot queue: also keep the limit configurable")
    queued = mention.json()["tasks"][0]["id"]
    assert await state_of(service, queued) is TaskState.QUEUED

    comment_id, answer = await comment(client, "Enough for today.\n@dev-bot stop\n")
    assert answer.status_code == 200, answer.text
    assert sorted(answer.json()["cancelled"]) == sorted([running, queued])
    await wait_until(lambda: running in gate.cancelled, timeout=2.0)
    for task_id in (running, queued):
        await wait_until(_cancelled(service, task_id), timeout=2.0)
        note = await service.store.notes.get_note(task_id)
        assert note.cancelled_by == "forge command stop by alice"
    await wait_until(lambda: fake_forgejo.reactions_on(comment_id) == ["eyes", "+1"])
    await wait_until(lambda: bool(bodies(fake_forgejo, "Stopped at alice's request")))
    record = await service.store.intake.get_delivery(f"c-{comment_id}")
    assert record is not None and record.sender == "alice"
    assert record.reason is not None and "dev stop: stopped 2 task(s)" in record.reason


async def _is(service: Service, task_id: str, state: TaskState) -> bool:
    return await state_of(service, task_id) is state


def _cancelled(service: Service, task_id: str) -> Callable[[], Awaitable[bool]]:
    return lambda: _is(service, task_id, TaskState.CANCELLED)


async def test_stop_on_the_agents_pull_request_ends_the_session_of_its_issue(
    client_for: Any, fake_forgejo: FakeForgejo, tmp_path: Path, gate: GateRunner
) -> None:
    _service, client = await client_for(forge_config(tmp_path, fake_forgejo), gate)
    opened = fixture("pull_request_opened")[0]
    await client.post(
        "/webhook", content=opened, headers=forgejo_headers("pull_request", opened, "pr-18")
    )
    running = await assign(client)
    await wait_until(lambda: running in gate.started)
    _id, answer = await comment(client, "@dev-bot stop", number=18)
    assert answer.json()["cancelled"] == [running]
    await wait_until(lambda: running in gate.cancelled, timeout=2.0)


async def test_a_sender_without_write_access_is_refused_politely_once(
    client_for: Any, fake_forgejo: FakeForgejo, tmp_path: Path, gate: GateRunner
) -> None:
    service, client = await client_for(forge_config(tmp_path, fake_forgejo), gate)
    running = await assign(client)
    await wait_until(lambda: running in gate.started)
    first, answer = await comment(client, "@dev-bot stop", sender="mallory")
    assert answer.status_code == 200
    assert "refused" in answer.json()["reason"]
    second, _ = await comment(client, "@dev-bot pause", sender="mallory")
    await wait_until(lambda: fake_forgejo.reactions_on(first) == ["eyes", "-1"])
    await wait_until(lambda: fake_forgejo.reactions_on(second) == ["eyes", "-1"])
    assert await state_of(service, running) is TaskState.RUNNING
    assert await service.store.commands.paused() == []
    await wait_until(lambda: len(bodies(fake_forgejo, "Sorry @mallory")) == 1)
    assert service.intake.counts.get("ignored") == 2
    await wait_until(lambda: _no_reply_waits(service))
    assert len(bodies(fake_forgejo, "Sorry @mallory")) == 1


async def _no_reply_waits(service: Service) -> bool:
    """Every reply is posted (the task's living comment may wait out its edit interval)."""
    return all(letter.living_key for letter in await service.store.outbox.waiting(10))


async def test_a_command_word_with_more_on_its_line_is_a_mention(
    client_for: Any, fake_forgejo: FakeForgejo, tmp_path: Path, gate: GateRunner
) -> None:
    _service, client = await client_for(forge_config(tmp_path, fake_forgejo), gate)
    comment_id, answer = await comment(client, "@dev-bot stop using globals, please")
    assert answer.status_code == 202
    assert answer.json()["tasks"][0]["type"] == "dev"
    assert fake_forgejo.reactions_on(comment_id) == []


async def test_status_tells_where_the_session_runs_its_cost_and_its_limits(
    client_for: Any, fake_forgejo: FakeForgejo, tmp_path: Path, gate: GateRunner
) -> None:
    service, client = await client_for(forge_config(tmp_path, fake_forgejo), gate)
    running = await assign(client)
    await wait_until(lambda: running in gate.started)
    comment_id, answer = await comment(client, "@dev-bot status")
    assert answer.status_code == 200
    await wait_until(lambda: bool(bodies(fake_forgejo, "Status of `dev:acme/widget:17`")))
    text = bodies(fake_forgejo, "Status of")[0]
    node = service.config.server.node
    assert f"running `work_issue` (task `{running}`) on `dev-alpha` (node `{node}`) since" in text
    assert "cost so far: $0.00 over 1 task(s)" in text
    assert "loop guard on #17: 1 of 12 tasks, $0.00 spent, 0 of 3 review rounds" in text
    assert f"dashboard: https://hooks.example.com/tasks/{running}" in text
    await wait_until(lambda: fake_forgejo.reactions_on(comment_id) == ["eyes", "+1"])
    gate.release(running)


async def test_pause_holds_new_work_until_resume(
    client_for: Any, fake_forgejo: FakeForgejo, tmp_path: Path, gate: GateRunner
) -> None:
    service, client = await client_for(forge_config(tmp_path, fake_forgejo), gate)
    _id, answer = await comment(client, "@dev-bot pause")
    assert answer.status_code == 200
    [paused] = await service.store.commands.paused()
    assert (paused.session_key, paused.paused_by) == ("dev:acme/widget:17", "alice")
    held = await assign(client)
    assert await state_of(service, held) is TaskState.HELD
    status = await client.get(f"/api/tasks/{held}", headers=AUTH)
    assert status.json()["state"] == "held"
    limits = (await client.get("/api/limits", headers=AUTH)).json()
    assert [p["session_key"] for p in limits["paused_sessions"]] == ["dev:acme/widget:17"]
    page = (await client.get("/", headers=AUTH)).text
    assert "Paused from the forge" in page and "dev:acme/widget:17" in page
    assert held not in gate.started
    await wait_until(lambda: bool(bodies(fake_forgejo, "Paused: I take no new task here")))

    resume_id, _ = await comment(client, "@dev-bot resume")
    await wait_until(lambda: held in gate.started)
    assert await service.store.commands.paused() == []
    await wait_until(lambda: fake_forgejo.reactions_on(resume_id) == ["eyes", "+1"])
    gate.release(held)


async def test_a_held_task_can_be_stopped(
    client_for: Any, fake_forgejo: FakeForgejo, tmp_path: Path, gate: GateRunner
) -> None:
    service, client = await client_for(forge_config(tmp_path, fake_forgejo), gate)
    await comment(client, "@dev-bot pause")
    held = await assign(client)
    _id, answer = await comment(client, "@dev-bot stop")
    assert answer.json()["cancelled"] == [held]
    assert await state_of(service, held) is TaskState.CANCELLED


async def test_retry_runs_the_last_failed_task_again(
    client_for: Any, fake_forgejo: FakeForgejo, tmp_path: Path
) -> None:
    config = forge_config(tmp_path, fake_forgejo, command=["false"])
    service, client = await client_for(config)
    failed = await assign(client)
    await wait_until(lambda: _is(service, failed, TaskState.FAILED))
    comment_id, answer = await comment(client, "@dev-bot retry")
    assert answer.status_code == 202, answer.text
    [entry] = answer.json()["tasks"]
    assert await service.store.notes.retries_of(failed) == [entry["id"]]
    await wait_until(lambda: fake_forgejo.reactions_on(comment_id) == ["eyes", "+1"])
    await wait_until(lambda: bool(bodies(fake_forgejo, f"Retrying `{failed}`")))


async def test_retry_without_a_failed_task_says_so(
    client_for: Any, fake_forgejo: FakeForgejo, tmp_path: Path, gate: GateRunner
) -> None:
    service, client = await client_for(forge_config(tmp_path, fake_forgejo), gate)
    comment_id, answer = await comment(client, "@dev-bot retry")
    assert answer.status_code == 200
    await wait_until(lambda: fake_forgejo.reactions_on(comment_id) == ["eyes", "-1"])
    await wait_until(lambda: bool(bodies(fake_forgejo, "no failed task of `dev:acme/widget:17`")))
    assert await service.store.count_tasks(TaskFilter()) == 0


async def test_help_lists_every_command(
    client_for: Any, fake_forgejo: FakeForgejo, tmp_path: Path, gate: GateRunner
) -> None:
    _service, client = await client_for(forge_config(tmp_path, fake_forgejo), gate)
    await comment(client, "@dev-bot help")
    await wait_until(lambda: bool(bodies(fake_forgejo, "Commands, each on a line")))
    text = bodies(fake_forgejo, "Commands, each on a line")[0]
    for word in ("stop", "status", "retry", "pause", "resume", "help"):
        assert f"`@dev-bot {word}`" in text


async def test_an_agent_account_cannot_command(
    client_for: Any, fake_forgejo: FakeForgejo, tmp_path: Path, gate: GateRunner
) -> None:
    service, client = await client_for(forge_config(tmp_path, fake_forgejo), gate)
    running = await assign(client)
    await wait_until(lambda: running in gate.started)
    comment_id, answer = await comment(client, "@dev-bot stop", sender="dev-bot")
    assert "agents do not wake each other" in answer.json()["reason"]
    assert await state_of(service, running) is TaskState.RUNNING
    assert fake_forgejo.reactions_on(comment_id) == []
    gate.release(running)
